"""The connection to one host: the system OpenSSH client, one ControlMaster per backend.

Every command is an argument list; the remote part is joined with ``shlex.join`` (each
argument quoted for the remote shell), so no value, path or name is ever read by a shell as
code. Options the user cannot override come first on the command line, where ``ssh`` takes
the first value it sees: ``BatchMode=yes`` (never a prompt), the host-key policy, the connect
timeout and the ControlMaster socket, in a folder only this user can enter.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from stepflow.errors import BackendError, BackendUnavailableError
from stepflow_ssh._options import SSHOptions

__all__ = ["Channel", "ConnectionLost", "RemoteError", "Transport"]

# Writes the agent into the workdir (once per content) with the host's Python; prints its path.
_INSTALL_AGENT = """\
import json, os, sys
work = os.path.abspath(os.path.expanduser(sys.argv[1]))
todo = []
path = work
while not os.path.isdir(path):
    todo.append(path)
    path = os.path.dirname(path)
for folder in reversed(todo):
    os.mkdir(folder, 0o700)
agent = os.path.join(work, sys.argv[2])
data = sys.stdin.buffer.read()
if not os.path.isfile(agent):
    tmp = agent + ".tmp-%d" % os.getpid()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, agent)
print(json.dumps(agent))
"""


class ConnectionLost(BackendError):
    """The SSH connection (or the agent at its other end) went away during a request."""


class RemoteError(BackendError):
    """The agent on the host could not do what was asked; the message says why."""


class Transport:
    """How to reach one host with ``ssh``, through one ControlMaster connection."""

    def __init__(self, options: SSHOptions, backend: str) -> None:
        self.options = options
        self.backend = backend
        # Owner-only (mkdtemp) and short, since a socket path has about 100 bytes at most.
        self.control_dir = tempfile.mkdtemp(prefix="stepflow-ssh-")
        #: every ``ssh`` command line this transport ran (tests check what they hold)
        self.commands: list[list[str]] = []
        self._lock = threading.Lock()

    # --- command lines -------------------------------------------------------------------

    def base_argv(self, *, master: bool = False) -> list[str]:
        """``ssh`` and its options, up to the destination.

        Commands go through the master's socket when it runs and connect directly when it
        does not (``ControlMaster=no``): only ``start_master`` makes a master, since a master
        started by a command would hold that command's output pipes open after it ends.
        """
        opts = self.options
        policy = "yes" if opts.host_key_policy == "strict" else "accept-new"
        argv = [
            "ssh",
            "-T",
            "-o", "BatchMode=yes",
            "-o", f"StrictHostKeyChecking={policy}",
            "-o", f"ConnectTimeout={max(1, round(opts.connect_timeout))}",
            "-o", f"ControlMaster={'yes' if master else 'no'}",
            "-o", f"ControlPath={self.control_dir}/%C",
            # Idles for a minute at most: a run killed with -9 leaves no connection behind.
            "-o", "ControlPersist=60",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if opts.port is not None:
            argv += ["-p", str(opts.port)]
        if opts.user is not None:
            argv += ["-l", opts.user]
        if opts.identity is not None:
            argv += ["-i", os.path.expanduser(opts.identity), "-o", "IdentitiesOnly=yes"]
        for option in opts.ssh_options:
            argv += ["-o", option]
        return argv

    def argv(self, remote: Sequence[str]) -> list[str]:
        """The command line that runs ``remote`` (an argument list) on the host."""
        return [*self.base_argv(), "--", self.options.host, shlex.join(remote)]

    def _record(self, argv: list[str]) -> None:
        with self._lock:
            self.commands.append(list(argv))

    # --- running -------------------------------------------------------------------------

    def run(
        self, remote: Sequence[str], *, data: bytes = b"", timeout: float | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        argv = self.argv(remote)
        self._record(argv)
        return subprocess.run(argv, input=data, capture_output=True, timeout=timeout)

    def master_running(self) -> bool:
        done = subprocess.run(
            [*self.base_argv(), "-O", "check", "--", self.options.host],
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    def start_master(self) -> None:
        """Start the ControlMaster unless it runs; raise with the reason.

        :raises BackendUnavailableError: unreachable host, refused login or a host key that
            is unknown or changed (with its fingerprint and the command to trust it).
        """
        with self._lock:
            if self.master_running():
                return
            # With a command (not -N) the master goes to the background once connected and
            # then honours ControlPersist: it ends a minute after its last session, so a run
            # killed with -9 leaves no connection behind for long.
            argv = [*self.base_argv(master=True), "--", self.options.host, "true"]
            self.commands.append(list(argv))
            timeout = self.options.connect_timeout
            # Its output goes to a file: the master lives on in the background, and would
            # hold a pipe open for as long.
            with tempfile.TemporaryFile() as err:
                try:
                    done = subprocess.run(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        timeout=timeout + 5,
                    )
                except subprocess.TimeoutExpired:
                    raise BackendUnavailableError(
                        f"backend {self.backend!r}: {self.where()} did not answer within "
                        f"{timeout:g}s (connect_timeout); check the host name, the network "
                        f"and that sshd runs there"
                    ) from None
                except FileNotFoundError:
                    raise BackendUnavailableError(
                        f"backend {self.backend!r}: no `ssh` command here; install the "
                        f"OpenSSH client (apt-get install openssh-client)"
                    ) from None
                err.seek(0)
                stderr = err.read().decode(errors="replace")
            if done.returncode:
                raise BackendUnavailableError(self.explain(stderr))

    def connect(self) -> None:
        """Start the master, then ``ssh HOST true`` within ``connect_timeout``."""
        self.start_master()
        try:
            done = self.run(["true"], timeout=self.options.connect_timeout + 5)
        except subprocess.TimeoutExpired:
            raise BackendUnavailableError(
                f"backend {self.backend!r}: `true` did not return from {self.where()} within "
                f"{self.options.connect_timeout:g}s"
            ) from None
        if done.returncode:
            raise BackendUnavailableError(self.explain(done.stderr.decode(errors="replace")))

    def install_agent(self, python: str, workdir: str, name: str, source: bytes) -> str:
        """Write the agent into ``workdir`` with the host's ``python``; return its path."""
        done = self.run(
            [python, "-c", _INSTALL_AGENT, workdir, name],
            data=source,
            timeout=self.options.connect_timeout + 60,
        )
        if done.returncode:
            err = done.stderr.decode(errors="replace").strip()
            if done.returncode == 127 or "not found" in err:
                raise BackendUnavailableError(
                    f"backend {self.backend!r}: there is no Python {python!r} on "
                    f"{self.where()} ({err.splitlines()[-1] if err else 'not found'}); set "
                    f'python = "/path/to/python3" in [tool.stepflow.backends.{self.backend}]'
                )
            raise BackendUnavailableError(
                f"backend {self.backend!r}: cannot write into workdir {workdir!r} on "
                f"{self.where()} with {python}: {_tail(err)}"
            )
        # JSON: the path may hold any character, a newline included.
        return str(json.loads(done.stdout.decode().strip().splitlines()[-1]))

    def channel(self, python: str, agent: str, workdir: str) -> Channel:
        argv = self.argv([python, agent, "serve", workdir])
        self._record(argv)
        return Channel(argv)

    def close(self) -> None:
        """Stop the ControlMaster and remove its folder."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [*self.base_argv(), "-O", "exit", "--", self.options.host],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
            )
        shutil.rmtree(self.control_dir, ignore_errors=True)

    # --- what went wrong -----------------------------------------------------------------

    def where(self) -> str:
        port = f" port {self.options.port}" if self.options.port else ""
        return f"host {self.options.host!r}{port}"

    def resolved(self) -> dict[str, str]:
        """What ``ssh -G`` makes of the host (its config applied): hostname, port, files."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [*self.base_argv(), "-G", "--", self.options.host],
                capture_output=True,
                timeout=10,
            )
            found: dict[str, str] = {}
            for line in done.stdout.decode(errors="replace").splitlines():
                key, _, value = line.partition(" ")
                found.setdefault(key.lower(), value)
            return found
        return {}

    def explain(self, stderr: str) -> str:
        """The message for a failed ``ssh``: what went wrong and how to fix it."""
        head = f"backend {self.backend!r}: "
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or (
            "Host key verification failed" in stderr and "known for" not in stderr
        ):
            return head + self._changed_key(stderr)
        if "Host key verification failed" in stderr or "host key is known" in stderr:
            return head + self._unknown_key()
        if "Permission denied" in stderr:
            user = f" as user {self.options.user!r}" if self.options.user else ""
            return head + (
                f"{self.where()} refused the login{user}: {_tail(stderr)}. Check `identity`, "
                f"your ssh-agent and the key in the host's authorized_keys (BatchMode: there "
                f"is never a password prompt)"
            )
        return head + (
            f"cannot reach {self.where()} within {self.options.connect_timeout:g}s: "
            f"{_tail(stderr)}. Check the host name and port, and that sshd runs there"
        )

    def _known_hosts(self, facts: dict[str, str]) -> str:
        files = facts.get("userknownhostsfile", "~/.ssh/known_hosts").split()
        return files[0] if files else "~/.ssh/known_hosts"

    def _key_name(self, facts: dict[str, str]) -> tuple[str, str, str]:
        host = facts.get("hostname", self.options.host)
        port = facts.get("port", str(self.options.port or 22))
        name = host if port == "22" else f"[{host}]:{port}"
        return host, port, name

    def _unknown_key(self) -> str:
        facts = self.resolved()
        host, port, name = self._key_name(facts)
        known = self._known_hosts(facts)
        prints = self.fingerprints(host, port)
        shown = "; ".join(prints) if prints else "(ssh-keyscan could not read it)"
        scan = f"ssh-keyscan -p {port} {shlex.quote(host)} >> {shlex.quote(known)}"
        return (
            f"the host key of {name} is unknown (not in {known}); refused "
            f'(host_key_policy = "strict"). The host offers {shown}. Compare it with the '
            f"host's own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` there), then "
            f'trust it with:\n    {scan}\nor set host_key_policy = "accept-new" to '
            f"accept a first key (a changed key is still refused)"
        )

    def _changed_key(self, stderr: str) -> str:
        facts = self.resolved()
        host, port, name = self._key_name(facts)
        known = self._known_hosts(facts)
        offered = re.findall(r"SHA256:[A-Za-z0-9+/=]+", stderr) or self.fingerprints(host, port)
        shown = ", ".join(offered) if offered else "(unknown)"
        fix = (
            f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(known)} && "
            f"ssh-keyscan -p {port} {shlex.quote(host)} >> {shlex.quote(known)}"
        )
        return (
            f"the host key of {name} has CHANGED since it was trusted in {known}: it now "
            f"offers {shown}. Someone may be intercepting the connection, or the host was "
            f'reinstalled; refused (also with host_key_policy = "accept-new"). If the '
            f"new key is right (ask the host's administrator), trust it with:\n    {fix}"
        )

    def fingerprints(self, host: str, port: str) -> list[str]:
        """The host's key fingerprints, as ``ssh-keyscan`` and ``ssh-keygen -l`` read them."""
        timeout = max(1, round(self.options.connect_timeout))
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            # The OpenSSH tools found on PATH, like ``ssh`` itself.
            scan = subprocess.run(
                ["ssh-keyscan", "-T", str(timeout), "-p", port, "--", host],  # noqa: S607
                capture_output=True,
                timeout=timeout + 5,
            )
            if scan.stdout:
                listed = subprocess.run(
                    ["ssh-keygen", "-l", "-f", "-"],  # noqa: S607
                    input=scan.stdout,
                    capture_output=True,
                    timeout=10,
                )
                prints = []
                for line in listed.stdout.decode(errors="replace").splitlines():
                    parts = line.split()
                    if len(parts) >= 2:
                        prints.append(f"{parts[-1].strip('()')} key {parts[1]}")
                return prints
        return []


