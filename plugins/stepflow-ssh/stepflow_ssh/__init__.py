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

import stepflow
from stepflow_ssh._backend import SSHBackend

__all__ = ["SSHBackend"]


@stepflow.hookimpl
def stepflow_backend_types() -> dict[str, type[SSHBackend]]:
    return {"ssh": SSHBackend}
