"""Versioned data sets and models, kept as documents in the datastore.

Document layout::

    datasets/<name>/<version:08d>.json       one per data-set version (immutable)
    models/<name>/<version:08d>.json         one per model version (immutable)
    models/<name>/aliases/<alias>.json       {"version": N}: a pointer that can be moved

A version document refers to content-addressed objects of the same datastore (the files of
a data set, a table or a model artifact). Nothing is kept in the local home, so every machine
pointed at the same store sees the same registry; the local home only caches materialized
copies (see ``registry_content``).

Versions are numbered 1, 2, 3... A new number is claimed by creating its document with an
exclusive create, so two processes registering at once get different numbers and neither
overwrites the other; the loser of a race reads the registry again and retries. A new version
is made only when the content changed: registering what the latest version already holds
returns that version (``.new`` is ``False``).

``stepflow._plugins.registry_pins`` is the plugin that keeps what registered versions need
when ``stepflow cache prune`` runs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._humanize import close_names, did_you_mean
from stepflow._storage.artifacts import ArtifactRef
from stepflow._storage.datastore import Datastore
from stepflow._storage.faults import writing
from stepflow._storage.registry_records import (
    ALIAS_RE,
    DATASET_KINDS,
    FORMAT,
    DatasetVersion,
    ModelVersion,
    check_alias,
    check_name,
    check_version,
)
from stepflow.errors import NotRegisteredError, StepflowError, UsageError

if TYPE_CHECKING:
    from stepflow._storage.registry_content import DatasetContent

__all__ = [
    "DatasetVersion",
    "ModelVersion",
    "Registry",
    "check_alias",
    "check_name",
    "check_version",
]

_VERSION_DOC_RE = re.compile(r"^(\d{8})\.json$")
#: how often a version number is claimed again after losing a race, before giving up
_CLAIM_ATTEMPTS = 50

_SECTIONS = {"data set": "datasets", "model": "models"}


class Registry:
    """The data sets and models of one datastore."""

    def __init__(self, store: Datastore) -> None:
        self.store = store

    # --- documents ------------------------------------------------------------------------

    def _numbers(self, kind: str, name: str) -> list[int]:
        numbers = []
        prefix = f"{_SECTIONS[kind]}/{name}/"
        for path in self.store.list_docs(prefix):
            rest = path[len(prefix) :]
            match = _VERSION_DOC_RE.match(rest)
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def _read(self, kind: str, name: str, version: int) -> dict[str, Any] | None:
        path = f"{_SECTIONS[kind]}/{name}/{version:08d}.json"
        raw = self.store.get_doc(path)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StepflowError(
                f"registry document {path} in {self.store.uri} is not valid JSON ({exc}); "
                f"restore it from a backup or delete it"
            ) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StepflowError(
                f"registry document {path} in {self.store.uri} has an unknown format "
                f"(written by another stepflow version?)"
            )
        return data

    def _names(self, kind: str) -> list[str]:
        names = set()
        for path in self.store.list_docs(_SECTIONS[kind]):
            parts = path.split("/")
            if len(parts) == 3 and _VERSION_DOC_RE.match(parts[2]):
                names.add(parts[1])
        return sorted(names)

    def _claim(
        self,
        kind: str,
        name: str,
        same: Callable[[dict[str, Any]], bool],
        build: Callable[[int], dict[str, Any]],
    ) -> tuple[dict[str, Any], bool]:
        """The latest version's document if ``same`` accepts it, else a new version's.

        :returns: ``(document, made_now)``.
        """
        for _ in range(_CLAIM_ATTEMPTS):
            numbers = self._numbers(kind, name)
            latest = numbers[-1] if numbers else 0
            if latest:
                current = self._read(kind, name, latest)
                if current is not None and same(current):
                    return current, False
            data = build(latest + 1)
            path = f"{_SECTIONS[kind]}/{name}/{latest + 1:08d}.json"
            payload = json.dumps(data, indent=1, sort_keys=True).encode()
            with writing(f"{self.store.uri}/{path}", f"version {latest + 1} of {kind} {name!r}"):
                made = self.store.put_doc(path, payload, exclusive=True)
            if made:
                return data, True
            # Another process took that number first: look again (it may even have
            # registered the very same content).
        raise StepflowError(
            f"could not claim a new version number for {kind} {name!r} after "
            f"{_CLAIM_ATTEMPTS} attempts: too many processes are registering at once; try again"
        )

    def names(self, kind: str) -> list[str]:
        """The registered names of ``kind`` (``"data set"`` or ``"model"``), sorted."""
        return self._names(kind)

    def _not_found(self, kind: str, name: str) -> NotRegisteredError:
        names = self._names(kind)
        text = f"no {kind} named {name!r} is registered in {self.store.uri}"
        close = close_names(name, names)
        if close:
            text += f"; {did_you_mean(close)}"
        plural = "data sets" if kind == "data set" else "models"
        text += f"\nregistered {plural}: {', '.join(names) or 'none'}"
        return NotRegisteredError(text, kind=kind, name=name, available=names)

    def _version(self, kind: str, name: str, version: int | None) -> dict[str, Any]:
        numbers = self._numbers(kind, name)
        if not numbers:
            raise self._not_found(kind, name)
        wanted = numbers[-1] if version is None else check_version(version)
        data = self._read(kind, name, wanted) if wanted in numbers else None
        if data is None:
            listed = ", ".join(str(n) for n in numbers)
            raise NotRegisteredError(
                f"{kind} {name!r} has no version {wanted}; versions: {listed}",
                kind=kind,
                name=name,
                available=[str(n) for n in numbers],
            )
        return data

    # --- data sets ------------------------------------------------------------------------

    def dataset(self, name: str, version: int | None = None) -> DatasetVersion:
        """A data set's version (the latest when ``version`` is ``None``).

        :raises NotRegisteredError: no such data set or version.
        """
        check_name("data set", name)
        return DatasetVersion.from_dict(self._version("data set", name, version))

    def dataset_versions(self, name: str) -> list[DatasetVersion]:
        """Every version of a data set, oldest first."""
        check_name("data set", name)
        found = []
        for number in self._numbers("data set", name):
            data = self._read("data set", name, number)
            if data is not None:
                found.append(DatasetVersion.from_dict(data))
        if not found:
            raise self._not_found("data set", name)
        return found

    def datasets(self) -> list[DatasetVersion]:
        """The latest version of every data set, by name."""
        return [self.dataset(name) for name in self._names("data set")]

    def add_dataset(
        self,
        name: str,
        *,
        kind: str,
        content_hash: str,
        size: int,
        objects: Mapping[str, ArtifactRef],
        description: str | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> DatasetVersion:
        """Record a data-set version, unless the latest version holds the same content."""
        check_name("data set", name)
        if kind not in DATASET_KINDS:
            raise ValueError(f"unknown data-set kind {kind!r}")

        def build(version: int) -> dict[str, Any]:
            return DatasetVersion(
                name=name,
                version=version,
                kind=kind,
                content_hash=content_hash,
                size=size,
                created=time.time(),
                description=description,
                source=dict(source or {}),
                objects=dict(objects),
            ).to_dict()

        data, made = self._claim(
            "data set",
            name,
            lambda latest: latest["kind"] == kind and latest["content_hash"] == content_hash,
            build,
        )
        return attrs.evolve(DatasetVersion.from_dict(data), new=made)

    def add_content(
        self,
        name: str,
        content: DatasetContent,
        *,
        description: str | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> DatasetVersion:
        """``add_dataset`` of content already stored (``dataset_content``, ``table_content``)."""
        return self.add_dataset(
            name,
            kind=content.kind,
            content_hash=content.content_hash,
            size=content.size,
            objects=content.objects,
            description=description,
            source=source,
        )

    # --- models ---------------------------------------------------------------------------

    def aliases(self, name: str) -> dict[str, int]:
        """Alias → version of a model."""
        check_name("model", name)
        prefix = f"models/{name}/aliases/"
        found = {}
        for path in self.store.list_docs(prefix):
            alias = path[len(prefix) :].removesuffix(".json")
            raw = self.store.get_doc(path)
            if raw is None or not ALIAS_RE.match(alias):
                continue
            try:
                found[alias] = int(json.loads(raw)["version"])
            except (ValueError, KeyError, TypeError):
                continue  # a damaged alias document points nowhere
        return dict(sorted(found.items()))

    def _model(self, data: dict[str, Any], aliases: Mapping[str, int]) -> ModelVersion:
        version = int(data["version"])
        return ModelVersion.from_dict(data, [a for a, v in aliases.items() if v == version])

    def model(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> ModelVersion:
        """A model's version: by ``version``, by ``alias``, or the latest.

        :raises NotRegisteredError: no such model, version or alias.
        """
        check_name("model", name)
        if version is not None and alias is not None:
            raise UsageError(
                f"model {name!r}: give a version or an alias, not both "
                f"(version={version!r}, alias={alias!r})"
            )
        aliases = self.aliases(name)
        if alias is not None and alias != "latest":
            if not isinstance(alias, str) or alias not in aliases:
                if not self._numbers("model", name):
                    raise self._not_found("model", name)
                listed = ", ".join(f"{a} (v{v})" for a, v in aliases.items()) or "none"
                raise NotRegisteredError(
                    f"model {name!r} has no alias {alias!r}; aliases: {listed}\n"
                    f"set it with `stepflow models alias {name} {alias} VERSION` or "
                    f"stepflow.models.set_alias({name!r}, {alias!r}, VERSION)",
                    kind="model",
                    name=name,
                    available=list(aliases),
                )
            version = aliases[alias]
        return self._model(self._version("model", name, version), aliases)

    def model_versions(self, name: str) -> list[ModelVersion]:
        """Every version of a model, oldest first."""
        check_name("model", name)
        aliases = self.aliases(name)
        found = []
        for number in self._numbers("model", name):
            data = self._read("model", name, number)
            if data is not None:
                found.append(self._model(data, aliases))
        if not found:
            raise self._not_found("model", name)
        return found

    def models(self) -> list[ModelVersion]:
        """The latest version of every model, by name."""
        return [self.model(name) for name in self._names("model")]

    def add_model(
        self,
        name: str,
        *,
        content_hash: str,
        obj: ArtifactRef,
        type_name: str,
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        description: str | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Record a model version, unless the latest one has the same content, metrics and
        tags."""
        check_name("model", name)
        metrics, tags = dict(metrics), dict(tags)

        def same(latest: dict[str, Any]) -> bool:
            return (
                latest["content_hash"] == content_hash
                and latest.get("metrics", {}) == metrics
                and latest.get("tags", {}) == tags
            )

        def build(version: int) -> dict[str, Any]:
            return ModelVersion(
                name=name,
                version=version,
                content_hash=content_hash,
                size=obj.size,
                created=time.time(),
                description=description,
                metrics=metrics,
                tags=tags,
                source=dict(source or {}),
                object=obj,
                type=type_name,
            ).to_dict()

        data, made = self._claim("model", name, same, build)
        return attrs.evolve(self._model(data, self.aliases(name)), new=made)

    def set_alias(self, name: str, alias: str, version: int) -> tuple[ModelVersion, int | None]:
        """Point ``alias`` at ``version``; returns that version and the alias's old version."""
        check_alias(alias)
        self.model(name, check_version(version))  # refuses an unknown model or version
        previous = self.aliases(name).get(alias)
        payload = json.dumps({"version": version, "set": time.time()}).encode()
        path = f"models/{name}/aliases/{alias}.json"
        with writing(f"{self.store.uri}/{path}", f"alias {alias!r} of model {name!r}"):
            self.store.put_doc(path, payload)
        return self.model(name, version), previous

    # --- pins -----------------------------------------------------------------------------

    def pinned(self) -> set[str]:
        """Every object name a registered version needs."""
        names: set[str] = set()
        for kind in _SECTIONS:
            for name in self._names(kind):
                for number in self._numbers(kind, name):
                    data = self._read(kind, name, number)
                    if data is None:
                        continue
                    if kind == "model":
                        names.add(data["object"]["name"])
                    else:
                        names.update(ref["name"] for ref in data["objects"].values())
        return names