class Channel:
    """One ``python AGENT serve`` session through the ControlMaster: requests in turn."""

    def __init__(self, argv: list[str]) -> None:
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )

    def call(
        self,
        op: str,
        payload: bytes | Iterable[bytes] = b"",
        *,
        size: int | None = None,
        sink: Any = None,
        **args: Any,
    ) -> tuple[dict[str, Any], bytes]:
        """Send one request; return the answer's header and payload.

        ``payload`` is bytes, or chunks adding up to ``size``. ``sink(header, reader)`` reads
        the answer's payload itself (for large files); then the returned bytes are empty.

        :raises ConnectionLost: the connection or the agent went away.
        :raises RemoteError: the agent answered with an error.
        """
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        if isinstance(payload, bytes):
            size, chunks = len(payload), [payload]
        else:
            assert size is not None
            chunks = payload
        try:
            stdin.write(json.dumps(dict(args, op=op, size=size)).encode() + b"\n")
            for chunk in chunks:
                stdin.write(chunk)
            stdin.flush()
            line = stdout.readline()
            if not line:
                raise EOFError
            header = json.loads(line)
            body = b""
            if sink is not None:
                sink(header, _Reader(stdout, int(header.get("size", 0))))
            elif header.get("size"):
                body = _Reader(stdout, int(header["size"])).read()
        except (OSError, EOFError, ValueError) as exc:
            why = self.why(exc)
            self.kill()
            raise ConnectionLost(why) from None
        if "error" in header:
            raise RemoteError(header["error"])
        return header, body

    def why(self, exc: BaseException) -> str:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)
        err = ""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            err = self._stderr.read().decode(errors="replace").strip()
        code = self.proc.poll()
        said = f": {_tail(err)}" if err else ""
        return f"the connection ended (ssh exited with {code}){said}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """End the session (the agent exits when its stdin closes)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_streams()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        with contextlib.suppress(subprocess.SubprocessError):
            self.proc.wait(timeout=5)
        self._close_streams()

    def _close_streams(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class _Reader:
    """Exactly ``size`` bytes of a stream."""

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self.stream = stream
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        chunks = []
        while n:
            chunk = self.stream.read(n)
            if not chunk:
                raise EOFError("the answer was cut short")
            chunks.append(chunk)
            n -= len(chunk)
            self.left -= len(chunk)
        return b"".join(chunks)

    def copy_to(self, path: Path, size: int) -> None:
        with open(path, "wb") as fh:
            while size:
                chunk = self.read(min(size, 1 << 20))
                fh.write(chunk)
                size -= len(chunk)


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
