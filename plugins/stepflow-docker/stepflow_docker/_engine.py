"""The connection to the Docker engine, and what to say when there is none."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from stepflow.errors import BackendUnavailableError

if TYPE_CHECKING:
    import docker

__all__ = ["connect", "docker_errors"]


def connect(backend: str) -> docker.DockerClient:
    """A client of the engine ``DOCKER_HOST`` names (default: the local socket), checked.

    :raises BackendUnavailableError: the docker SDK is missing, or no engine answers; the
        message names ``DOCKER_HOST`` and how to start an engine.
    """
    try:
        import docker
    except ImportError:
        raise BackendUnavailableError(
            f"backend {backend!r} needs the docker SDK: pip install 'stepflow[docker]'"
        ) from None
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock (the default)"
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        raise BackendUnavailableError(
            f"backend {backend!r}: no Docker engine answers at DOCKER_HOST={host} "
            f"({type(exc).__name__}: {_short(exc)}). Start one (`sudo systemctl start docker`, "
            f"or `sudo dockerd &`), check that your user may use it (`docker info`; the "
            f"`docker` group), or set DOCKER_HOST to the engine's address"
        ) from None
    return client


def docker_errors() -> tuple[type[BaseException], ...]:
    """The exceptions the SDK and its HTTP transport raise."""
    import docker.errors
    import requests.exceptions

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:300] if text else "no answer"
