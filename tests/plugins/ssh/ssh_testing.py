"""Helpers of the SSH backend's tests: a real sshd on loopback, processes, TOML tables."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


class SSHServer:
    """One ``sshd -D`` on 127.0.0.1, and what a client needs to reach it."""

    def __init__(self, folder: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.folder = folder
        self.host = "127.0.0.1"
        self.port = port
        self.proc = proc
        #: the client's private key, whose public half the server authorizes
        self.identity = folder / "id_ed25519"
        #: a known_hosts file that trusts the server's host key
        self.known_hosts = folder / "known_hosts"
        self.host_pub = (folder / "host_ed25519.pub").read_text().strip()
        #: the host's Python: this interpreter, importing the stepflow under test
        self.python = host_python(folder)

    def options(self, workdir: Path | str, **extra: object) -> dict[str, object]:
        """The backend table for this server (``python`` is the test session's own)."""
        table: dict[str, object] = {
            "plugin": "ssh",
            "host": self.host,
            "port": self.port,
            "identity": str(self.identity),
            "python": str(self.python),
            "workdir": str(workdir),
            "connect_timeout": 10,
            "ssh_options": {
                "UserKnownHostsFile": str(self.known_hosts),
                "GlobalKnownHostsFile": "/dev/null",
            },
        }
        table.update(extra)
        return table

    def pyproject(self, workdir: Path | str, name: str = "gpu", **extra: object) -> str:
        """``pyproject.toml`` text configuring backend ``name`` on this server."""
        return toml_tables({f"tool.stepflow.backends.{name}": self.options(workdir, **extra)})


def host_python(folder: Path) -> Path:
    """A Python for the "host" that imports the same stepflow as the tests do.

    The tests' interpreter may have another stepflow installed (an editable install of
    another checkout) than the one under test, found through ``PYTHONPATH``, which ``ssh``
    does not pass on. The wrapper puts a folder holding only ``stepflow`` on the path: the
    host sees no other file of this checkout.
    """
    import stepflow

    root = folder / "host-site"
    root.mkdir(exist_ok=True)
    link = root / "stepflow"
    if not link.exists():
        link.symlink_to(Path(stepflow.__file__).resolve().parent, target_is_directory=True)
    wrapper = folder / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{root}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def toml_tables(tables: dict[str, dict[str, object]]) -> str:
    """A small TOML writer for the tests' tables (strings, numbers, bools, lists, tables)."""
    import json
    import re

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a TOML basic string is JSON's string syntax
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(v)

    out = []
    for name, table in tables.items():
        out.append(f"[{name}]")
        out += [f"{key(k)} = {value(v)}" for k, v in table.items()]
        out.append("")
    return "\n".join(out)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "stepflow-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


def start_sshd(folder: Path, host_key: Path | None = None) -> SSHServer:
    """Start ``sshd`` with a host key (new unless given) trusted by ``folder/known_hosts``."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    if host_key is None:
        host_key = folder / "host_ed25519"
        _keygen(host_key)
    else:
        shutil.copy(host_key, folder / "host_ed25519")
        shutil.copy(f"{host_key}.pub", folder / "host_ed25519.pub")
        host_key = folder / "host_ed25519"
        os.chmod(host_key, 0o600)
    if not (folder / "id_ed25519").exists():
        _keygen(folder / "id_ed25519")
    (folder / "authorized_keys").write_text((folder / "id_ed25519.pub").read_text())
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                # The fixture's folders live under /tmp, which is world-writable.
                "StrictModes no",
                "UsePAM no",
                "MaxSessions 200",
                "MaxStartups 200",
                f"AllowUsers {_user()}",
                "",
            ]
        )
    )
    pub = (folder / "host_ed25519.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = open(folder / "sshd.log", "wb")
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config), "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(folder / 'sshd.log').read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return SSHServer(folder, port, proc)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"sshd did not listen: {(folder / 'sshd.log').read_text()}")


def stop_sshd(server: SSHServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def missing_ssh() -> str | None:
    """Why this machine cannot run the real sshd tests, or ``None``."""
    if not os.path.exists(SSHD):
        return "no OpenSSH server: apt-get install openssh-server"
    for tool in ("ssh", "ssh-keygen", "ssh-keyscan"):
        if shutil.which(tool) is None:
            return f"no {tool}: apt-get install openssh-client"
    if os.geteuid() != 0 and not os.access("/run/sshd", os.W_OK):
        return "sshd needs /run/sshd (run the tests as root, or create it)"
    return None


def masters() -> list[int]:
    """The pids of the SSH backend's ControlMaster processes on this machine.

    A master started with ControlPersist goes to the background and renames itself
    ``ssh: CONTROL_PATH [mux]``; the backend's control paths are ``stepflow-ssh-*`` folders
    in the temporary folder.
    """
    import tempfile

    prefix = f"ssh: {tempfile.gettempdir()}/stepflow-ssh-".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(prefix) and b"[mux]" in cmdline:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for(predicate, timeout: float = 60.0, what: str = "a condition") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
