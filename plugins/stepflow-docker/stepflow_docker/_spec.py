"""The backend's options and a step's environment spec, validated before anything runs.

``[tool.stepflow.backends.NAME]`` with ``plugin = "docker"`` gives the defaults; a step's
``env={"image": ..., "requirements": [...], "apt": [...]}`` overrides them for that step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from stepflow.errors import BackendUnavailableError

__all__ = ["DEFAULT_IMAGE", "ENV_KEYS", "EnvSpec", "Options", "parse_options", "step_spec"]

DEFAULT_IMAGE = "python:3.11-slim"
#: the keys of ``@step(env=...)`` this backend honours
ENV_KEYS = frozenset({"image", "requirements", "apt"})
_PULL = ("never", "missing", "always")
_OPTIONS = frozenset(
    {
        "image",
        "requirements",
        "apt",
        "pull",
        "gpus",
        "cpus",
        "memory",
        "network",
        "environment",
        "stop_timeout",
    }
)
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]*(:[a-z0-9]+)?(=[A-Za-z0-9.+:~\-]+)?$")


@attrs.frozen
class EnvSpec:
    """What an environment image is built from (before the base image is resolved)."""

    #: the base image's name, e.g. ``python:3.11-slim``
    image: str
    #: pip requirement lines, in order
    requirements: tuple[str, ...] = ()
    #: Debian packages installed with apt-get
    apt: tuple[str, ...] = ()


@attrs.frozen
class Options:
    """A docker backend's validated options."""

    env: EnvSpec
    pull: str = "missing"
    #: ``None`` (no GPU), ``"all"``, or device ids
    gpus: str | tuple[str, ...] | None = None
    cpus: float | None = None
    #: bytes
    memory: int | None = None
    network: str | None = None
    environment: Mapping[str, str] = attrs.field(factory=dict)
    #: seconds between SIGTERM and SIGKILL when a step is stopped (timeout, cancel)
    stop_timeout: float = 10.0


def _bad(backend: str, what: str) -> BackendUnavailableError:
    return BackendUnavailableError(f"backend {backend!r} (plugin docker): {what}")


def parse_options(backend: str, options: Mapping[str, Any], rootdir: Path) -> Options:
    """Validate ``[tool.stepflow.backends.NAME]``; every bad value names the option and a fix.

    :raises BackendUnavailableError: an unknown option or a bad value.
    """
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise _bad(
            backend,
            f"unknown option(s) {', '.join(unknown)}; the options are "
            f"{', '.join(sorted(_OPTIONS))} (see docs/how-to/run-steps-in-docker.md)",
        )
    where = f"[tool.stepflow.backends.{backend}]"
    image = options.get("image", DEFAULT_IMAGE)
    if not isinstance(image, str) or not image.strip():
        raise _bad(backend, f'{where} image must be an image name such as "{DEFAULT_IMAGE}"')
    env = EnvSpec(
        image=image.strip(),
        requirements=requirements_of(
            options.get("requirements", ()), rootdir, f"{where} requirements"
        ),
        apt=apt_of(options.get("apt", ()), f"{where} apt"),
    )
    pull = options.get("pull", "missing")
    if pull not in _PULL:
        raise _bad(backend, f"{where} pull = {pull!r}: use one of {', '.join(map(repr, _PULL))}")
    gpus = options.get("gpus")
    if gpus is not None and gpus != "all":
        if isinstance(gpus, int | str) and not isinstance(gpus, bool):
            gpus = [gpus]
        if not isinstance(gpus, list | tuple) or not all(
            isinstance(g, int | str) and not isinstance(g, bool) for g in gpus
        ):
            raise _bad(backend, f'{where} gpus = {gpus!r}: use "all" or a list of device ids')
        gpus = tuple(str(g) for g in gpus)
    environment = options.get("environment", {})
    if not isinstance(environment, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) for k, v in environment.items()
    ):
        raise _bad(backend, f'{where} environment must be a table of strings, e.g. {{TZ = "UTC"}}')
    network = options.get("network")
    if network is not None and not (isinstance(network, str) and network):
        raise _bad(backend, f'{where} network must be a Docker network name ("none", "host")')
    stop_timeout = options.get("stop_timeout", 10.0)
    if (
        isinstance(stop_timeout, bool)
        or not isinstance(stop_timeout, int | float)
        or stop_timeout < 0
    ):
        raise _bad(backend, f"{where} stop_timeout must be a number of seconds >= 0")
    return Options(
        env=env,
        pull=pull,
        gpus=gpus,
        cpus=cpus_of(options.get("cpus"), f"{where} cpus"),
        memory=memory_of(options.get("memory"), f"{where} memory"),
        network=network,
        environment={k: str(v) for k, v in environment.items()},
        stop_timeout=float(stop_timeout),
    )


def step_spec(default: EnvSpec, env: Mapping[str, Any], rootdir: Path, step: str) -> EnvSpec:
    """The environment step ``step`` runs in: the backend's, overridden by its ``env``.

    :raises BackendUnavailableError: a bad value in the step's ``env``.
    """
    where = f"@step(env=...) of step {step!r}:"
    image = env.get("image", default.image)
    if not isinstance(image, str) or not image.strip():
        raise BackendUnavailableError(
            f'{where} image must be an image name such as "{DEFAULT_IMAGE}"'
        )
    return EnvSpec(
        image=image.strip(),
        requirements=(
            requirements_of(env["requirements"], rootdir, f"{where} requirements")
            if "requirements" in env
            else default.requirements
        ),
        apt=apt_of(env["apt"], f"{where} apt") if "apt" in env else default.apt,
    )


def requirements_of(value: Any, rootdir: Path, where: str) -> tuple[str, ...]:
    """Requirement lines from a list, or from a requirements file (a path string)."""
    if isinstance(value, str):
        path = rootdir / value
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BackendUnavailableError(
                f"{where} = {value!r}: cannot read {path} ({exc.strerror}); give a "
                f"requirements file relative to {rootdir}, or a list of requirements"
            ) from None
        lines = [line.split(" #")[0].strip() for line in text.splitlines()]
        return tuple(line for line in lines if line and not line.startswith("#"))
    if isinstance(value, list | tuple) and all(isinstance(r, str) and r.strip() for r in value):
        return tuple(r.strip() for r in value)
    raise BackendUnavailableError(
        f'{where} = {value!r}: give a list such as ["scikit-learn==1.5.2"] or the path of a '
        f"requirements file"
    )


def apt_of(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        raise BackendUnavailableError(
            f'{where} = {value!r}: give a list of Debian packages, e.g. ["libgomp1"]'
        )
    bad = [p for p in value if not _APT_NAME.match(p)]
    if bad:
        raise BackendUnavailableError(
            f"{where}: {', '.join(map(repr, bad))} is not a Debian package name"
        )
    return tuple(value)


def cpus_of(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise BackendUnavailableError(
            f"{where} = {value!r}: give a number of CPUs > 0, e.g. 2 or 0.5"
        )
    return float(value)


def memory_of(value: Any, where: str) -> int | None:
    """Bytes from ``"512m"``, ``"4GB"``, ``"2GiB"`` or a number of bytes."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _MEMORY.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise BackendUnavailableError(f'{where} = {value!r}: give a size such as "512m" or "4g"')
    scale = 1024 ** "bkmgt".index((match.group(2) or "b").lower())
    return int(float(match.group(1)) * scale)
