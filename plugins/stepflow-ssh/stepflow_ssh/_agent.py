"""The remote half of the SSH backend: uploaded to the host and run by its Python.

It is a single file that imports only the standard library at start, so it runs on a host
where stepflow is not installed yet (``bootstrap = true``); the operations that verify hashes
or run a step import the host's stepflow. The backend starts it through ``ssh`` in three ways:

``python AGENT serve WORKDIR``
    Answer requests on stdin: one JSON line each (``{"op": ..., "size": N, ...}``, then ``N``
    bytes of payload), one JSON line back (``{"size": M, ...}`` or ``{"error": ...}``), then
    ``M`` bytes. Nothing from the local side is ever run by a shell: every name arrives inside
    a request, and paths are checked to stay inside ``WORKDIR``.
``python AGENT supervise ATTEMPT_DIR``
    The detached supervisor of one attempt (its own session, started by ``launch``): waits
    for GPU slots, starts the worker, records its process group and the attempt's status
    atomically, and kills the worker when the attempt is killed or its run stopped
    following it (the lease is stale).
``python AGENT work ATTEMPT_DIR``
    The worker: runs the pickled task with the host's stepflow and writes the result.

When the worker's Python is the agent's own, neither command starts an interpreter: the
agent forks a standby supervisor ahead of time (stepflow imported), which forks its worker at
once, and a launch hands the standby its attempt folder through a pipe.

The workdir's layout (all folders owner-only)::

    agent-<hash>.py            this file
    code/<snapshot id>/        code snapshots, read-only, one per hash
    store/objects/, store/refs the host's datastore (when the run's store is local)
    home/                      the stepflow home of remote workers
    gpus/<id>.lock             one lock file per lent device (flock)
    venvs/<key>/               bootstrapped virtualenvs
    attempts/<run>/<step>/<n>/ one folder per attempt: creating it is the claim
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, NoReturn

#: the states in which an attempt's supervisor has finished
FINAL = ("done", "killed", "orphaned", "failed")
_OBJECT_RE = re.compile(r"^[0-9a-f]{8,128}\.[a-z0-9_\-]{1,32}$")
_HASH_RE = re.compile(r"^[0-9a-f]{8,128}$")
_PART_RE = re.compile(r"^[A-Za-z0-9_.=+,@-]{1,200}$")
_CHUNK = 1 << 20
#: the most log text one poll returns per stream
_LOG_CHUNK = 256 * 1024


class AgentError(Exception):
    """A request that cannot be done; its message goes back to the local side."""


# --- small helpers -------------------------------------------------------------------------


def _private_dirs(path: str) -> None:
    """Make ``path`` and missing parents owner-only (each level this call creates)."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _live_texts(folder: str, offsets: Any) -> tuple[list[str], list[int] | None]:
    """New text of the worker's captured ``output/stdout`` and ``output/stderr`` from
    ``offsets`` (``None``: not asked for), cut after the last whole UTF-8 character."""
    if not isinstance(offsets, list | tuple) or len(offsets) != 2:
        return ["", ""], None
    texts, ends = [], []
    for i, stream in enumerate(("stdout", "stderr")):
        start = int(offsets[i])
        data = b""
        with contextlib.suppress(OSError), open(os.path.join(folder, "output", stream), "rb") as fh:
            fh.seek(start)
            data = fh.read(_LOG_CHUNK)
        # A character cut by the chunk's end waits for the next poll.
        for back in range(min(3, len(data)) + 1):
            try:
                text = data[: len(data) - back].decode("utf-8")
            except UnicodeDecodeError:
                continue
            data = data[: len(data) - back]
            break
        else:
            text = data.decode("utf-8", errors="replace")
        texts.append(text)
        ends.append(start + len(data))
    return texts, ends


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not reaped yet, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def machine_id() -> str:
    """Who this machine is: its systemd machine id, else its host name."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            with open(path) as fh:
                found = fh.read().strip()
            if found:
                return found
    return os.uname().nodename


def process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, Linux), or ``""``."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


# --- the request server --------------------------------------------------------------------


class Server:
    """Answers requests about one workdir."""

    def __init__(self, workdir: str) -> None:
        self.workdir = os.path.abspath(os.path.expanduser(workdir))
        _private_dirs(self.workdir)
        self.children: list[subprocess.Popen[bytes]] = []
        #: supervisors forked from this agent, until they end
        self.forked: list[int] = []
        #: a forked process waiting to supervise the next attempt: (pid, its pipe)
        self.standby: tuple[int, int] | None = None
        #: attempts are forked from this agent (their worker runs its Python)
        self.forking = False
        #: attempt folders were moved to ``trash`` and wait to be deleted
        self.trash = False

    def path(self, *parts: str) -> str:
        """A path inside the workdir; every part is a plain name (no ``/``, no ``..``)."""
        for part in parts:
            if not _PART_RE.match(part) or part in (".", ".."):
                raise AgentError(f"invalid name {part!r}")
        return os.path.join(self.workdir, *parts)

    def attempt(self, rel: str) -> str:
        parts = rel.split("/")
        if len(parts) != 4 or parts[0] != "attempts":
            raise AgentError(f"invalid attempt folder {rel!r}")
        return self.path(*parts)

    def object_path(self, name: str) -> str:
        if not _OBJECT_RE.match(name):
            raise AgentError(f"invalid object name {name!r}")
        return os.path.join(self.workdir, "store", "objects", name[:2], name[2:])

    # Each op takes the request and a reader of its payload, and returns the answer's header
    # and the chunks of its payload.

    def op_hello(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        import platform

        found: dict[str, str] = {}
        stepflow = None
        try:
            from stepflow._version import __version__ as stepflow
        except ImportError:
            pass
        if req.get("packages"):
            found = _installed()
        return {
            "workdir": self.workdir,
            "python": platform.python_version(),
            "executable": sys.executable,
            "stepflow": stepflow,
            "packages": found,
            "machine": machine_id(),
        }, ()

    def op_has_code(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        return {"present": os.path.isdir(self.path("code", _hash(req["id"])))}, ()

    def op_put_code(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        from stepflow._storage.hashing import hash_file
        from stepflow._storage.source import content_hash

        snapshot_id = _hash(req["id"])
        files: dict[str, str] = req["files"]
        final = self.path("code", snapshot_id)
        _private_dirs(os.path.dirname(final))
        tmp = self.path("code", f".tmp-{snapshot_id}-{os.getpid()}-{secrets.token_hex(4)}")
        os.mkdir(tmp, 0o700)
        try:
            _extract(payload, tmp)
            for rel, digest in files.items():
                full = os.path.join(tmp, rel)
                if os.path.islink(full) or not os.path.isfile(full):
                    continue  # links and files left out of the upload are not checked here
                if hash_file(full) != digest:
                    raise AgentError(f"the uploaded file {rel!r} does not match its hash")
            if req.get("check_id", True) and content_hash(files) != snapshot_id:
                raise AgentError("the uploaded snapshot's files do not make its id")
            # Read-only: steps share the snapshot, and one must not change another's code.
            for root, dirs, names in os.walk(tmp):
                for name in names:
                    full = os.path.join(root, name)
                    if not os.path.islink(full):
                        mode = os.stat(full).st_mode
                        os.chmod(full, 0o500 if mode & 0o100 else 0o400)
                for name in dirs:
                    os.chmod(os.path.join(root, name), 0o700)
            try:
                os.rename(tmp, final)
            except OSError:
                if not os.path.isdir(final):
                    raise
                _rmtree(tmp)  # another client uploaded the same snapshot meanwhile
        except BaseException:
            _rmtree(tmp)
            raise
        return {"path": final}, ()

    def op_missing(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        names = [n for n in req["names"] if not os.path.isfile(self.object_path(n))]
        return {"missing": names}, ()

    def op_put_objects(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        from stepflow._storage.hashing import hash_file

        bad = []
        for item in req["items"]:
            path = self.object_path(item["name"])
            _private_dirs(os.path.dirname(path))
            tmp = f"{os.path.dirname(path)}/.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    _copy(payload, fh, int(item["size"]))
                if hash_file(tmp) != item["digest"]:
                    bad.append(item["name"])
                    os.unlink(tmp)
                else:
                    os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        return {"damaged": bad}, ()

    def op_get_objects(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        paths = [self.object_path(n) for n in req["names"]]
        sizes = []
        for path in paths:
            try:
                sizes.append(os.stat(path).st_size)
            except FileNotFoundError:
                sizes.append(-1)
        return {"sizes": sizes, "size": sum(s for s in sizes if s > 0)}, _files(paths, sizes)

    def op_launch(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        folder = self.attempt(req["dir"])
        task = payload.read()
        _private_dirs(os.path.dirname(folder))
        try:
            os.mkdir(folder, 0o700)  # the claim: only one launch can make the folder
        except FileExistsError:
            return {"claimed": False, **self.wait_status(folder, {})}, ()
        _atomic_write(os.path.join(folder, "task.pkl"), task)
        _atomic_write(os.path.join(folder, "spec.json"), json.dumps(req["spec"]).encode())
        _atomic_write(os.path.join(folder, "client.json"), json.dumps(req["client"]).encode())
        _atomic_write(os.path.join(folder, "lease"), b"")
        if req["spec"].get("fork"):
            self.forking = True
            self._fork_supervisor(folder)
        else:
            self._start_supervisor(folder)
        # A short step is over within ``wait``: its status comes back with the launch.
        return {"claimed": True, **self.wait_status(folder, req, final=True)}, ()

    def _start_supervisor(self, folder: str) -> None:
        log = os.open(os.path.join(folder, "supervisor.log"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            # A session of its own: it outlives this connection, and a dropped connection's
            # hangup never reaches it.
            child = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "supervise", folder],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(log)
        self.children.append(child)

    def _fork_supervisor(self, folder: str) -> None:
        """Start the supervisor as a fork of this agent, which has stepflow imported already:
        a worker forked from it skips the interpreter's start and stepflow's imports (most
        of a step's cost on the host). A session of its own, as the ``supervise`` command's
        would be; this agent reaps it (``reap``) when it ends.

        The fork is made ahead: after each launch the agent forks a standby that waits on a
        pipe for the next attempt's folder, so a launch only writes to that pipe.
        """
        standby, self.standby = self.standby, None
        if standby is None:
            standby = self._fork_standby()
        pid, pipe = standby
        os.write(pipe, folder.encode() + b"\n")
        os.close(pipe)
        self.forked.append(pid)

    def _fork_standby(self) -> tuple[int, int]:
        """A forked process, in a session of its own, that becomes the supervisor of the
        attempt whose folder it reads from its pipe (or exits when the pipe closes unused)."""
        _warm()
        read, write = os.pipe()
        pid = os.fork()
        if pid:
            os.close(read)
            return pid, write
        code = 1
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            # Nothing of the connection's pipes stays open here: the agent's end of the
            # session must close when the agent exits.
            os.closerange(3, read)
            os.closerange(read + 1, _max_fd())
            # The worker is forked ahead too, and waits for its attempt in turn.
            worker = _prefork_worker()
            data = b""
            while not data.endswith(b"\n"):
                chunk = os.read(read, 4096)
                if not chunk:
                    os._exit(0)  # the agent ended without a next attempt
                data += chunk
            os.close(read)
            folder = data[:-1].decode()
            log = os.open(os.path.join(folder, "supervisor.log"), os.O_WRONLY | os.O_CREAT, 0o600)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
            code = supervise(folder, forked=True, worker=worker)
        finally:
            os._exit(code)

    def prepare(self) -> None:
        """Between requests: fork the next standby supervisor, when forking is in use."""
        if self.standby is None and self.forking:
            self.standby = self._fork_standby()

    def reap(self) -> None:
        """Collect the forked supervisors that ended (no zombies while the agent runs)."""
        left = []
        for pid in self.forked:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if not done:
                left.append(pid)
        self.forked = left
        self.children = [c for c in self.children if c.poll() is None]

    def op_poll(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        """The attempt's status and new log text, once the status differs from ``known``,
        the log grew, or ``wait`` seconds passed; each poll renews the attempt's lease."""
        return self.wait_status(self.attempt(req["dir"]), req), ()

    def wait_status(self, folder: str, req: dict[str, Any], *, final: bool = False) -> Any:
        offsets = [int(o) for o in req.get("offsets", (0, 0))]
        started = time.monotonic()
        deadline = started + min(float(req.get("wait", 0)), 5.0)
        known = req.get("known")
        lease = os.path.join(folder, "lease")
        while True:
            status = _read_json(os.path.join(folder, "status.json"))
            if status is None:
                try:
                    age = time.time() - os.stat(folder).st_mtime
                except FileNotFoundError:
                    return {"status": {"state": "absent"}, "offsets": offsets}
                status = {"state": "claimed", "age": age}
            with contextlib.suppress(OSError):
                os.utime(lease)  # the run is still following this attempt
            texts = []
            for i, stream in enumerate(("stdout", "stderr")):
                data = b""
                path = os.path.join(folder, stream)
                if req.get("logs"):
                    with contextlib.suppress(OSError), open(path, "rb") as fh:
                        fh.seek(offsets[i])
                        data = fh.read(_LOG_CHUNK)
                offsets[i] += len(data)
                texts.append(data.decode("utf-8", errors="replace"))
            # What the step printed so far, as its worker captures it (``live``: the run shows
            # it while the step runs, and masks its secrets).
            live, live_offsets = _live_texts(folder, req.get("live"))
            state = status.get("state")
            changed = not final and state != known
            # New live text answers at most four times a second: a step that prints a lot
            # must not turn the poll into a stream of round trips.
            live_due = any(live) and time.monotonic() - started >= 0.25
            if changed or any(texts) or live_due or state in FINAL or time.monotonic() >= deadline:
                found = {"status": status, "offsets": offsets, "out": texts[0], "err": texts[1]}
                if live_offsets is not None:
                    found.update(live=live, live_offsets=live_offsets)
                return found
            # Quick at first (a short step ends within milliseconds), then gentler.
            time.sleep(0.002 if time.monotonic() - started < 0.2 else 0.01)

    def op_printed(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        """What the step printed (its captured output), and the worker's own stderr."""
        folder = self.attempt(req["dir"])
        paths = [
            os.path.join(folder, "output", "stdout"),
            os.path.join(folder, "output", "stderr"),
            os.path.join(folder, "stderr"),
        ]
        sizes = []
        for path in paths:
            try:
                sizes.append(min(os.stat(path).st_size, 4 << 20))
            except OSError:
                sizes.append(-1)
        return {"sizes": sizes, "size": sum(s for s in sizes if s > 0)}, _files(paths, sizes)

    def op_result(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        """The pickled result, or ``present: false`` when the worker wrote none."""
        folder = self.attempt(req["dir"])
        try:
            with open(os.path.join(folder, "result.pkl"), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return {"present": False, "size": 0}, ()
        return {"present": True, "size": len(data)}, (data,)

    def discard(self, folder: str) -> None:
        """Move an attempt's folder out of the way now; it is deleted after the answer."""
        trash = self.path("trash")
        _private_dirs(trash)
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder, os.path.join(trash, f"{os.getpid()}-{secrets.token_hex(6)}"))
        self.trash = True
        for parent in (os.path.dirname(folder), os.path.dirname(os.path.dirname(folder))):
            with contextlib.suppress(OSError):
                os.rmdir(parent)  # only when empty

    def op_kill(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        folder = self.attempt(req["dir"])
        return {"status": kill_attempt(folder, req.get("why", "killed"))}, ()

    def op_remove(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        self.discard(self.attempt(req["dir"]))
        return {}, ()

    def op_attempts(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        """Every attempt that may still run, with its client and the age of its lease."""
        found = []
        root = os.path.join(self.workdir, "attempts")
        now = time.time()
        for folder in _attempt_folders(root):
            status = _read_json(os.path.join(folder, "status.json")) or {"state": "claimed"}
            if status.get("state") in FINAL:
                continue
            try:
                lease_age = now - os.stat(os.path.join(folder, "lease")).st_mtime
            except OSError:
                lease_age = now - os.stat(folder).st_mtime
            found.append(
                {
                    "dir": os.path.relpath(folder, self.workdir),
                    "state": status.get("state"),
                    "client": _read_json(os.path.join(folder, "client.json")) or {},
                    "lease_age": lease_age,
                }
            )
        return {"attempts": found}, ()

    def op_bootstrap(self, req: dict[str, Any], payload: IO[bytes]) -> tuple[dict[str, Any], Any]:
        """Make (once per key, under a lock) a virtualenv with the uploaded stepflow wheel and
        the requirements."""
        key = _hash(req["key"])
        wheel_name = req["wheel"]
        if not re.match(r"^[A-Za-z0-9_.+-]+\.whl$", wheel_name):
            raise AgentError(f"invalid wheel name {wheel_name!r}")
        data = payload.read()
        venvs = self.path("venvs")
        _private_dirs(venvs)
        venv = os.path.join(venvs, key)
        python = os.path.join(venv, "bin", "python")
        with open(os.path.join(venvs, f"{key}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if os.path.exists(os.path.join(venv, ".stepflow-ready")):
                return {"python": python, "made": False}, ()
            _rmtree(venv)  # what a crashed bootstrap left
            wheels = self.path("wheels")
            _private_dirs(wheels)
            wheel = os.path.join(wheels, wheel_name)
            _atomic_write(wheel, data)
            make = [sys.executable, "-m", "venv"]
            if req.get("system_site_packages"):
                make.append("--system-site-packages")
            steps = [
                [*make, venv],
                [python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                 wheel, *req.get("requirements", ())],
            ]  # fmt: skip
            for argv in steps:
                done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
                if done.returncode:
                    tail = (done.stdout + done.stderr).decode(errors="replace")[-3000:]
                    _rmtree(venv)
                    raise AgentError(f"`{' '.join(argv)}` failed:\n{tail}")
            _atomic_write(os.path.join(venv, ".stepflow-ready"), b"")
        return {"python": python, "made": True}, ()

    def serve(self, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        while True:
            line = stdin.readline()
            if not line:
                return
            req = json.loads(line)
            payload = _Limited(stdin, int(req.get("size", 0)))
            chunks: Any = ()
            try:
                op = getattr(self, f"op_{req['op']}", None)
                if op is None:
                    raise AgentError(f"unknown operation {req['op']!r}")
                header, chunks = op(req, payload)
            except Exception as exc:
                header = {"error": f"{type(exc).__name__}: {exc}"}
            payload.drain()
            header.setdefault("size", 0)
            stdout.write(json.dumps(header).encode() + b"\n")
            for chunk in chunks:
                stdout.write(chunk)
            stdout.flush()
            self.reap()
            self.prepare()
            if self.trash:
                # After the answer: deleting is not on the step's path.
                self.trash = False
                trash = self.path("trash")
                for name in os.listdir(trash):
                    _rmtree(os.path.join(trash, name))


class _Limited:
    """The payload of one request: at most ``size`` bytes of the stream."""

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self.stream = stream
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        data = self.stream.read(n) if n else b""
        if n and len(data) < n:
            raise EOFError("the request's payload was cut short")
        self.left -= len(data)
        return data

    def drain(self) -> None:
        while self.left:
            self.read(min(self.left, _CHUNK))


def _extract(stream: Any, dest: str) -> None:
    """Unpack a tar stream of files and links into ``dest``, refusing any name or link that
    would lead outside it (absolute, ``..``) and any other kind of member, whatever the
    archive says (``tarfile``'s own filters are missing from older Pythons)."""
    real_dest = os.path.realpath(dest)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = member.name
            parts = name.split("/")
            if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in name:
                raise AgentError(f"refused the archive member {name!r}")
            parent = os.path.join(dest, *parts[:-1])
            os.makedirs(parent, mode=0o700, exist_ok=True)
            real_parent = os.path.realpath(parent)
            if os.path.commonpath([real_parent, real_dest]) != real_dest:
                raise AgentError(f"refused {name!r}: its folder leads outside the snapshot")
            target = os.path.join(real_parent, parts[-1])
            if member.isreg():
                source = tar.extractfile(member)
                assert source is not None
                mode = 0o700 if member.mode & 0o100 else 0o600
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                with os.fdopen(os.open(target, flags, mode), "wb") as fh:
                    shutil.copyfileobj(source, fh)
            elif member.issym():
                link = member.linkname
                inside = os.path.normpath(os.path.join(*parts[:-1], link) if parts[:-1] else link)
                if link.startswith("/") or inside == ".." or inside.startswith("../"):
                    continue  # a link leading outside the snapshot is left out
                os.symlink(link, target)
            else:
                raise AgentError(f"refused {name!r}: only files and links are unpacked")


def _copy(src: IO[bytes] | _Limited, dst: IO[bytes], size: int) -> None:
    while size:
        chunk = src.read(min(size, _CHUNK))
        if not chunk:
            raise EOFError("the payload was cut short")
        dst.write(chunk)
        size -= len(chunk)


def _files(paths: list[str], sizes: list[int]) -> Iterator[bytes]:
    for path, size in zip(paths, sizes, strict=True):
        if size <= 0:
            continue
        with open(path, "rb") as fh:
            left = size
            while left:
                chunk = fh.read(min(left, _CHUNK))
                if not chunk:  # shrank meanwhile: keep the promised size
                    chunk = b"\0" * left
                yield chunk
                left -= len(chunk)


def _hash(value: str) -> str:
    if not isinstance(value, str) or not _HASH_RE.match(value):
        raise AgentError(f"invalid hash {value!r}")
    return value


def _rmtree(path: str) -> None:
    def writable(func: Any, target: str, exc: Any) -> None:
        # Snapshot files are read-only; their folder is not, so they can go.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            func(target)

    shutil.rmtree(path, onexc=writable) if sys.version_info >= (3, 12) else shutil.rmtree(
        path, onerror=writable
    )


def _attempt_folders(root: str) -> Iterator[str]:
    if not os.path.isdir(root):
        return
    for run in sorted(os.listdir(root)):
        run_dir = os.path.join(root, run)
        with contextlib.suppress(OSError):
            for step in sorted(os.listdir(run_dir)):
                step_dir = os.path.join(run_dir, step)
                with contextlib.suppress(OSError):
                    for attempt in sorted(os.listdir(step_dir)):
                        yield os.path.join(step_dir, attempt)


# --- one attempt ---------------------------------------------------------------------------


def write_status(folder: str, **status: Any) -> None:
    status["time"] = time.time()
    _atomic_write(os.path.join(folder, "status.json"), json.dumps(status).encode())


def kill_attempt(folder: str, why: str) -> dict[str, Any]:
    """Kill the attempt's worker (its whole process group) and wait for the final status."""
    if not os.path.isdir(folder):
        return {"state": "absent"}
    with contextlib.suppress(FileExistsError):
        _atomic_write(os.path.join(folder, "kill"), why.encode())
    deadline = time.monotonic() + 10
    while True:
        status = _read_json(os.path.join(folder, "status.json")) or {"state": "claimed"}
        if status.get("state") in FINAL:
            return status
        pgid = status.get("pgid")
        if isinstance(pgid, int):
            _killpg(pgid)
        supervisor = status.get("supervisor")
        gone = not isinstance(supervisor, int) or not _alive(supervisor)
        if (gone and status.get("state") != "claimed") or time.monotonic() > deadline:
            # Nobody is left to say it: the worker's group was killed above.
            if isinstance(supervisor, int):
                _killpg(supervisor)
            final = dict(status, state="killed", why=why)
            write_status(folder, **{k: v for k, v in final.items() if k != "time"})
            return final
        time.sleep(0.02)


_warmed: list[bool] = []


def _warm() -> None:
    """Import, once in the agent, what every worker needs, so forks inherit it."""
    if _warmed:
        return
    _warmed.append(True)
    import uuid  # noqa: F401

    import cloudpickle  # noqa: F401 - a step sent by value

    import stepflow.worker  # noqa: F401
    from stepflow._storage.serializers import builtin_serializers

    builtin_serializers()
    # What is imported now is shared with every fork; kept out of the collector's sight, the
    # forks' collections do not write to (and so copy) those pages.
    import gc

    gc.freeze()


def _installed() -> dict[str, str]:
    """Distribution name -> version of what this interpreter imports, read from the names
    of the ``*.dist-info`` folders (``NAME-VERSION.dist-info``): reading every METADATA file
    through ``importlib.metadata`` took seconds in a large environment."""
    found: dict[str, str] = {}
    for folder in sys.path:
        try:
            entries = os.listdir(folder or ".")
        except OSError:
            continue
        for entry in entries:
            if entry.endswith(".dist-info"):
                name, sep, version = entry[: -len(".dist-info")].partition("-")
                if sep:
                    # The first one on sys.path is the one imported.
                    found.setdefault(name.replace("_", "-").lower(), version)
    return found


def _max_fd() -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if 0 < soft < 65536 else 65536


class _Forked:
    """The parts of ``Popen`` the supervisor uses, for a forked worker."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _become(env: dict[str, str], cwd: str | None) -> None:
    """A forked child takes the attempt's environment and working folder."""
    os.environ.clear()
    os.environ.update(env)
    if cwd:
        os.chdir(cwd)


def _run_child(body: Callable[[], int]) -> NoReturn:
    """Run a forked child's ``body`` and end the process with its exit code, whatever
    happens: a forked child must never return into the agent's own loop."""
    code = 1
    try:
        code = body()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _fork_worker(folder: str, spec: dict[str, Any], env: dict[str, str], out: int, err: int,
                 watch: int, lifeline: int) -> _Forked:  # fmt: skip
    pid = os.fork()
    if pid:
        return _Forked(pid)

    def child() -> int:
        os.setsid()
        os.close(lifeline)
        _become(env, spec.get("cwd"))
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        return work(folder)

    _run_child(child)


class _Prepared:
    """A worker forked ahead, in a session of its own, waiting for its attempt."""

    def __init__(self, pid: int, go: int, watch: int, lifeline: int) -> None:
        self.pid = pid
        #: the pipe that sends it its attempt (closing it unused makes it exit)
        self.go = go
        #: the lifeline pipe: it holds the read end, its supervisor the write end
        self.watch = watch
        self.lifeline = lifeline

    def start(self, folder: str, env: dict[str, str], cwd: str | None) -> _Forked:
        env = dict(env, STEPFLOW_WORKER_LIFELINE=str(self.watch))
        os.write(self.go, json.dumps({"folder": folder, "env": env, "cwd": cwd}).encode())
        self.discard()
        return _Forked(self.pid)

    def discard(self) -> None:
        """Close this side's ends (once: a closed descriptor's number may be reused)."""
        for fd in (self.go, self.watch):
            if fd >= 0:
                os.close(fd)
        self.go = self.watch = -1


def _prefork_worker() -> _Prepared:
    watch, lifeline = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid:
        os.close(go_read)
        return _Prepared(pid, go_write, watch, lifeline)

    def child() -> int:
        # Its own group from the start: killing the group always reaches it.
        os.setsid()
        os.close(go_write)
        os.close(lifeline)
        data = b""
        while chunk := os.read(go_read, 1 << 16):
            data += chunk
        os.close(go_read)
        if not data:
            os._exit(0)  # its supervisor ended without starting it
        order = json.loads(data)
        folder = order["folder"]
        _become(order["env"], order.get("cwd"))
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        os.dup2(os.open(os.path.join(folder, "stdout"), flags, 0o600), 1)
        os.dup2(os.open(os.path.join(folder, "stderr"), flags, 0o600), 2)
        return work(folder)

    _run_child(child)


def supervise(folder: str, *, forked: bool = False, worker: _Prepared | None = None) -> int:
    try:
        return _supervise(folder, forked=forked, prepared=worker)
    finally:
        if worker is not None:
            worker.discard()


def _supervise(folder: str, *, forked: bool, prepared: _Prepared | None) -> int:
    spec = _read_json(os.path.join(folder, "spec.json"))
    if spec.get("env"):
        # The variables may be credentials (forward_env): kept in memory only from now on.
        kept = {k: v for k, v in spec.items() if k != "env"}
        _atomic_write(os.path.join(folder, "spec.json"), json.dumps(kept).encode())
    me = os.getpid()
    held: list[Any] = []
    locks: list[int] = []
    try:
        want = int(spec.get("gpus") or 0)
        if want:
            write_status(folder, state="waiting", supervisor=me)
            got = _wait_for_gpus(folder, spec, want)
            if got is None:
                return 0
            held, locks = got
        env = dict(os.environ)
        for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
            env.pop(name, None)
        env.update(spec.get("env") or {})
        if spec.get("lent"):
            # Only the devices this attempt holds: the others belong to other attempts.
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in held)
        env["STEPFLOW_SSH_ATTEMPT"] = folder
        # The worker dies if this supervisor dies (stepflow.worker's lifeline pipe).
        if prepared is not None:
            lifeline = prepared.lifeline
            worker: Any = prepared.start(folder, env, spec.get("cwd"))
            return _follow_worker(folder, spec, worker, lifeline, held)
        watch, lifeline = os.pipe()
        env["STEPFLOW_WORKER_LIFELINE"] = str(watch)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        out = os.open(os.path.join(folder, "stdout"), flags, 0o600)
        err = os.open(os.path.join(folder, "stderr"), flags, 0o600)
        try:
            if forked:
                worker = _fork_worker(folder, spec, env, out, err, watch, lifeline)
            else:
                worker = subprocess.Popen(
                    [spec["python"], os.path.abspath(__file__), "work", folder],
                    cwd=spec.get("cwd") or None,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    pass_fds=(watch,),
                )
        except OSError as exc:
            write_status(folder, state="failed", supervisor=me, why=f"cannot start: {exc}")
            return 1
        finally:
            os.close(watch)
            os.close(out)
            os.close(err)
        return _follow_worker(folder, spec, worker, lifeline, held)
    finally:
        for fd in locks:
            os.close(fd)


def _follow_worker(
    folder: str, spec: dict[str, Any], worker: Any, lifeline: int, held: list[Any]
) -> int:
    """Record the running worker, stop it when the attempt is killed or abandoned, and
    record how it ended."""
    write_status(folder, state="running", supervisor=os.getpid(), pgid=worker.pid, gpus=held)
    orphaned = False
    timeout = float(spec.get("orphan_timeout") or 120)
    check_at = 0.0
    begun = time.monotonic()
    while worker.poll() is None:
        if os.path.exists(os.path.join(folder, "kill")):
            _killpg(worker.pid)
        now = time.monotonic()
        if now >= check_at:
            check_at = now + 1
            if _lease_age(folder) > timeout:
                orphaned = True
                _killpg(worker.pid)
        # Quick at first: a short step's end is noticed within milliseconds.
        time.sleep(0.002 if now - begun < 0.2 else 0.02)
    # Whatever the step left running in its group goes with it.
    _killpg(worker.pid)
    os.close(lifeline)
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(folder, "task.pkl"))  # it holds the step's secrets
    state = "orphaned" if orphaned else "done"
    if os.path.exists(os.path.join(folder, "kill")):
        state = "killed"
    write_status(
        folder,
        state=state,
        supervisor=os.getpid(),
        pgid=worker.pid,
        gpus=held,
        code=worker.returncode,
    )
    return 0


def _lease_age(folder: str) -> float:
    try:
        return time.time() - os.stat(os.path.join(folder, "lease")).st_mtime
    except OSError:
        return 0.0


def _wait_for_gpus(
    folder: str, spec: dict[str, Any], want: int
) -> tuple[list[Any], list[int]] | None:
    """Lock ``want`` of the lent devices (all or none at a time, so two attempts never hold
    half each), or ``None`` when the attempt was killed or abandoned while waiting."""
    # The attempt is WORKDIR/attempts/RUN/STEP/N; the locks are WORKDIR/gpus/ID.lock.
    gpus_dir = os.path.join(os.path.dirname(folder), "..", "..", "..", "gpus")
    gpus_dir = os.path.normpath(gpus_dir)
    _private_dirs(gpus_dir)
    timeout = float(spec.get("orphan_timeout") or 120)
    while True:
        held: list[Any] = []
        fds: list[int] = []
        for device in spec["lent"]:
            fd = os.open(os.path.join(gpus_dir, f"{device}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            held.append(device)
            fds.append(fd)
            if len(held) == want:
                return held, fds
        for fd in fds:
            os.close(fd)
        if os.path.exists(os.path.join(folder, "kill")):
            write_status(folder, state="killed", supervisor=os.getpid())
            return None
        if _lease_age(folder) > timeout:
            write_status(folder, state="orphaned", supervisor=os.getpid())
            return None
        time.sleep(0.05)


def work(folder: str) -> int:
    """Run the attempt's task with this host's stepflow; the result goes to ``result.pkl``."""
    import pickle
    from pathlib import Path

    from stepflow.worker import die_with_parent, execute_task

    die_with_parent()
    task_file = os.path.join(folder, "task.pkl")
    with open(task_file, "rb") as fh:
        task = pickle.load(fh)  # noqa: S301 - written by the run that launched this attempt
    os.unlink(task_file)  # it holds the step's secrets; nobody needs it any more
    output = Path(folder, "output")
    output.mkdir(mode=0o700, exist_ok=True)
    result = execute_task(task, output)
    _atomic_write(os.path.join(folder, "result.pkl"), pickle.dumps(result, protocol=5))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        server = Server(argv[1])
        # Replies own fd 1; anything else this process or its children print goes to stderr.
        proto = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        server.serve(sys.stdin.buffer, proto)
        return 0
    if len(argv) == 2 and argv[0] == "supervise":
        return supervise(argv[1])
    if len(argv) == 2 and argv[0] == "work":
        return work(argv[1])
    print("usage: agent.py serve WORKDIR | supervise ATTEMPT | work ATTEMPT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
