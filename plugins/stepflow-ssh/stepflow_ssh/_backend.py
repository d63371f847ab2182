"""``SSHBackend``: steps on a remote host, as detached attempts followed over SSH.

One attempt, from the run's side:

1. the code snapshot goes to ``WORKDIR/code/<id>`` once per id, and the inputs the host's
   store lacks go to its store (by name, each checked against its digest there); with a
   shared object store nothing is copied;
2. ``launch`` creates ``WORKDIR/attempts/<run>/<step>/<attempt>``: making that folder is the
   claim, so a second ``launch`` of the same attempt (after a dropped connection) attaches
   instead of starting it again. The pickled task (parameters and secrets included) is an
   owner-only file there, never a command-line argument;
3. a supervisor in a session of its own waits for GPU slots, starts the worker, and records
   its process group and the attempt's status atomically; this side polls the status (each
   poll renews the attempt's lease) and follows the log;
4. when the connection drops, it reconnects and polls the same folder: the attempt went on
   running meanwhile. A timeout or a cancel kills the worker's process group;
5. the outputs come back by name and are checked against their digests before they enter
   the local store.

Inputs and outputs under 32 KiB are kept inline (``ArtifactRef.data``): they travel inside
the task and its result, and are never copied as objects.

A run whose process died leaves attempts whose lease is no longer renewed: their supervisor
kills them after ``orphan_timeout``, and the next run's ``check()`` kills at once those of a
dead run of this machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import platform
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

import stepflow
from stepflow.backends import Backend, BackendContext, Task, TaskResult, publish_output
from stepflow.errors import BackendError, BackendUnavailableError
from stepflow_ssh import _agent
from stepflow_ssh._options import SSHOptions, parse_options
from stepflow_ssh._transport import Channel, ConnectionLost, RemoteError, Transport

if TYPE_CHECKING:
    from stepflow._authoring.step import StepSpec

__all__ = ["SSHBackend"]

T = TypeVar("T")

#: seconds a claimed attempt may stay without a status before it counts as never started
_LAUNCH_GRACE = 30.0
_POLL_WAIT = 0.5
#: seconds a launch waits for its attempt to end before answering
_LAUNCH_WAIT = 0.2


class SSHBackend(Backend):
    """Runs steps on one host over SSH; see ``docs/how-to/run-steps-on-a-gpu-host.md``."""

    kind = "ssh"
    #: ``gpus`` only: they are lent by the host and held exclusively; CPUs and memory are
    #: not reserved on the host, so asking for them is refused rather than ignored
    supported_resources: frozenset[str] = frozenset({"gpus"})
    #: ``requirements`` with ``bootstrap = true`` (a virtualenv per set of requirements)
    supported_env: frozenset[str] = frozenset()

    def __init__(self, name: str, options: Mapping[str, Any], context: BackendContext) -> None:
        super().__init__(name, options, context)
        self.opts: SSHOptions = parse_options(name, self.options)
        if self.opts.bootstrap:
            self.supported_env = frozenset({"requirements"})
        self.transport = Transport(self.opts, name)
        self._lock = threading.Lock()  # the preflight
        self._pool_lock = threading.Lock()  # the channels
        self._ready = False
        self._idle: list[Channel] = []
        self._busy: set[Channel] = set()
        self._cancelled = threading.Event()
        self._code: tuple[str, str, str] | None = None  # (id, remote folder, local root)
        self._code_lock = threading.Lock()
        self._venvs: dict[tuple[str, ...], str] = {}
        self._venv_lock = threading.Lock()
        #: attempt folders launched and not yet finished, killed by ``close`` if still there
        self._inflight: set[str] = set()
        #: the host's answers once connected: workdir, Python, stepflow and packages
        self.hello: dict[str, Any] = {}
        self.workdir = ""
        self.agent = ""
        #: the interpreter that runs the agent and, unless a step has requirements, the worker
        self.python = self.opts.python

    # --- what the host can do ------------------------------------------------------------

    def refusal(self, spec: StepSpec) -> str | None:
        """Why this backend cannot run ``spec`` as declared, or ``None``."""
        return self._refuse(spec.name, spec.options.resources, spec.options.env)

    def _refuse(self, step: str, resources: Any, env: Mapping[str, Any]) -> str | None:
        where = f"backend {self.name!r} (ssh, {self.opts.host})"
        asked = [r for r in ("cpus", "memory") if getattr(resources, r, None) is not None]
        if asked:
            return (
                f"step {step!r} asks for {' and '.join(asked)}, which {where} does not "
                f"reserve (it lends GPUs only); remove them from resources=, or run the step "
                f"on a backend that limits them (docker)"
            )
        gpus = getattr(resources, "gpus", None) or 0
        lent = self.opts.gpus
        if gpus > len(lent):
            lends = f"lends {len(lent)} ({', '.join(lent)})" if lent else "lends none"
            return (
                f"step {step!r} asks for {gpus} GPU{'s' if gpus != 1 else ''}, but {where} "
                f"{lends}; list the host's devices in gpus = [...] of "
                f"[tool.stepflow.backends.{self.name}], or ask for fewer"
            )
        for key in env:
            if key in self.supported_env:
                continue
            if key == "requirements":
                return (
                    f"step {step!r} declares env requirements, which {where} installs only "
                    f"with bootstrap = true (a virtualenv in its workdir per set of "
                    f"requirements); set bootstrap = true, or install them with the host's "
                    f"python"
                )
            return (
                f"step {step!r} declares env {key!r}, which {where} cannot honour (images are "
                f"the docker backend's); it honours {sorted(self.supported_env) or 'none'}"
            )
        return None

    # --- preflight -----------------------------------------------------------------------

    def check(self) -> None:
        """Reach the host, check (or bootstrap) its stepflow, kill a dead run's attempts."""
        self._ensure_ready()

    def _ensure_ready(self) -> None:
        with self._lock:
            if self._ready:
                return
            self._preflight()
            self._ready = True

    def _preflight(self) -> None:
        opts = self.opts
        self.transport.connect()
        source = Path(_agent.__file__).read_bytes()
        name = f"agent-{hashlib.blake2b(source, digest_size=8).hexdigest()}.py"
        self.agent = self.transport.install_agent(opts.python, opts.workdir, name, source)
        channel = self._open(opts.python)
        try:
            hello = self._call(channel, "hello", packages=not opts.bootstrap)[0]
            self.workdir = hello["workdir"]
            ours = ".".join(platform.python_version().split(".")[:2])
            theirs = ".".join(str(hello["python"]).split(".")[:2])
            if ours != theirs:
                raise BackendUnavailableError(
                    f"backend {self.name!r}: {hello['executable']} on {self.transport.where()} "
                    f"is Python {hello['python']}, but this run uses Python {ours}: steps "
                    f'travel as Python {ours} bytecode; set python = "/path/to/python{ours}"'
                )
            if opts.bootstrap:
                self.python = self._bootstrap(channel, ())
                channel.close()
                channel = self._open(self.python)
                hello = self._call(channel, "hello", packages=True)[0]
            if not opts.bootstrap and hello.get("stepflow") != stepflow.__version__:
                found = f"stepflow {hello['stepflow']}" if hello.get("stepflow") else "no stepflow"
                raise BackendUnavailableError(
                    f"backend {self.name!r}: {hello['executable']} on "
                    f"{self.transport.where()} has {found}, but this run uses stepflow "
                    f"{stepflow.__version__}: install stepflow=={stepflow.__version__} there "
                    f"(`{hello['executable']} -m pip install stepflow=={stepflow.__version__}`)"
                    f", or set bootstrap = true to make a virtualenv with this stepflow in "
                    f"the workdir"
                )
            self.hello = hello
            self._check_store(hello)
            self._sweep(channel)
        except ConnectionLost as exc:
            channel.kill()
            raise BackendUnavailableError(
                f"backend {self.name!r}: lost the connection to {self.transport.where()} "
                f"while checking it: {exc}"
            ) from None
        except RemoteError as exc:
            channel.kill()
            raise BackendUnavailableError(f"backend {self.name!r}: {exc}") from None
        except BaseException:
            channel.kill()
            raise
        self._release(channel)

    def _check_store(self, hello: Mapping[str, Any]) -> None:
        from stepflow._storage.stores import store_kind

        kind = store_kind(self.context.config.store)
        if kind == "s3" and "s3fs" not in hello.get("packages", {}):
            raise BackendUnavailableError(
                f"backend {self.name!r}: the run's store is {self.context.config.store}, and "
                f"the host's Python ({hello['executable']}) lacks s3fs to reach it; install "
                f"it there (pip install 's3fs>=2024.12')"
            )

    def _bootstrap(self, channel: Channel, requirements: tuple[str, ...]) -> str:
        """The Python of the host's virtualenv with this stepflow and ``requirements``."""
        from stepflow_ssh._ship import stepflow_wheel

        wheel = stepflow_wheel(self.opts.wheel)
        parts = [wheel.digest, platform.python_version(), str(self.opts.system_site_packages)]
        key_text = "\n".join([*parts, *sorted(requirements)])
        key = hashlib.blake2b(key_text.encode(), digest_size=16).hexdigest()
        header, _ = self._call(
            channel,
            "bootstrap",
            wheel.data,
            key=key,
            wheel=wheel.name,
            requirements=list(requirements),
            system_site_packages=self.opts.system_site_packages,
        )
        return str(header["python"])

    def _sweep(self, channel: Channel) -> None:
        """Kill the attempts left running by runs that died (on this machine: at once;
        elsewhere: once their lease is older than ``orphan_timeout``)."""
        found = self._call(channel, "attempts")[0]["attempts"]
        here = _agent.machine_id()
        for attempt in found:
            client = attempt.get("client") or {}
            pid = client.get("pid")
            if client.get("machine") == here and isinstance(pid, int):
                dead = _agent.process_start(pid) != client.get("start")
            else:
                dead = attempt["lease_age"] > self.opts.orphan_timeout
            if dead:
                self._call(channel, "kill", dir=attempt["dir"], why="its run died")
                self._call(channel, "remove", dir=attempt["dir"])

    def environment(self) -> dict[str, str]:
        """The host's Python and package versions (results made elsewhere are not reused)."""
        self._ensure_ready()
        env = {str(k): str(v) for k, v in self.hello.get("packages", {}).items()}
        env["python"] = str(self.hello.get("python", ""))
        return env

    # --- channels ------------------------------------------------------------------------

    def _open(self, python: str) -> Channel:
        return self.transport.channel(python, self.agent, self.opts.workdir)

    def _acquire(self) -> Channel:
        with self._pool_lock:
            while self._idle:
                channel = self._idle.pop()
                if channel.alive:
                    self._busy.add(channel)
                    return channel
            channel = self._open(self.python)
            self._busy.add(channel)
            return channel

    def _release(self, channel: Channel) -> None:
        with self._pool_lock:
            self._busy.discard(channel)
            if channel.alive:
                self._idle.append(channel)
                return
        channel.kill()

    @staticmethod
    def _call(channel: Channel, op: str, *args: Any, **kw: Any) -> tuple[dict[str, Any], bytes]:
        return channel.call(op, *args, **kw)

    @contextlib.contextmanager
    def _session(self, task: Task) -> Iterator[_Session]:
        session = _Session(self, task)
        try:
            yield session
        except BaseException:
            # Its channel may be in the middle of a request (Ctrl-C): never reused.
            if session.channel is not None:
                session.channel.kill()
            raise
        finally:
            session.close()

    # --- running a task ------------------------------------------------------------------

    def execute(self, task: Task, *, timeout: float | None) -> TaskResult:
        refused = self._refuse(task.step, task.resources, task.env)
        if refused is not None:
            return TaskResult.failed(task, refused)
        try:
            self._ensure_ready()
            return self._execute(task, timeout)
        except ConnectionLost as exc:
            return TaskResult.lost(
                task,
                f"lost its SSH connection to {self.transport.where()} and could not "
                f"reconnect within {self.opts.reconnect_timeout:g}s ({exc}); its remote "
                f"attempt, if it started, is killed after orphan_timeout or by the next run",
            )
        except (BackendError, OSError) as exc:
            return TaskResult.failed(
                task, f"backend {self.name!r} ({self.transport.where()}): {exc}"
            )

    def _execute(self, task: Task, timeout: float | None) -> TaskResult:
        local_store = task.store_kind == "local"
        with self._session(task) as session:
            python = self._python_for(session, task)
            code = self._upload_code(session)
            remote_task = self._remote_task(task, code)
            if local_store:
                session.do(lambda ch: self._push_inputs(ch, task))
            rel = attempt_dir(task)
            spec = {
                "python": python,
                # The agent runs self.python: a worker of the same Python is forked from it.
                "fork": python == self.python,
                "cwd": self._remote_cwd(code),
                "gpus": task.resources.gpus or 0,
                "lent": list(self.opts.gpus),
                "env": self._step_env(),
                "orphan_timeout": self.opts.orphan_timeout,
            }
            client = {
                "machine": _agent.machine_id(),
                "pid": os.getpid(),
                "start": _agent.process_start(os.getpid()),
                "run": task.run_id,
            }
            payload = pickle.dumps(remote_task, protocol=5)
            with self._pool_lock:
                self._inflight.add(rel)
            # A launch that is retried after a dropped connection finds its folder there
            # (the claim) and starts nothing: it then follows the attempt already running.
            # It waits a moment for the end: a short step's status comes back with it.
            wait = min(_LAUNCH_WAIT, timeout) if timeout else _LAUNCH_WAIT
            first = session.do(
                lambda ch: ch.call(
                    "launch", payload, dir=rel, spec=spec, client=client, wait=wait,
                    logs=task.echo, live=[0, 0],
                )[0]
            )  # fmt: skip
            outcome = self._follow(session, task, rel, timeout, first)
            if not isinstance(outcome, TaskResult):
                outcome = self._collect(session, task, rel, outcome)
            session.do(lambda ch: ch.call("remove", dir=rel))
            with self._pool_lock:
                self._inflight.discard(rel)
            return outcome

    def _python_for(self, session: _Session, task: Task) -> str:
        requirements = task.env.get("requirements") if self.opts.bootstrap else None
        if not requirements:
            return self.python
        if isinstance(requirements, str):
            path = Path(self.context.config.rootdir, requirements)
            requirements = [
                line.strip()
                for line in path.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
        key = tuple(sorted(str(r) for r in requirements))
        with self._venv_lock:
            if key not in self._venvs:
                self._venvs[key] = session.do(lambda ch: self._bootstrap(ch, key))
            return self._venvs[key]

    def _upload_code(self, session: _Session) -> str:
        """The host's folder holding this run's code snapshot (uploaded once per id)."""
        from stepflow._storage.source import scan
        from stepflow_ssh._ship import snapshot_tar

        with self._code_lock:
            if self._code is not None:
                return self._code[1]
            config = self.context.config
            found = scan(Path(config.rootdir), home=Path(config.home))
            snapshot_id = found.snapshot.content_hash
            files = dict(found.snapshot.files)
            folder = f"{self.workdir}/code/{snapshot_id}"

            def upload(ch: Channel) -> None:
                if ch.call("has_code", id=snapshot_id)[0]["present"]:
                    return
                with snapshot_tar(str(found.root), files) as tar:
                    size = tar.seek(0, os.SEEK_END)
                    tar.seek(0)
                    chunks = iter(lambda: tar.read(1 << 20), b"")
                    ch.call("put_code", chunks, size=size, id=snapshot_id, files=files)

            session.do(upload)
            self._code = (snapshot_id, folder, os.path.realpath(found.root))
            return folder

    def _map(self, path: str) -> str | None:
        """``path`` (local) inside the project folder, as the host's snapshot path."""
        assert self._code is not None
        _, folder, root = self._code
        real = os.path.realpath(path)
        if real == root:
            return folder
        if real.startswith(root + os.sep):
            return f"{folder}/{Path(os.path.relpath(real, root)).as_posix()}"
        return None

    def _remote_cwd(self, code: str) -> str:
        return self._map(os.getcwd()) or code

    def _remote_task(self, task: Task, code: str) -> Task:
        """``task`` as the host sees it: its code paths in the snapshot, its store there."""
        sys_path = tuple(p for p in (self._map(e) for e in task.sys_path) if p is not None)
        ref = task.ref
        if ref.file:
            ref = attrs.evolve(ref, file=self._map(ref.file) or "")
        changes: dict[str, Any] = {"sys_path": sys_path, "ref": ref, "home": f"{self.workdir}/home"}
        if task.store_kind == "local":
            changes["store_uri"] = f"{self.workdir}/store/objects"
        return attrs.evolve(task, **changes)

    def _step_env(self) -> dict[str, str]:
        env = dict(self.opts.environment)
        for name in self.opts.forward_env:
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    def _push_inputs(self, channel: Channel, task: Task) -> None:
        """Send the inputs (and registered data sets and models) the host's store lacks."""
        from stepflow.worker import open_store

        refs = {ref.name: ref for ref in _input_refs(task)}
        if not refs:
            return
        missing = channel.call("missing", names=sorted(refs))[0]["missing"]
        if not missing:
            return
        store = open_store(task)
        paths = {name: store.local_path(name) for name in missing}
        items = [
            {"name": n, "size": os.stat(paths[n]).st_size, "digest": refs[n].digest}
            for n in missing
        ]

        def chunks() -> Iterator[bytes]:
            for item in items:
                with open(paths[item["name"]], "rb") as fh:
                    left = item["size"]
                    while left:
                        chunk = fh.read(min(left, 1 << 20)) or b"\0" * left
                        yield chunk
                        left -= len(chunk)

        size = sum(i["size"] for i in items)
        damaged = channel.call("put_objects", chunks(), size=size, items=items)[0]["damaged"]
        if damaged:
            raise BackendError(
                f"input object(s) {', '.join(damaged)} reached the host damaged (or are "
                f"damaged in the local store {task.store_uri}); run again, or regenerate "
                f"the steps that made them"
            )

    def _follow(
        self,
        session: _Session,
        task: Task,
        rel: str,
        timeout: float | None,
        first: dict[str, Any],
    ) -> dict[str, Any] | TaskResult:
        """Follow the attempt until it ends; its final status, or the result of a timeout,
        a cancel or a lost attempt. ``first`` is what the launch answered."""
        offsets = [0, 0]
        #: how far the step's captured output was read (shown live by `stepflow ui`)
        live = [0, 0]
        known: str | None = None
        deadline: float | None = None
        header: dict[str, Any] | None = first
        while True:
            if header is not None:
                offsets = header.get("offsets", offsets)
                if task.echo:
                    _echo(header.get("out", ""), header.get("err", ""))
                if "live_offsets" in header:
                    live = header["live_offsets"]
                    # The run masks the secrets before anything is shown.
                    for stream, text in zip(("stdout", "stderr"), header["live"], strict=True):
                        publish_output(task, stream, text)
                status = header["status"]
                known = state = status["state"]
                if state == "running" and deadline is None and timeout is not None:
                    # The timeout counts from the start of the worker, not while it waited
                    # for GPU slots.
                    deadline = time.monotonic() + timeout
                if state in _agent.FINAL:
                    return status
                if state == "absent":
                    return TaskResult.lost(task, f"lost its attempt folder {rel} on the host")
                if state == "claimed" and status.get("age", 0) > _LAUNCH_GRACE:
                    return TaskResult.lost(
                        task, f"never started on the host: no supervisor took attempt {rel}"
                    )
            if self._cancelled.is_set():
                logs = self._stop(session, task, rel, "cancelled")
                return TaskResult.cancelled(task, logs=logs)
            wait = _POLL_WAIT
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    logs = self._stop(session, task, rel, "timed out")
                    return TaskResult.timed_out(task, timeout, logs=logs)
                wait = min(wait, left)
            header = session.do(
                lambda ch, w=wait, k=known, o=list(offsets), v=list(live): ch.call(
                    "poll", dir=rel, offsets=o, wait=w, known=k, logs=task.echo, live=v
                )[0]
            )

    def _stop(self, session: _Session, task: Task, rel: str, why: str) -> dict[str, str]:
        """Kill the attempt's process group; what the step printed before."""
        session.do(lambda ch: ch.call("kill", dir=rel, why=why))
        return self._printed(session, task, rel)[0]

    def _printed(self, session: _Session, task: Task, rel: str) -> tuple[dict[str, str], str]:
        """What the step printed (secrets masked) and the tail of the worker's own stderr."""
        from stepflow._execution.capture import read_output

        with tempfile.TemporaryDirectory(prefix="stepflow-ssh-") as tmp:
            names = ("stdout", "stderr", "worker-stderr")

            def fetch(ch: Channel) -> None:
                def sink(header: dict[str, Any], reader: Any) -> None:
                    for name, size in zip(names, header["sizes"], strict=True):
                        if size >= 0:
                            reader.copy_to(Path(tmp, name), size)

                ch.call("printed", dir=rel, sink=sink)

            session.do(fetch)
            secrets = task.secret_values
            logs = read_output(Path(tmp), secrets)
            worker = Path(tmp, "worker-stderr")
            tail = worker.read_text(errors="replace")[-2000:] if worker.exists() else ""
            for secret in secrets:
                tail = tail.replace(secret, "*****")
        return logs, tail

    def _collect(
        self, session: _Session, task: Task, rel: str, status: dict[str, Any]
    ) -> TaskResult:
        """The result of an attempt that ended, its outputs brought into the local store."""
        state = status["state"]
        if state != "done":
            logs, _ = self._printed(session, task, rel)
            why = {
                "killed": f"was killed on the host ({status.get('why', 'by another client')})",
                "orphaned": "was killed on the host: its run stopped following it",
                "failed": f"could not start on the host: {status.get('why')}",
            }.get(state, f"ended in state {state!r}")
            return TaskResult.lost(task, why, logs=logs)
        # Not removed with the read: if the answer is lost with the connection, the result
        # must still be there when it is asked for again.
        header, body = session.do(lambda ch: ch.call("result", dir=rel))
        if not header.get("present"):
            logs, tail = self._printed(session, task, rel)
            code = status.get("code")
            how = (
                f"killed by signal {-code}"
                if isinstance(code, int) and code < 0
                else (f"exited with code {code}")
            )
            said = f"; its stderr ended with:\n{tail.strip()}" if tail.strip() else ""
            return TaskResult.lost(task, f"on the host {how} before it answered{said}", logs=logs)
        result = pickle.loads(body)  # noqa: S301 - written by our own worker on the host
        if not isinstance(result, TaskResult):
            return TaskResult.failed(task, f"the host answered a {type(result).__name__}")
        if result.ok and task.store_kind == "local":
            damaged = session.do(lambda ch: self._pull_outputs(ch, task, result))
            if damaged:
                failed = TaskResult.failed(
                    task,
                    f"the output object(s) {', '.join(damaged)} of step {task.step!r} came "
                    f"back from {self.transport.where()} damaged (their bytes do not match "
                    f"the digests the worker recorded); nothing was stored",
                    logs=result.logs,
                )
                return failed
        return result

    def _pull_outputs(self, channel: Channel, task: Task, result: TaskResult) -> list[str]:
        """Bring the result's objects into the local store, each checked against its
        digest first; the names that failed the check."""
        from stepflow._storage.hashing import hash_file
        from stepflow.worker import open_store

        # An output kept inline came back inside the result: nothing to fetch.
        refs = {
            r.name: r for r in (*result.outputs.values(), *result.files.values()) if not r.inline
        }
        if not refs:
            return []
        store = open_store(task)
        wanted = sorted(n for n in refs if not _has(store, n, refs[n].size))
        if not wanted:
            return []
        damaged: list[str] = []

        def sink(header: dict[str, Any], reader: Any) -> None:
            for name, size in zip(wanted, header["sizes"], strict=True):
                if size < 0:
                    damaged.append(name)
                    continue
                with store.writer(name) as tmp:
                    reader.copy_to(Path(tmp), size)
                    if hash_file(tmp) != refs[name].digest:
                        damaged.append(name)
                        # Leaving the block by an exception publishes nothing.
                        raise _Damaged

        for name in wanted:
            with contextlib.suppress(_Damaged):
                channel.call("get_objects", names=[name], sink=sink)
        return damaged

    # --- stopping ------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop every attempt in flight: each follower kills its remote process group."""
        self._cancelled.set()

    def close(self) -> None:
        """Kill the attempts still in flight (a run interrupted in the middle of a step),
        then end the connections."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
            busy = list(self._busy)
            inflight, self._inflight = sorted(self._inflight), set()
        for channel in busy:
            channel.kill()
        if inflight:
            channel = idle.pop() if idle else self._open(self.python)
            with contextlib.suppress(BackendError, OSError):
                for rel in inflight:
                    channel.call("kill", dir=rel, why="its run stopped")
                    channel.call("remove", dir=rel)
            channel.kill()
        for channel in idle:
            channel.close()
        self.transport.close()
        super().close()


class _Damaged(Exception):
    """An object that failed its digest check on the way back."""


class _Session:
    """One task's channel, replaced when the connection drops, until ``reconnect_timeout``."""

    def __init__(self, backend: SSHBackend, task: Task) -> None:
        self.backend = backend
        self.task = task
        self.channel: Channel | None = None

    def do(self, fn: Callable[[Channel], T]) -> T:
        deadline: float | None = None
        delay = 0.1
        while True:
            if self.channel is None:
                if deadline is not None:
                    # Reconnecting: a new master (the old one may be what died).
                    with contextlib.suppress(BackendError, OSError):
                        self.backend.transport.start_master()
                self.channel = self.backend._acquire()
            try:
                return fn(self.channel)
            except ConnectionLost:
                self.backend._release(self.channel)  # dead: it is killed, not kept
                self.channel = None
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.backend.opts.reconnect_timeout
                elif now >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self) -> None:
        if self.channel is not None:
            self.backend._release(self.channel)
            self.channel = None


