"""Published pipelines: named, numbered versions that run from their stored code.

>>> import stepflow
>>> # version = stepflow.publish(pipeline, name="batch_scoring")  # -> PublishedPipeline
>>> # stepflow.published.get("batch_scoring").ref                 # -> 'batch_scoring@1'

``stepflow run NAME[@VERSION]`` runs a version from its code snapshot, not from the working
tree, so a published pipeline keeps running while the project's code is edited.
"""

from __future__ import annotations

import builtins
import os
from typing import TYPE_CHECKING

from stepflow._config import config_or_load
from stepflow._scheduling.publishing import PublishedPipeline, get_published
from stepflow._scheduling.publishing import publish as _publish

if TYPE_CHECKING:
    from stepflow._config import Config
    from stepflow._pipeline import Pipeline

__all__ = ["PublishedPipeline", "get", "list", "publish", "versions"]

_Home = str | os.PathLike[str] | None


def publish(
    pipeline: Pipeline,
    *,
    name: str,
    description: str | None = None,
    home: _Home = None,
    config: Config | None = None,
) -> PublishedPipeline:
    """Publish ``pipeline`` (a module-level ``Pipeline`` of the project) as ``name``.

    Stores the project's code snapshot, the pipeline's target and parameter defaults, the
    backends' configuration and the Python and package versions. Publishing the same content
    again returns the existing version.

    :raises UsageError: a bad name, or a pipeline that is not a module-level name of its
        module inside the project folder.
    """
    found, _ = _publish(
        pipeline, name=name, description=description, config=config_or_load(home, config)
    )
    return found


def get(
    name: str, version: int | None = None, *, home: _Home = None, config: Config | None = None
) -> PublishedPipeline:
    """A published version (the latest when ``version`` is ``None``).

    :raises UsageError: no such name or version; the message lists what exists.
    """
    return get_published(name, version, config=config_or_load(home, config))


def versions(
    name: str, *, home: _Home = None, config: Config | None = None
) -> builtins.list[PublishedPipeline]:
    """Every version of ``name``, oldest first."""
    from stepflow._storage.scheduledb import ScheduleDB

    with ScheduleDB(config_or_load(home, config).home) as db:
        return [PublishedPipeline.from_row(r) for r in db.published_versions(name)]


def list(*, home: _Home = None, config: Config | None = None) -> builtins.list[PublishedPipeline]:
    """The latest version of every published pipeline, by name."""
    from stepflow._storage.scheduledb import ScheduleDB

    with ScheduleDB(config_or_load(home, config).home) as db:
        return [PublishedPipeline.from_row(r) for r in db.published_list()]
