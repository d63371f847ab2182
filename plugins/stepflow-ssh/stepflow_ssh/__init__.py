"""stepflow-ssh: run steps on remote hosts (GPU machines) over SSH.

Configure a host as a named backend and send steps to it::

    [tool.stepflow.backends.gpu-box]
    plugin = "ssh"
    host = "gpu1.internal"
    python = "/opt/venv/bin/python"
    gpus = [0, 1]

    @step(backend="gpu-box", resources={"gpus": 1})
    def model(train: pd.DataFrame) -> Model: ...

The transport is the system OpenSSH client, so ``~/.ssh/config``, the agent, ProxyJump and
``known_hosts`` work as they do for ``ssh`` itself. See
``docs/how-to/run-steps-on-a-gpu-host.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import stepflow

if TYPE_CHECKING:
    from stepflow_ssh._backend import SSHBackend

__all__ = ["SSHBackend"]


def __getattr__(name: str) -> Any:
    if name == "SSHBackend":
        from stepflow_ssh._backend import SSHBackend

        return SSHBackend
    raise AttributeError(f"module 'stepflow_ssh' has no attribute {name!r}")


@stepflow.hookimpl
def stepflow_backend_types() -> dict[str, Any]:
    # Imported here: loading the plugin (every stepflow command does) stays cheap, and a
    # fully cached rerun imports none of the step machinery.
    from stepflow_ssh._backend import SSHBackend

    return {"ssh": SSHBackend}