def _has(store: Any, name: str, size: int) -> bool:
    try:
        return bool(store.size(name) == size)
    except (OSError, BackendError, Exception):
        return False


def _input_refs(task: Task) -> list[Any]:
    """The objects a task reads from the store (an input kept inline travels in the task)."""
    refs = [ref for ref in task.inputs.values() if not ref.inline]
    for version in task.references.values():
        obj = getattr(version, "object", None)
        if obj is not None:
            refs.append(obj)
        refs.extend(getattr(version, "objects", {}).values())
    return refs


def _safe(part: str) -> str:
    """A name for one level of the attempt folder: the value itself when plain, else a
    readable part and a hash, so two names never share a folder."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,100}", part):
        return part
    plain = re.sub(r"[^A-Za-z0-9_-]", "_", part)[:60]
    return f"{plain}-{hashlib.blake2b(part.encode(), digest_size=6).hexdigest()}"


def attempt_dir(task: Task) -> str:
    """The attempt's identity on the host: ``attempts/<run>/<step>/<attempt>``."""
    return f"attempts/{_safe(task.run_id)}/{_safe(task.step)}/{int(task.attempt)}"


def _echo(out: str, err: str) -> None:
    # The worker masked the secrets in what it echoed.
    if out:
        sys.stdout.write(out)
        sys.stdout.flush()
    if err:
        sys.stderr.write(err)
        sys.stderr.flush()
