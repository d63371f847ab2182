"""``stepflow datasets register|list|show`` and ``stepflow models list|show|alias``.

Listings are the read API's (``stepflow._storage.read``); this module formats them, and
registers and moves aliases. Parsers are built here with argparse only; the registry loads
when a command runs, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stepflow._humanize import human_size, human_time, iso_times
from stepflow._surfaces.table import table

if TYPE_CHECKING:
    from stepflow._config import Config
    from stepflow._storage.read import ReadAPI
    from stepflow._storage.registry import DatasetVersion, ModelVersion
    from stepflow._surfaces.cli import AddCommon

__all__ = ["add_datasets", "add_models", "run_command"]


def add_datasets(sub: argparse._SubParsersAction, add_common: AddCommon) -> argparse.ArgumentParser:
    """``stepflow datasets``'s parser and its actions'; returns it."""
    datasets = sub.add_parser("datasets", help="register, list and show versioned data sets")
    ds_sub = datasets.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    register = ds_sub.add_parser(
        "register",
        help="register a file or folder as a data set's next version",
        description="Register the file or folder at PATH as the next version of data set "
        "NAME. A new version is made only when the content changed.",
    )
    register.add_argument("name", metavar="NAME")
    register.add_argument("path", metavar="PATH", help="a file or a folder")
    register.add_argument("--description", help="what this version holds")
    add_common(register, with_json=True)
    ls = ds_sub.add_parser("list", help="every data set and its latest version")
    add_common(ls, with_json=True)
    show = ds_sub.add_parser("show", help="a data set's versions, or one version in detail")
    show.add_argument("name", metavar="NAME")
    show.add_argument(
        "--version",
        dest="number",
        type=int,
        metavar="N",
        help="this version (default: latest)",
    )
    add_common(show, with_json=True)
    return datasets


def add_models(sub: argparse._SubParsersAction, add_common: AddCommon) -> argparse.ArgumentParser:
    """``stepflow models``'s parser and its actions'; returns it."""
    models = sub.add_parser("models", help="list and show registered models; move aliases")
    md_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    mls = md_sub.add_parser("list", help="every model, its latest version and aliases")
    add_common(mls, with_json=True)
    mshow = md_sub.add_parser(
        "show", help="a model's versions: metrics, tags, aliases and source run"
    )
    mshow.add_argument("name", metavar="NAME")
    mshow.add_argument("--version", dest="number", type=int, metavar="N", help="only this version")
    add_common(mshow, with_json=True)
    alias = md_sub.add_parser(
        "alias",
        help="point an alias (such as production) at a version",
        description="Point ALIAS of model NAME at VERSION, creating or moving it. Steps that "
        "read Model(NAME, alias=ALIAS) run again when it moves to other content.",
    )
    alias.add_argument("name", metavar="NAME")
    alias.add_argument("alias", metavar="ALIAS")
    # dest: "version" is the top-level --version flag's
    alias.add_argument("number", type=int, metavar="VERSION")
    add_common(alias, with_json=True)
    return models


def run_command(args: argparse.Namespace, config: Config) -> int:
    """Run ``stepflow datasets ...`` or ``stepflow models ...``; returns the exit code."""
    if args.command == "datasets":
        return _DATASETS[args.datasets_command](args, config)
    return _MODELS[args.models_command](args, config)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _ds_dict(v: DatasetVersion) -> dict[str, Any]:
    return iso_times(v.to_dict(), "created")


def _source(source: Mapping[str, Any]) -> str:
    kind = source.get("kind")
    if kind == "run" or source.get("run_id"):
        where = ", ".join(
            f"{k} {source[k]}" for k in ("pipeline", "step", "output") if source.get(k)
        )
        return f"run {source.get('run_id')}" + (f" ({where})" if where else "")
    if kind == "path":
        return f"path {source.get('path')}"
    if kind == "dataframe":
        return "a DataFrame (Python API)"
    return "Python API"


# --- data sets -------------------------------------------------------------------------------


def _ds_register(args: argparse.Namespace, config: Config) -> int:
    import stepflow.datasets

    version = stepflow.datasets.register(args.name, args.path, args.description, config=config)
    if args.json:
        _print_json({**_ds_dict(version), "new": version.new})
    elif version.new:
        print(f"registered {version.label} ({version.describe()})")
    else:
        print(
            f"data set {version.name} is unchanged: v{version.version} already holds this "
            f"content ({version.describe()})"
        )
    return 0


def _reading(config: Config) -> ReadAPI:
    from stepflow._storage.read import ReadAPI

    return ReadAPI(config)


def _ds_list(args: argparse.Namespace, config: Config) -> int:
    with _reading(config) as api:
        found = api.datasets()
    if args.json:
        _print_json([_ds_dict(v) for v in found])
        return 0
    if not found:
        print("no data sets registered; register one with `stepflow datasets register NAME PATH`")
        return 0
    rows = []
    for v in found:
        rows.append(
            [
                v.name,
                f"v{v.version}",
                v.kind,
                human_size(v.size),
                human_time(v.created),
                _source(v.source),
            ]
        )
    sys.stdout.write(table(rows, ["name", "latest", "kind", "size", "created", "source"]))
    return 0


def _dataset_detail(v: DatasetVersion) -> list[str]:
    lines = [
        f"{v.label}",
        f"  kind:        {v.kind}" + (f" ({v.filename})" if v.kind == "file" else ""),
        f"  size:        {human_size(v.size)}",
        f"  content:     {v.content_hash}",
        f"  created:     {human_time(v.created)}",
        f"  source:      {_source(v.source)}",
    ]
    if v.description:
        lines.append(f"  description: {v.description}")
    if v.kind == "folder":
        lines.append(f"  files:       {len(v.objects)}")
        shown = sorted(v.objects.items())
        for rel, ref in shown[:20]:
            lines.append(f"    {rel}  ({human_size(ref.size)})")
        if len(shown) > 20:
            lines.append(f"    ... and {len(shown) - 20} more")
    return lines


def _ds_show(args: argparse.Namespace, config: Config) -> int:
    with _reading(config) as api:
        every = api.dataset_versions(args.name)
        chosen = every[-1]
        if args.number is not None:
            chosen = api.dataset(args.name, args.number)
    if args.json:
        if args.number is not None:
            _print_json(_ds_dict(chosen))
        else:
            _print_json(
                {
                    "name": args.name,
                    "latest": every[-1].version,
                    "versions": [_ds_dict(v) for v in every],
                }
            )
        return 0
    lines = _dataset_detail(chosen)
    lines.append("")
    lines.append(f"versions of data set {args.name}:")
    rows = []
    for v in every:
        mark = "*" if v.version == chosen.version else ""
        rows.append(
            [
                mark,
                f"v{v.version}",
                v.kind,
                human_size(v.size),
                human_time(v.created),
                _source(v.source),
            ]
        )
    header = ["", "version", "kind", "size", "created", "source"]
    sys.stdout.write("\n".join(lines) + "\n" + table(rows, header))
    return 0


# --- models ----------------------------------------------------------------------------------


def _metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())) or "-"


def _model_dict(v: ModelVersion) -> dict[str, Any]:
    return {**iso_times(v.to_dict(), "created"), "aliases": list(v.aliases)}


def _md_list(args: argparse.Namespace, config: Config) -> int:
    with _reading(config) as api:
        found = api.models()
        aliases = {v.name: api.model_aliases(v.name) for v in found}
    if args.json:
        _print_json([{**_model_dict(v), "all_aliases": aliases[v.name]} for v in found])
        return 0
    if not found:
        print("no models registered; register one with stepflow.models.register(NAME, model)")
        return 0
    rows = []
    for v in found:
        named = ", ".join(f"{a}=v{n}" for a, n in aliases[v.name].items()) or "-"
        rows.append(
            [
                v.name,
                f"v{v.version}",
                named,
                _metrics(v.metrics),
                human_time(v.created),
                _source(v.source),
            ]
        )
    sys.stdout.write(table(rows, ["name", "latest", "aliases", "metrics", "created", "source"]))
    return 0


def _md_show(args: argparse.Namespace, config: Config) -> int:
    with _reading(config) as api:
        if args.number is not None:
            every = [api.model(args.name, args.number)]
        else:
            every = api.model_versions(args.name)
    if args.json:
        _print_json({"name": args.name, "versions": [_model_dict(v) for v in every]})
        return 0
    aliases = sorted((a, v.version) for v in every for a in v.aliases)
    lines = [f"model {args.name}: {len(every)} version{'s' if len(every) != 1 else ''}"]
    lines.append("aliases: " + (", ".join(f"{a} -> v{n}" for a, n in aliases) or "none"))
    for v in reversed(every):
        pointed = f"  [{', '.join(v.aliases)}]" if v.aliases else ""
        lines.append("")
        lines.append(
            f"v{v.version}{pointed}  {human_time(v.created)}  {v.type}  {human_size(v.size)}"
        )
        lines.append(f"  metrics: {_metrics(v.metrics)}")
        if v.tags:
            lines.append("  tags:    " + ", ".join(f"{k}={t}" for k, t in sorted(v.tags.items())))
        lines.append(f"  source:  {_source(v.source)}")
        if v.description:
            lines.append(f"  description: {v.description}")
        lines.append(f"  content: {v.content_hash}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _md_alias(args: argparse.Namespace, config: Config) -> int:
    from stepflow._execution.session import registry_session
    from stepflow._storage.registry import Registry

    with registry_session(config=config) as session:
        version, previous = Registry(session.store).set_alias(args.name, args.alias, args.number)
    if args.json:
        _print_json({**_model_dict(version), "previous": previous})
        return 0
    if previous is None:
        was = "new alias"
    elif previous == version.version:
        was = "unchanged"
    else:
        was = f"was v{previous}"
    print(f"model {args.name}: alias {args.alias} -> v{version.version} ({was})")
    return 0


_DATASETS = {"register": _ds_register, "list": _ds_list, "show": _ds_show}
_MODELS = {"list": _md_list, "show": _md_show, "alias": _md_alias}
