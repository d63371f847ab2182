"""The model registry: versioned models with metrics, tags and movable aliases.

>>> import tempfile, stepflow
>>> home = tempfile.TemporaryDirectory()  # a throw-away stepflow home for this example
>>> v1 = stepflow.models.register("Doubler", {"factor": 2}, metrics={"r2": 0.9}, home=home.name)
>>> v2 = stepflow.models.register("Doubler", {"factor": 3}, metrics={"r2": 0.95}, home=home.name)
>>> (v1.version, v2.version)
(1, 2)
>>> stepflow.models.set_alias("Doubler", "production", 1, home=home.name).aliases
('production',)
>>> stepflow.models.load("Doubler", alias="production", home=home.name)
{'factor': 2}
>>> home.cleanup()

Registering the same model content with the same metrics and tags as the latest version makes
no new version: the latest one is returned, with ``.new`` set to ``False``. So a training step
that runs again on unchanged data does not flood the registry. (Different metrics or tags for
the same content do make a new version.)

Inside a running step, ``register`` stores the model in the run's datastore and records the
run id, pipeline and step as its source; elsewhere it uses the store of the project found from
the working folder, or of ``home=``/``config=``. A step reads a model with
``Annotated[Regressor, Model("HousePrices")]`` (latest), ``Model(..., version=2)`` or
``Model(..., alias="production")``.
"""

from __future__ import annotations

import builtins
import numbers
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stepflow._execution.session import registry_session
from stepflow._storage.registry import ModelVersion, Registry, check_name
from stepflow._storage.registry_content import load_model, model_content
from stepflow.errors import UsageError

if TYPE_CHECKING:
    from stepflow._config import Config

__all__ = ["ModelVersion", "get", "list", "load", "register", "set_alias", "versions"]

_Home = str | os.PathLike[str] | None


def _metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise UsageError(f"metrics must be a dict of name → number, got {type(metrics).__name__}")
    clean = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise UsageError(f"metric names must be non-empty strings, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UsageError(
                f"metric {key!r} must be a real number, got {type(value).__name__} {value!r}"
            )
        clean[key] = float(value)
    return clean


def _tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise UsageError(f"tags must be a dict of name → text, got {type(tags).__name__}")
    for key in tags:
        if not isinstance(key, str) or not key:
            raise UsageError(f"tag names must be non-empty strings, got {key!r}")
    return {key: str(value) for key, value in tags.items()}


def register(
    name: str,
    model: Any,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
    *,
    home: _Home = None,
    config: Config | None = None,
) -> ModelVersion:
    """Store ``model`` as the next version of model ``name``.

    :param metrics: numbers to keep with the version (``{"r2": 0.91}``).
    :param tags: text labels (``{"data": "ames"}``); values are turned into strings.
    :returns: the new version, or the latest one (``.new == False``) when it holds the same
        content, metrics and tags.
    :raises UsageError: a bad name, metric or tag, or a model that cannot be stored.
    """
    check_name("model", name)
    clean_metrics, clean_tags = _metrics(metrics), _tags(tags)
    if description is not None and not isinstance(description, str):
        raise UsageError(f"description must be a string, got {type(description).__name__}")
    with registry_session(home, config) as session:
        ref, content_hash, type_name = model_content(session.store, session.serializers, model)
        return Registry(session.store).add_model(
            name,
            content_hash=content_hash,
            obj=ref,
            type_name=type_name,
            metrics=clean_metrics,
            tags=clean_tags,
            description=description,
            source=session.source,
        )


def get(
    name: str,
    version: int | None = None,
    alias: str | None = None,
    *,
    home: _Home = None,
    config: Config | None = None,
) -> ModelVersion:
    """A model's version record: by ``version``, by ``alias``, or the latest.

    :raises NotRegisteredError: no such model, version or alias; the message lists what
        exists.
    """
    with registry_session(home, config) as session:
        return Registry(session.store).model(name, version, alias)


def versions(
    name: str, *, home: _Home = None, config: Config | None = None
) -> builtins.list[ModelVersion]:
    """Every version of a model, oldest first."""
    with registry_session(home, config) as session:
        return Registry(session.store).model_versions(name)


def load(
    name: str,
    version: int | None = None,
    alias: str | None = None,
    *,
    home: _Home = None,
    config: Config | None = None,
) -> Any:
    """The model object of a version (by ``version``, ``alias``, or the latest)."""
    with registry_session(home, config) as session:
        found = Registry(session.store).model(name, version, alias)
        return load_model(found, session.store, session.serializers)


def set_alias(
    name: str, alias: str, version: int, *, home: _Home = None, config: Config | None = None
) -> ModelVersion:
    """Point ``alias`` (``"production"``, say) at ``version`` of model ``name``; returns that
    version. Steps that read the alias are invalidated when it moves to other content."""
    with registry_session(home, config) as session:
        return Registry(session.store).set_alias(name, alias, version)[0]


def list(*, home: _Home = None, config: Config | None = None) -> builtins.list[ModelVersion]:
    """The latest version of every registered model, by name."""
    with registry_session(home, config) as session:
        return Registry(session.store).models()
