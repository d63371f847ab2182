"""A fork server ("zygote") for the default workers: start an interpreter once, fork the rest.

A fresh ``python -m stepflow.worker --serve`` spends ~0.2 s of CPU importing Python and
stepflow before it can take a step; eight of them at the start of a ``--workers 8`` run cost
more than a second on two cores. ``WorkerPool`` therefore starts one process,
``python -m stepflow.worker --fork-server FD``, which imports what a worker needs (stepflow's
own modules and their libraries, never user code), then forks each new worker on request.

The run's side (``ForkServer``) and the zygote (``serve``) speak over a Unix socket pair. A
request is a length-prefixed pickle (the worker's environment) with five file descriptors
attached (``SCM_RIGHTS``): the worker's stdin and stdout pipes, the run's stderr, the lifeline
pipe (``WATCH_ENV``) and the write end of a status pipe, plus the run's working directory.
The zygote answers with the pid. The child starts its own session, takes those descriptors,
the environment, the working directory and the ``sys.path`` a fresh worker would have, and
returns from ``serve`` into ``stepflow.worker.main``: from there it is a serving worker like
any other, and it ends the way a fresh interpreter ends.

The zygote is the forked workers' parent, so it reaps them and writes each one's exit code
(as ``subprocess`` gives it: negative for a signal) into its status pipe; ``ForkedProcess``
reads it there, so a lost worker is reported "killed by signal N" exactly as a started one.
The worker holds the status pipe's write end too: if the zygote is gone, the pipe still
says when the worker ends, only without its code.

The zygote dies with the run: it exits when the run's end of the socket closes, ``kill -9``
of the run included. It forks only from its one thread and refuses (the run then starts a
fresh worker) if any other thread exists. A zygote that cannot start or dies makes
``ForkServer.spawn`` raise ``ForkServerError`` at once from then on, and the pool starts its
workers the old way.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from stepflow._execution.frames import OUTPUT_ENV, WATCH_ENV

__all__ = ["ForkServer", "ForkServerError", "ForkedProcess", "fork_server_argv", "serve"]

#: the option of ``python -m stepflow.worker`` that runs the fork server
FORK_SERVER_OPTION = "--fork-server"

_LENGTH = struct.Struct(">Q")
_PID = struct.Struct(">q")
_CODE = struct.Struct(">i")
#: descriptors sent with each request, in this order
_FDS = ("stdin", "stdout", "stderr", "lifeline", "status", "cwd")


class ForkServerError(Exception):
    """The fork server cannot fork a worker (it did not start, died, or refused)."""


def fork_server_argv(python: str | os.PathLike[str] | None = None) -> list[str]:
    """The command of a fork server run by ``python`` (default: this interpreter); the
    socket's descriptor number is appended."""
    return [os.fspath(python or sys.executable), "-m", "stepflow.worker", FORK_SERVER_OPTION]


