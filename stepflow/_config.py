"""Configuration: ``[tool.stepflow]`` in ``pyproject.toml``, then ``STEPFLOW_*`` variables,
then explicit arguments (the command line)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from stepflow.errors import UsageError

__all__ = ["Config", "config_or_load", "find_pyproject", "load_config"]

_BOOL_TEXT = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


@attrs.frozen
class Config:
    """The merged configuration of one invocation."""

    #: the folder of the project's ``pyproject.toml`` (or the working folder)
    rootdir: Path
    #: the stepflow home: object store, indexes, run records
    home: Path
    default_backend: str = "local"
    #: backend name → options, each with ``plugin`` naming the backend kind
    backends: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    plugins: tuple[str, ...] = ()
    workers: int = 1
    pyproject: Path | None = None
    #: the whole ``[tool.stepflow]`` table, for plugins' own keys
    settings: Mapping[str, Any] = attrs.field(factory=dict)
    #: parsed command-line options, for plugins that added some
    options: Mapping[str, Any] = attrs.field(factory=dict)
    #: where objects, data sets and models live: ``None`` for ``<home>/objects``, or a URL
    #: such as ``s3://bucket/prefix`` (``[tool.stepflow] store``, ``STEPFLOW_STORE``)
    store: str | None = None
    #: keyword options for the store's plugin (``[tool.stepflow.store_options]``), e.g.
    #: ``endpoint_url`` for an S3-compatible server
    store_options: Mapping[str, Any] = attrs.field(factory=dict)
    #: a home a team shares on purpose (``[tool.stepflow] shared_home``,
    #: ``STEPFLOW_SHARED_HOME``): group-accessible folders and files, and a home owned by a
    #: teammate is accepted (see ``stepflow._storage.home``)
    shared_home: bool = False


def find_pyproject(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start``."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def config_or_load(home: str | os.PathLike[str] | None, config: Config | None) -> Config:
    """``config`` when given, else the project's configuration with ``home``: what the
    Python API's functions taking ``home=`` and ``config=`` use."""
    return config if config is not None else load_config(home=home)


def load_config(
    start: Path | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    default_backend: str | None = None,
    plugins: tuple[str, ...] = (),
    workers: int | None = None,
    options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge ``[tool.stepflow]``, ``STEPFLOW_*`` variables and the arguments, in that order."""
    environ = os.environ if environ is None else environ
    start = Path.cwd() if start is None else Path(start)
    pyproject = find_pyproject(start.resolve())
    table: dict[str, Any] = {}
    if pyproject is not None:
        import tomllib  # only where there is a file to read

        try:
            with open(pyproject, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{pyproject} is not valid TOML: {exc}") from exc
        table = data.get("tool", {}).get("stepflow", {})
        if not isinstance(table, dict):
            raise UsageError(f"{pyproject}: [tool.stepflow] must be a table")
    rootdir = pyproject.parent if pyproject is not None else start.resolve()
    where = f"{pyproject} [tool.stepflow]" if pyproject else "[tool.stepflow]"

    home_value = home or environ.get("STEPFLOW_HOME") or table.get("home", ".stepflow")
    home_path = Path(os.path.expanduser(str(home_value)))
    if not home_path.is_absolute():
        # Relative to the project for the config file; relative to the caller otherwise.
        base = rootdir if not (home or environ.get("STEPFLOW_HOME")) else Path.cwd()
        home_path = base / home_path

    backend = (
        default_backend
        or environ.get("STEPFLOW_DEFAULT_BACKEND")
        or table.get("default_backend", "local")
    )
    backends = table.get("backends", {})
    if not isinstance(backends, dict) or not all(isinstance(v, dict) for v in backends.values()):
        raise UsageError(f"{where}: backends must be tables, [tool.stepflow.backends.NAME]")
    for name, opts in backends.items():
        if "plugin" not in opts:
            raise UsageError(
                f"{where}: backend {name!r} has no 'plugin' key; add plugin = \"KIND\" "
                f"(see `stepflow plugins` for the kinds installed)"
            )

    config_plugins = table.get("plugins", [])
    if isinstance(config_plugins, str) or not isinstance(config_plugins, list):
        raise UsageError(f"{where}: plugins must be a list of module names")
    env_plugins = [p for p in environ.get("STEPFLOW_PLUGINS", "").split(",") if p.strip()]
    all_plugins = tuple(dict.fromkeys([*config_plugins, *env_plugins, *plugins]))

    if workers is None:
        raw = environ.get("STEPFLOW_WORKERS") or table.get("workers", 1)
        try:
            workers = int(raw)
        except (TypeError, ValueError):
            raise UsageError(f"workers must be a whole number, got {raw!r}") from None
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")

    store = environ.get("STEPFLOW_STORE") or table.get("store") or None
    if store is not None and not isinstance(store, str):
        raise UsageError(f'{where}: store must be a URL string such as "s3://bucket/prefix"')
    store_options = table.get("store_options", {})
    if not isinstance(store_options, dict):
        raise UsageError(f"{where}: store_options must be a table, [tool.stepflow.store_options]")

    shared_raw = environ.get("STEPFLOW_SHARED_HOME", "").strip().lower()
    if shared_raw:
        if shared_raw not in _BOOL_TEXT:
            raise UsageError(
                f"STEPFLOW_SHARED_HOME must be 1 or 0 (true or false), got {shared_raw!r}"
            )
        shared = _BOOL_TEXT[shared_raw]
    else:
        shared = table.get("shared_home", False)
        if not isinstance(shared, bool):
            raise UsageError(
                f"{where}: shared_home must be true or false (a TOML boolean), got {shared!r}"
            )
    # The modes this process (and the workers it starts) gives what it writes in the home:
    # storage reads the variable (``stepflow._storage.home.shared_home``).
    if shared:
        os.environ["STEPFLOW_SHARED_HOME"] = "1"
    else:
        os.environ.pop("STEPFLOW_SHARED_HOME", None)

    return Config(
        rootdir=rootdir,
        home=home_path,
        default_backend=str(backend),
        backends={k: dict(v) for k, v in backends.items()},
        plugins=all_plugins,
        workers=workers,
        pyproject=pyproject,
        settings=table,
        options=dict(options or {}),
        store=store,
        store_options=dict(store_options),
        shared_home=shared,
    )
