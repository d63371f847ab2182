"""stepflow-docker: run steps in Docker containers built from a declared environment.

Configure a backend with ``plugin = "docker"`` in ``[tool.stepflow.backends.NAME]`` and send
steps to it with ``@step(backend="NAME")`` or ``--backend STEP=NAME``; a step's
``env={"image": ..., "requirements": [...], "apt": [...]}`` overrides the backend's
environment. See ``docs/how-to/run-steps-in-docker.md``.
"""

from __future__ import annotations

from typing import Any

import stepflow

__all__ = ["stepflow_backend_types"]


@stepflow.hookimpl
def stepflow_backend_types() -> dict[str, Any]:
    # Imported here: loading the plugin (every stepflow command does) stays cheap.
    from stepflow_docker.backend import DockerBackend

    return {"docker": DockerBackend}
