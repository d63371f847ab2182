"""Cache keys: what a step's result depends on, hashed (DESIGN.md section 2).

A key combines the step's code fingerprint, the content hashes of its inputs, its
parameter values (secrets through a keyed hash) and its environment. Each part is kept by
name, so ``stepflow explain`` can say exactly which one changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._authoring.step import StepSpec
from stepflow._storage.fingerprint import fingerprint
from stepflow._storage.hashing import hash_strings, hash_value
from stepflow._storage.home import make_private_dirs, make_private_file, shared_home

if TYPE_CHECKING:
    from stepflow._planning.plan import Plan

__all__ = ["CacheKey", "describe_value", "environment", "make_key", "plan_key", "secret_key"]


@attrs.frozen
class CacheKey:
    """A step's cache key and the named parts it was made from."""

    digest: str
    #: ``{"code": {...}, "inputs": {...}, "params": {...}, "env": {...}}``
    components: Mapping[str, Mapping[str, str]]


def secret_key(home: Path) -> bytes:
    """The per-home key for hashing secret parameters (made on first use, owner-only)."""
    path = home / "secret.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    make_private_dirs(home)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if shared_home():
            make_private_file(fd)  # the team's runs hash secrets with the same key
        os.write(fd, key)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return key


@functools.cache
def _python() -> str:
    major, minor, _ = platform.python_version_tuple()
    return f"{platform.python_implementation()} {major}.{minor}"


def environment(serializers: Any, backend_env: Mapping[str, str], spec: StepSpec) -> dict[str, str]:
    """The environment items a result depends on."""
    env = {
        "python": _python(),
        "serializers": ",".join(f"{s.name}:{s.version}" for s in serializers),
    }
    env.update({f"backend:{k}": str(v) for k, v in backend_env.items()})
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
    home_key: bytes | None,
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
            # A keyed hash: the key cannot be used to guess the secret offline.
            assert home_key is not None
            digest = hashlib.blake2b(digest.encode(), key=home_key, digest_size=16).hexdigest()
        param_hashes[name] = digest
    components = {
        "code": {"digest": code.digest, **dict(code.parts)},
        "inputs": dict(sorted(inputs.items())),
        "params": dict(sorted(param_hashes.items())),
        "env": dict(sorted(env.items())),
        "outputs": {"names": ",".join(p.name for p in spec.outputs)},
    }
    # hash_value's digest of this tuple of strs, made in one call (it is made for every step
    # of every run), and remembered: a rerun in the same process asks for the same tuples.
    parts = (
        code.digest,
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
    return CacheKey(digest=digest, components=components)


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
) -> CacheKey:
    """The key of step ``name`` of ``plan``, given its inputs' content hashes.

    Shared by the run loop and ``stepflow explain``, so both compute the very same key.
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
        home_key=secret_key(home) if secret else None,
        code_cache=home / "fingerprints",
    )