class ForkedProcess:
    """A worker forked by the fork server, with the parts of ``subprocess.Popen`` that
    ``WorkerProcess`` uses: ``pid``, ``stdin``, ``stdout``, ``returncode``, ``poll``,
    ``wait`` and ``kill``."""

    def __init__(self, pid: int, stdin: int, stdout: int, status: int) -> None:
        self.pid = pid
        self.args = [f"<worker {pid} forked by the fork server>"]
        self.stdin = os.fdopen(stdin, "wb")
        self.stdout = os.fdopen(stdout, "rb")
        self.returncode: int | None = None
        #: the worker ended, but the fork server died before it could say with which code
        self.status_lost = False
        self._status = status
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        """The worker's exit code, or ``None`` while it runs."""
        if self.returncode is None and self._lock.acquire(blocking=False):
            try:
                self._read_status(0.0)
            finally:
                self._lock.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the worker to end; ``subprocess.TimeoutExpired`` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self.returncode is None and not self._read_status(left):
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        finally:
            self._lock.release()
        assert self.returncode is not None
        return self.returncode

    def _read_status(self, timeout: float | None) -> bool:
        """Read the exit code if it comes within ``timeout``; ``True`` once it is known."""
        if self.returncode is not None:
            return True
        if not select.select([self._status], [], [], timeout)[0]:
            return False
        data = b""
        while len(data) < _CODE.size:
            chunk = os.read(self._status, _CODE.size - len(data))
            if not chunk:
                break
            data += chunk
        os.close(self._status)
        if len(data) == _CODE.size:
            (self.returncode,) = _CODE.unpack(data)
        else:
            # End of file without a code: the worker and the fork server are both gone.
            self.status_lost = True
            self.returncode = 255
        return True

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class ForkServer:
    """The run's side of one fork server, started by the first ``spawn``.

    ``env`` is the workers' environment (``worker_env()``); the fork server runs with it, so
    whatever Python reads at start-up (``PYTHON*`` variables, the locale) is what a fresh
    worker would have read. ``argv`` is for tests.
    """

    def __init__(self, env: Mapping[str, str], argv: Sequence[str] | None = None) -> None:
        self.argv = list(argv or fork_server_argv())
        self._env = {k: v for k, v in env.items() if k not in (WATCH_ENV, OUTPUT_ENV)}
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        #: the fork server's process, once started
        self.proc: subprocess.Popen[bytes] | None = None
        #: why this fork server forks no more workers, once it does not
        self.broken: str | None = None

    def spawn(self, env: Mapping[str, str], lifeline: int, timeout: float = 120.0) -> ForkedProcess:
        """Fork a serving worker with environment ``env`` and the lifeline pipe's read end.

        :raises ForkServerError: no worker was forked; ``broken`` says when the fork server
            forks no more.
        """
        with self._lock:
            if self.broken is not None:
                raise ForkServerError(self.broken)
            if self._sock is None:
                self._start()
            assert self._sock is not None
            try:
                # The run's working directory, passed open: the worker enters it even when
                # it has no path any more, as a started worker inherits it.
                cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:  # this worker only; the next may fork again
                raise ForkServerError(f"cannot open the working directory: {exc}") from exc
            stdin_r, stdin_w = os.pipe()
            stdout_r, stdout_w = os.pipe()
            status_r, status_w = os.pipe()
            try:
                body = pickle.dumps(dict(env), protocol=5)
                self._sock.settimeout(timeout)
                fds = [stdin_r, stdout_w, 2, lifeline, status_w, cwd]
                socket.send_fds(self._sock, [_LENGTH.pack(len(body))], fds)
                self._sock.sendall(body)
                (pid,) = _PID.unpack(_recv_exact(self._sock, _PID.size))
                if pid <= 0:
                    raise ForkServerError(f"the fork server could not fork: {_refusal(-pid)}")
            except (OSError, EOFError, ForkServerError) as exc:
                for fd in (stdin_w, stdout_r, status_r):
                    os.close(fd)
                self._give_up(f"the fork server failed ({exc or type(exc).__name__})")
                raise ForkServerError(self.broken) from exc
            finally:
                for fd in (stdin_r, stdout_w, status_w, cwd):
                    os.close(fd)
            return ForkedProcess(pid, stdin_w, stdout_r, status_r)

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [*self.argv, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=self._env,
                # Like the workers: the terminal's Ctrl-C is for the run loop only.
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as exc:
            ours.close()
            self.broken = f"the fork server did not start: {exc}"
            raise ForkServerError(self.broken) from exc
        finally:
            theirs.close()
        self._sock = ours

    def _give_up(self, why: str) -> None:
        self.broken = why
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def close(self, wait: float = 5.0) -> None:
        """Stop the fork server (its workers go on; each has its own lifeline)."""
        sock = self._sock
        if sock is not None:
            # Wakes a ``spawn`` waiting for an answer in another thread (a cancel during the
            # first fork): it fails, and its worker starts the old way.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            if self.broken is None:
                self.broken = "the fork server is closed"
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    self._give_up(self.broken)


def _refusal(code: int) -> str:
    if code == 0:
        return "it has more than one thread"
    return os.strerror(code)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the fork server closed its socket")
        data += chunk
    return data


# --- the fork server's side ---------------------------------------------------------------


def serve(sock_fd: int) -> bool:
    """Fork workers on request on the socket ``sock_fd`` until the run's end closes.

    Returns ``False`` in the fork server, which should then exit at once, and ``True`` in a
    forked child, which is then set up as a fresh ``--serve`` worker would be (session,
    standard streams, environment, working directory, ``sys.path``, ``sys.argv``).
    """
    sock = socket.socket(fileno=sock_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    # SIGCHLD only wakes the loop; children are reaped in it, after they are registered.
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    startup_cwd = os.getcwd()
    path0_is_cwd = bool(sys.path) and sys.path[0] == startup_cwd
    children: dict[int, int] = {}  # pid -> write end of its status pipe
    while True:
        readable = select.select([sock, wake_r], [], [])[0]
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
        _reap(children)
        if sock not in readable:
            continue
        request = _receive(sock)
        if request is None:
            return False
        env, fds = request
        if threading.active_count() > 1:
            # Forking a process with threads can leave the child holding a lock no thread
            # will release; the run starts a fresh worker instead.
            _close_all(fds)
            sock.sendall(_PID.pack(0))
            continue
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # What the fork server holds (its modules) is out of the collector's sight: the
        # worker's collections, and its end, need not walk (and copy) those pages. That
        # halves the CPU a forked worker spends ending.
        gc.freeze()
        try:
            pid = os.fork()
        except OSError as exc:
            _close_all(fds)
            sock.sendall(_PID.pack(-(exc.errno or errno.EAGAIN)))
            continue
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sock.close()
            _close_all([wake_r, wake_w, *children.values()])
            _become_worker(env, fds, path0_is_cwd)
            return True
        status = fds.pop(_FDS.index("status"))
        _close_all(fds)
        children[pid] = status
        sock.sendall(_PID.pack(pid))


def _reap(children: dict[int, int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = children.pop(pid, None)
        if fd is not None:
            with contextlib.suppress(OSError):  # the run closed its end: nobody asks
                os.write(fd, _CODE.pack(os.waitstatus_to_exitcode(status)))
            os.close(fd)


def _receive(sock: socket.socket) -> tuple[dict[str, str], list[int]] | None:
    """The next request: the environment and the descriptors; ``None`` at end of file."""
    try:
        head, fds, _flags, _addr = socket.recv_fds(sock, _LENGTH.size, len(_FDS))
    except ConnectionResetError:
        return None
    if not head:
        return None
    try:
        head += _recv_exact(sock, _LENGTH.size - len(head))
        (length,) = _LENGTH.unpack(head)
        env = pickle.loads(_recv_exact(sock, length))  # noqa: S301 - from our own run
    except EOFError:
        _close_all(fds)
        return None
    if len(fds) != len(_FDS):
        raise RuntimeError(f"a fork request came with {len(fds)} descriptors, not {len(_FDS)}")
    return env, list(fds)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _become_worker(env: dict[str, str], fds: list[int], path0_is_cwd: bool) -> None:
    """In the forked child: what a fresh ``python -m stepflow.worker --serve`` would have."""
    stdin, stdout, stderr, lifeline, status, cwd = fds
    # Its own session and process group, as ``start_new_session=True`` gives: a timeout or
    # a cancel kills the group, and the terminal's Ctrl-C does not reach it.
    os.setsid()
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    _close_all([stdin, stdout, stderr])
    # Kept open until this process ends, so the run sees it end even without the zygote;
    # not passed on to the programs a step runs.
    os.set_inheritable(status, False)
    os.fchdir(cwd)
    os.close(cwd)
    env = dict(env)
    env[WATCH_ENV] = str(lifeline)
    os.environ.clear()
    os.environ.update(env)
    if path0_is_cwd:
        with contextlib.suppress(OSError):
            sys.path[0] = os.getcwd()
    # Whatever the zygote's importers saw of the user's folders is forgotten: user modules
    # are looked up afresh (the zygote imported none).
    import importlib
    import tempfile

    importlib.invalidate_caches()
    tempfile.tempdir = None  # TMPDIR is read again, from this environment
    sys.argv[1:] = ["--serve"]
