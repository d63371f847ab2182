"""``[tool.stepflow.mlflow]``: read and checked when stepflow is configured, before any run.

Nothing here imports MLflow: a project without the table pays nothing for the plugin.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from stepflow.errors import UsageError

__all__ = ["ENV_TRACKING_URI", "Settings", "read_settings", "shown_uri"]

#: overrides ``tracking_uri`` (and turns mirroring on without the table); ``off`` turns it off
ENV_TRACKING_URI = "STEPFLOW_MLFLOW_TRACKING_URI"

#: key → (type, help), in the order the docs list them
KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "tracking_uri": (str, "where runs go: sqlite:///mlflow.db, http://host:5000, databricks"),
    "registry_uri": (str, "where models are registered (default: the tracking URI)"),
    "experiment": (str, "the MLflow experiment (default: the pipeline's name)"),
    "artifact_location": (str, "artifact root of experiments the plugin creates"),
    "register_models": (bool, "mirror models registered during a run (default true)"),
    "connect_timeout": ((int, float), "seconds to wait for an http(s) server (default 5)"),
}


@attrs.frozen
class Settings:
    """What the plugin does, from ``[tool.stepflow.mlflow]`` and ``STEPFLOW_MLFLOW_*``."""

    #: the MLflow tracking URI, with a relative ``sqlite:///`` or folder path made absolute
    #: from the project folder
    tracking_uri: str
    registry_uri: str | None = None
    #: ``None``: one experiment per pipeline, named after it
    experiment: str | None = None
    #: artifact root for experiments this plugin creates; ``None`` lets MLflow decide
    artifact_location: str | None = None
    register_models: bool = True
    connect_timeout: float = 5.0


def read_settings(
    settings: Mapping[str, Any], rootdir: Path, environ: Mapping[str, str] | None = None
) -> Settings | None:
    """The plugin's settings, or ``None`` when MLflow mirroring is not asked for.

    :param settings: the whole ``[tool.stepflow]`` table.
    :param rootdir: the project folder; relative paths in URIs are relative to it.
    :raises UsageError: a key that is unknown or of the wrong type, or no ``tracking_uri``.
    """
    environ = os.environ if environ is None else environ
    where = "[tool.stepflow.mlflow]"
    table = settings.get("mlflow")
    override = environ.get(ENV_TRACKING_URI, "").strip()
    if override.lower() == "off":
        return None
    if table is None:
        if not override:
            return None
        table = {}
    if not isinstance(table, Mapping):
        raise UsageError(f'{where} must be a table: [tool.stepflow.mlflow] tracking_uri = "..."')
    for key, value in table.items():
        if key not in KEYS:
            known = ", ".join(KEYS)
            raise UsageError(f"{where}: unknown key {key!r}; the keys are {known}")
        kind, _ = KEYS[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            name = kind.__name__ if isinstance(kind, type) else "number"
            raise UsageError(
                f"{where}: {key} must be a {name}, got {type(value).__name__} {value!r}"
            )
    uri = override or table.get("tracking_uri")
    if not uri:
        raise UsageError(
            f'{where} has no tracking_uri; add tracking_uri = "sqlite:///mlflow.db" (a local '
            f"store in the project folder), or an MLflow server's http://HOST:PORT"
        )
    timeout = float(table.get("connect_timeout", 5.0))
    if timeout <= 0:
        raise UsageError(f"{where}: connect_timeout must be more than 0 seconds, got {timeout}")
    tracking_uri = _absolute(uri, rootdir)
    registry = table.get("registry_uri")
    artifacts = table.get("artifact_location")
    if artifacts is not None and "://" not in artifacts:
        artifacts = (rootdir / os.path.expanduser(artifacts)).resolve().as_uri()
    elif artifacts is None:
        artifacts = _default_artifacts(tracking_uri)
    return Settings(
        tracking_uri=tracking_uri,
        registry_uri=None if registry is None else _absolute(registry, rootdir),
        experiment=table.get("experiment") or None,
        artifact_location=artifacts,
        register_models=table.get("register_models", True),
        connect_timeout=timeout,
    )


#: tracking URIs MLflow knows by name; any other URI without a scheme is a folder
_NAMED_URIS = frozenset({"databricks", "databricks-uc", "uc"})


def _absolute(uri: str, rootdir: Path) -> str:
    """``uri`` with a relative SQLite file or store folder made absolute from ``rootdir``.

    MLflow would resolve them from the working folder, so the same project would write to
    different stores depending on where ``stepflow`` was started.
    """
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and not path.startswith("/") and not path.startswith(":memory:"):
            return "sqlite:///" + str((rootdir / path).resolve())
        return uri
    parts = urlsplit(uri)
    if parts.scheme == "file" and parts.path and not parts.path.startswith("/"):
        return (rootdir / parts.path).resolve().as_uri()
    if parts.scheme == "" and uri not in _NAMED_URIS:
        return (rootdir / os.path.expanduser(uri)).resolve().as_uri()
    return uri


def _default_artifacts(tracking_uri: str) -> str | None:
    """Beside a SQLite database, ``mlartifacts/`` (what ``mlflow server`` uses); MLflow's own
    default would be ``./mlruns`` in whatever folder the run was started from."""
    if tracking_uri.startswith("sqlite:////"):
        database = Path(tracking_uri[len("sqlite:///") :])
        return (database.parent / "mlartifacts").as_uri()
    return None


def shown_uri(uri: str) -> str:
    """``uri`` for messages: a password in it is replaced by ``***``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
