"""Cache keys: what a step's result depends on, hashed (DESIGN.md section 2).

A key combines the step's code fingerprint, the content hashes of its inputs, its
parameter values (secrets through a keyed hash) and its environment. Each part is kept by
name, so ``stepflow explain`` can say exactly which one changed.
"""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._authoring.step import StepSpec
from stepflow._storage.fingerprint import fingerprint
from stepflow._storage.hashing import HASH_ENCODING_VERSION, hash_strings, hash_value

if TYPE_CHECKING:
    from stepflow._planning.plan import Plan
    from stepflow._storage.datastore import Datastore

__all__ = ["CacheKey", "describe_value", "environment", "item_keys", "make_key", "plan_key"]


@attrs.frozen
class CacheKey:
    """A step's cache key and the named parts it was made from."""

    digest: str
    #: ``{"code": {...}, "inputs": {...}, "params": {...}, "env": {...}}``
    components: Mapping[str, Mapping[str, str]]


@functools.cache
def _python() -> str:
    major, minor, _ = platform.python_version_tuple()
    return f"{platform.python_implementation()} {major}.{minor}"


def environment(serializers: Any, backend_env: Mapping[str, str], spec: StepSpec) -> dict[str, str]:
    """The environment items a result depends on."""
    env = {
        "python": _python(),
        # How values are encoded for hashing: when it changes on purpose (version 2 told -0.0
        # from 0.0), a result stored under an old key may answer for a value it was not made
        # from, so every old key must miss.
        "hashing": str(HASH_ENCODING_VERSION),
        "serializers": ",".join(f"{s.name}:{s.version}" for s in serializers),
    }
    env.update({f"backend:{k}": str(v) for k, v in backend_env.items()})
    if spec.options.foreach is not None:
        # A fan-out's result is the list of per-item results, not the function of the whole
        # list: the two must never share a key.
        env["foreach"] = spec.options.foreach
    for name, value in sorted(spec.options.env.items()):
        env[f"env:{name}"] = json.dumps(value, sort_keys=True, default=str)
    return env


def describe_value(value: Any, limit: int = 80) -> str:
    """A short readable form of a parameter value, for ``explain``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def make_key(
    spec: StepSpec,
    *,
    inputs: Mapping[str, str],
    params: Mapping[str, Any],
    secret_params: frozenset[str],
    env: Mapping[str, str],
    secret_key: bytes | None,
    code_cache: Path | None = None,
) -> CacheKey:
    """The cache key of ``spec`` given its inputs' content hashes and its parameter values.

    :param code_cache: where code analysis is kept between processes (see ``fingerprint``).
    """
    code = fingerprint(spec.func, cache_dir=code_cache)
    param_hashes = {}
    for name, value in params.items():
        digest = hash_value(value)
        if name in secret_params:
            # A keyed hash: without the store's key, a cache key cannot be used to guess
            # the secret offline.
            assert secret_key is not None
            # Imported here: hashlib loads OpenSSL (about 8 ms), which a run without secret
            # parameters never needs.
            import hashlib

            digest = hashlib.blake2b(digest.encode(), key=secret_key, digest_size=16).hexdigest()
        param_hashes[name] = digest
    components = {
        "code": {"digest": code.digest, **dict(code.parts)},
        "inputs": dict(sorted(inputs.items())),
        "params": dict(sorted(param_hashes.items())),
        "env": dict(sorted(env.items())),
        "outputs": {"names": ",".join(p.name for p in spec.outputs)},
    }
    return CacheKey(digest=_digest(components), components=components)


def _digest(components: Mapping[str, Mapping[str, str]]) -> str:
    # hash_value's digest of this tuple of strs, made in one call (it is made for every step
    # of every run), and remembered: a rerun in the same process asks for the same tuples.
    parts = (
        components["code"]["digest"],
        tuple(components["inputs"].items()),
        tuple(components["params"].items()),
        tuple(components["env"].items()),
        components["outputs"]["names"],
    )
    digest = _DIGESTS.get(parts)
    if digest is None:
        if len(_DIGESTS) >= _DIGESTS_MAX:
            _DIGESTS.clear()
        digest = _DIGESTS[parts] = hash_strings(parts)
    return digest


def item_keys(key: CacheKey, foreach: str) -> Callable[[str], CacheKey]:
    """The keys of the items of a fan-out step whose whole key is ``key``: a function from
    an item's content hash to its key.

    An item's key holds the same parts as the step's, with the item's content hash as input
    ``foreach`` instead of the whole list's. So it depends on the item's content only, not
    on its place in the list: editing one item, adding one or reordering them leaves every
    other item's key unchanged. The parts other than the item are hashed once for all items.
    """
    template = {**key.components, "inputs": {**key.components["inputs"], foreach: ""}}
    base = _digest(template)
    shared = template["inputs"]

    def make(item_hash: str) -> CacheKey:
        inputs = dict(shared)
        inputs[foreach] = item_hash
        return CacheKey(
            digest=hash_strings(("foreach-item", base, item_hash)),
            components={**template, "inputs": inputs},
        )

    return make


#: key digests by the tuple of strs they hash (a pure function, so never stale)
_DIGESTS: dict[tuple[Any, ...], str] = {}
_DIGESTS_MAX = 8192


def plan_key(
    plan: Plan,
    name: str,
    *,
    inputs: Mapping[str, str],
    serializers: Any,
    backend_env: Mapping[str, str],
    home: Path,
    store: Datastore,
) -> CacheKey:
    """The key of step ``name`` of ``plan``, given its inputs' content hashes.

    Shared by the run loop and ``stepflow explain``, so both compute the very same key.
    ``Secret`` parameters are hashed with ``store``'s key, so every home sharing the store
    makes the same keys.
    """
    spec = plan.dag.steps[name]
    params = plan.step_params[name]
    secret = frozenset(plan.secret_params & set(params))
    return make_key(
        spec,
        inputs=inputs,
        params=params,
        secret_params=secret,
        env=environment(serializers, backend_env, spec),
        secret_key=store.secret_key() if secret else None,
        code_cache=home / "fingerprints",
    )
