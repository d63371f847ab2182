"""The records of the registry: one data-set or model version, and the rules for names.

Each record is a frozen value that turns into the JSON document kept in the datastore
(``to_dict``) and back (``from_dict``); see ``stepflow._storage.registry`` for the layout.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from stepflow._humanize import human_size
from stepflow._storage.artifacts import ArtifactRef
from stepflow.errors import UsageError

__all__ = [
    "DATASET_KINDS",
    "FORMAT",
    "DatasetVersion",
    "ModelVersion",
    "check_alias",
    "check_name",
    "check_version",
]

#: bump when the document layout changes incompatibly (readers refuse other formats)
FORMAT = 1
DATASET_KINDS = ("file", "folder", "table")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")


def check_name(kind: str, name: object) -> str:
    """A data-set or model name: letters, digits, ``_ . -``; it is a folder in the store."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith("."):
        raise UsageError(
            f"{kind} name {name!r} is not valid: use letters, digits, '_', '-' and '.', "
            f"starting with a letter or digit (at most 100 characters), e.g. 'house_prices'"
        )
    return name


def check_alias(alias: object) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.match(alias):
        raise UsageError(
            f"alias {alias!r} is not valid: use letters, digits, '_', '-' and '.', starting "
            f"with a letter (at most 64 characters), e.g. 'production'"
        )
    if alias == "latest":
        raise UsageError(
            "'latest' always means the newest version and cannot be set; choose another "
            "alias name, such as 'production'"
        )
    return alias


def check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UsageError(f"version must be a whole number >= 1, got {version!r}")
    return version


#: what a registry version records of an object (a registered object is always a file of
#: the store, never bytes kept inline in a cache record: see ``ArtifactIO.materialize``)
_REF_FIELDS = ("name", "content_hash", "serializer", "size", "digest")


def _ref_to_dict(ref: ArtifactRef) -> dict[str, Any]:
    assert not ref.inline, "registered objects are files (ArtifactIO.materialize)"
    return {f: getattr(ref, f) for f in _REF_FIELDS}


def _ref_from_dict(data: Mapping[str, Any]) -> ArtifactRef:
    return ArtifactRef(**{f: data[f] for f in _REF_FIELDS})


@attrs.frozen
class DatasetVersion:
    """One version of a registered data set."""

    name: str
    version: int
    #: ``"file"``, ``"folder"`` or ``"table"`` (a DataFrame)
    kind: str
    #: what decides whether content changed; consumers' cache keys use it
    content_hash: str
    #: bytes in the store
    size: int
    #: seconds since the epoch
    created: float
    description: str | None
    #: where it came from: ``{"kind": "path", "path": ...}``, ``{"kind": "dataframe"}`` or
    #: ``{"kind": "run", "run_id": ..., "pipeline": ..., "step": ..., "output": ...}``
    source: Mapping[str, Any]
    #: a file: ``{file name: object}``; a folder: ``{relative path: object}``; a table:
    #: ``{"table": object}``
    objects: Mapping[str, ArtifactRef]
    #: ``True`` when ``register`` made this version now, ``False`` when the content was
    #: unchanged and the existing latest version was returned
    new: bool = attrs.field(default=False, eq=False)

    @property
    def label(self) -> str:
        """``data set houses v3``."""
        return f"data set {self.name} v{self.version}"

    @property
    def filename(self) -> str:
        """The file name of a file data set (``""`` for other kinds)."""
        return next(iter(self.objects)) if self.kind == "file" else ""

    def describe(self) -> str:
        what = {"file": self.filename, "folder": f"{len(self.objects)} files", "table": "table"}
        return f"{self.kind}, {what[self.kind]}, {human_size(self.size)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "content_hash": self.content_hash,
            "size": self.size,
            "created": self.created,
            "description": self.description,
            "source": dict(self.source),
            "objects": {k: _ref_to_dict(v) for k, v in self.objects.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetVersion:
        return cls(
            name=data["name"],
            version=int(data["version"]),
            kind=data["kind"],
            content_hash=data["content_hash"],
            size=int(data["size"]),
            created=float(data["created"]),
            description=data.get("description"),
            source=dict(data.get("source") or {}),
            objects={k: _ref_from_dict(v) for k, v in data["objects"].items()},
        )


@attrs.frozen
class ModelVersion:
    """One version of a registered model."""

    name: str
    version: int
    #: the hash of the model's value (after one store round trip, see ``registry_content``)
    content_hash: str
    size: int
    created: float
    description: str | None
    metrics: Mapping[str, float]
    tags: Mapping[str, str]
    #: ``{"kind": "run", "run_id": ..., "pipeline": ..., "step": ...}`` inside a step,
    #: ``{"kind": "api"}`` outside one
    source: Mapping[str, Any]
    #: the stored model
    object: ArtifactRef
    #: the model's class, ``module.QualName``
    type: str = ""
    #: the aliases that point at this version (when it was read)
    aliases: tuple[str, ...] = attrs.field(default=(), eq=False)
    #: ``True`` when ``register`` made this version now (see ``DatasetVersion.new``)
    new: bool = attrs.field(default=False, eq=False)

    @property
    def label(self) -> str:
        """``model HousePrices v2``."""
        return f"model {self.name} v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "content_hash": self.content_hash,
            "size": self.size,
            "created": self.created,
            "description": self.description,
            "metrics": dict(self.metrics),
            "tags": dict(self.tags),
            "source": dict(self.source),
            "object": _ref_to_dict(self.object),
            "type": self.type,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], aliases: Iterable[str] = ()) -> ModelVersion:
        return cls(
            name=data["name"],
            version=int(data["version"]),
            content_hash=data["content_hash"],
            size=int(data["size"]),
            created=float(data["created"]),
            description=data.get("description"),
            metrics={k: float(v) for k, v in (data.get("metrics") or {}).items()},
            tags={k: str(v) for k, v in (data.get("tags") or {}).items()},
            source=dict(data.get("source") or {}),
            object=_ref_from_dict(data["object"]),
            type=data.get("type", ""),
            aliases=tuple(sorted(aliases)),
        )
