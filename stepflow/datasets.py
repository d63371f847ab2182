"""Registered data sets: versioned files, folders and tables kept in the datastore.

>>> import tempfile, pandas as pd, stepflow
>>> home = tempfile.TemporaryDirectory()  # a throw-away stepflow home for this example
>>> frame = pd.DataFrame({"price": [1.0, 2.0]})
>>> v = stepflow.datasets.register("prices", frame, home=home.name)
>>> (v.name, v.version, v.kind, v.new)
('prices', 1, 'table', True)
>>> stepflow.datasets.register("prices", frame, home=home.name).new
False
>>> float(stepflow.datasets.load("prices", home=home.name)["price"].sum())
3.0
>>> home.cleanup()

A new version is made only when the content changed; registering the same content again
returns the latest version with ``.new`` set to ``False``. A step reads a data set with
``Annotated[pd.DataFrame, Dataset("prices")]`` (or ``pathlib.Path`` for the file or folder).

Inside a running step these functions use the run's datastore and record the run and step as
the source; elsewhere they use the store of the project found from the working folder, or of
``home=``/``config=``.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepflow._execution.session import registry_session
from stepflow._storage.registry import DatasetVersion, Registry
from stepflow._storage.registry_content import dataset_content, is_dataframe, load_dataset
from stepflow.errors import UsageError

if TYPE_CHECKING:
    from stepflow._config import Config

__all__ = ["DatasetVersion", "get", "list", "load", "register", "versions"]

_Home = str | os.PathLike[str] | None


def register(
    name: str,
    path_or_dataframe: Any,
    description: str | None = None,
    *,
    home: _Home = None,
    config: Config | None = None,
) -> DatasetVersion:
    """Register a file, a folder or a pandas DataFrame as the next version of data set ``name``.

    :returns: the new version, or the latest one (with ``.new == False``) when its content
        is the same.
    :raises UsageError: a bad name, a path that does not exist, or a value that is neither a
        path nor a DataFrame.
    """
    from stepflow._storage.registry import check_name

    check_name("data set", name)
    if description is not None and not isinstance(description, str):
        raise UsageError(f"description must be a string, got {type(description).__name__}")
    with registry_session(home, config) as session:
        content = dataset_content(session.store, session.serializers, path_or_dataframe)
        if is_dataframe(path_or_dataframe):
            source = {"kind": "dataframe"}
        else:
            source = {"kind": "path", "path": str(Path(path_or_dataframe).expanduser().resolve())}
        if session.source["kind"] == "run":
            source.update({k: v for k, v in session.source.items() if k != "kind"})
        return Registry(session.store).add_content(
            name, content, description=description, source=source
        )


def get(
    name: str, version: int | None = None, *, home: _Home = None, config: Config | None = None
) -> DatasetVersion:
    """A data set's version record (the latest when ``version`` is ``None``).

    :raises NotRegisteredError: no such data set or version; the message lists what exists.
    """
    with registry_session(home, config) as session:
        return Registry(session.store).dataset(name, version)


def versions(
    name: str, *, home: _Home = None, config: Config | None = None
) -> builtins.list[DatasetVersion]:
    """Every version of a data set, oldest first."""
    with registry_session(home, config) as session:
        return Registry(session.store).dataset_versions(name)


def load(
    name: str, version: int | None = None, *, home: _Home = None, config: Config | None = None
) -> Any:
    """A data set's content: a DataFrame for tables and CSV, TSV or Parquet files, a local
    path otherwise (a read-only copy; do not write into it)."""
    with registry_session(home, config) as session:
        found = Registry(session.store).dataset(name, version)
        return load_dataset(
            found, "any", store=session.store, serializers=session.serializers, home=session.home
        )


def list(*, home: _Home = None, config: Config | None = None) -> builtins.list[DatasetVersion]:
    """The latest version of every registered data set, by name."""
    with registry_session(home, config) as session:
        return Registry(session.store).datasets()
