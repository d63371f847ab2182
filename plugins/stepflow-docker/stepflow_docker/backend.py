"""``DockerBackend``: each attempt of a step in its own container (``plugin = "docker"``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

# From the top-level package, not stepflow.backends: every run collects the backend kinds
# (this module is imported then), and a fully cached run must not import the task machinery.
from stepflow import Backend, BackendContext

# Every folder made in the home is owner-only at each level (DESIGN.md section 7).
from stepflow._storage.home import make_private_dirs
from stepflow.errors import BackendUnavailableError
from stepflow_docker._spec import ENV_KEYS, EnvSpec, Options, parse_options, step_spec

if TYPE_CHECKING:
    import docker

    from stepflow._authoring.step import StepSpec
    from stepflow.backends import Task, TaskResult
    from stepflow_docker._attempt import Launch
    from stepflow_docker._images import Built, Images

__all__ = ["DockerBackend"]


class DockerBackend(Backend):
    """Runs each attempt in a container of an environment image (DESIGN.md section 8).

    Options (``[tool.stepflow.backends.NAME]``): ``image``, ``requirements``, ``apt``,
    ``pull``, ``gpus``, ``cpus``, ``memory``, ``network``, ``environment``, ``stop_timeout``;
    see ``docs/how-to/run-steps-in-docker.md``.
    """

    kind = "docker"
    supported_env = ENV_KEYS
    supported_resources = frozenset({"cpus", "memory", "gpus"})

    def __init__(self, name: str, options: Mapping[str, Any], context: BackendContext) -> None:
        super().__init__(name, options, context)
        config = context.config
        self.rootdir = Path(config.rootdir).resolve()
        self.home = Path(config.home).resolve()
        self.opts: Options = parse_options(name, self.options, self.rootdir)
        self._client: docker.DockerClient | None = None
        self._images: Images | None = None
        #: step name → its environment, once built (``check``) or looked up (``explain``)
        self._built: dict[EnvSpec, Built | None] = {}
        self._code: Path | None = None
        self._source: Path | None = None
        # Re-entrant: preparing a folder may open the client, under the same lock.
        self._lock = threading.RLock()
        self._cancelled = threading.Event()

    # --- before any step ------------------------------------------------------------------

    def refusal(self, spec: StepSpec) -> str | None:
        """Why this backend cannot run ``spec`` as declared, or ``None``."""
        unknown = sorted(set(spec.options.env) - ENV_KEYS)
        if unknown:
            return (
                f"the docker backend does not know @step(env=...) key(s) {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(ENV_KEYS))}"
            )
        gpus = spec.options.resources.gpus
        if gpus and self.opts.gpus is not None and self.opts.gpus != "all":
            if gpus > len(self.opts.gpus):
                return (
                    f"it asks for {gpus} GPUs and backend {self.name!r} lends {len(self.opts.gpus)}"
                )
        return None

    def check(self) -> None:
        """Connect, sweep what dead runs left, build every image the run's steps need."""
        from stepflow_docker._labels import sweep

        client = self.client
        sweep(client, self.home / "docker" / "attempts")
        for name, spec in self._steps().items():
            why = self.refusal(spec)
            if why is not None:
                raise BackendUnavailableError(
                    f"step {name!r} cannot run on backend {self.name!r}: {why}"
                )
            self._prepare(self._env_of(spec, name))
        if self._steps():
            self._code_folder()
            self._stepflow_folder(self._prepare(self._env_of(next(iter(self._steps().values())))))

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                from stepflow_docker._engine import connect

                self._client = connect(self.name)
            return self._client

    @property
    def images(self) -> Images:
        from stepflow_docker._images import Images

        client = self.client
        with self._lock:
            if self._images is None:
                self._images = Images(client, self.name, self.home, self.opts.pull)
            return self._images

    def _steps(self) -> Mapping[str, StepSpec]:
        return getattr(self.context, "steps", None) or {}

    def _env_of(self, spec: StepSpec, name: str | None = None) -> EnvSpec:
        return step_spec(self.opts.env, spec.options.env, self.rootdir, name or spec.name)

    def _prepare(self, env: EnvSpec) -> Built:
        with self._lock:
            built = self._built.get(env)
        if built is None:
            built = self.images.ensure(env)
            with self._lock:
                self._built[env] = built
        return built

    def _code_folder(self) -> Path:
        from stepflow_docker._code import code_snapshot

        with self._lock:
            if self._code is None:
                config = self.context.config
                self._code = code_snapshot(
                    self.rootdir, self.home, config.store, self.name, config.store_options
                )
            return self._code

    def _stepflow_folder(self, built: Built) -> Path:
        """Our stepflow package, compiled once by the image's Python (see ``_code``)."""
        from stepflow_docker._code import stepflow_source

        with self._lock:
            if self._source is None:
                folder, compile_it = stepflow_source(self.home)
                if compile_it:
                    self.images.compile(built.image_id, folder)
                self._source = folder
            return self._source

    # --- the cache key --------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        return {}

    def step_environment(self, spec: StepSpec) -> dict[str, str]:
        """The image ID, its Python and the requirements: part of the step's cache key."""
        env = self._env_of(spec)
        with self._lock:
            built = self._built.get(env)
            known = env in self._built
        if not known:
            try:
                built = self.images.lookup(env)  # explain: nothing is pulled or built
            except BackendUnavailableError:
                built = None
            with self._lock:
                self._built.setdefault(env, built)
        return {
            "image": built.image_id if built is not None else f"(not built yet: {env.image})",
            "python": built.python if built is not None else "",
            "requirements": json.dumps(list(env.requirements)),
            "apt": json.dumps(list(env.apt)),
        }

    # --- running --------------------------------------------------------------------------

    def execute(self, task: Task, *, timeout: float | None) -> TaskResult:
        from stepflow.backends import TaskResult
        from stepflow_docker._attempt import container_name, run_attempt

        if self._cancelled.is_set():
            return TaskResult.cancelled(task)
        try:
            env = step_spec(self.opts.env, task.env, self.rootdir, task.step)
            launch = self._launch(self._prepare(env), task)
        except BackendUnavailableError as exc:
            return TaskResult.failed(task, str(exc))
        folder = self.home / "docker" / "attempts" / container_name(task)
        return run_attempt(self.client, task, launch, folder, timeout, self._cancelled)

    def _launch(self, built: Built, task: Task) -> Launch:
        from stepflow_docker._attempt import SOURCE_DIR, Launch
        from stepflow_docker._images import VENV_PYTHON

        code = self._code_folder()
        mounts: dict[str, tuple[str, str]] = {str(code): (str(self.rootdir), "ro")}
        mounts[str(self._stepflow_folder(built))] = (SOURCE_DIR, "ro")
        if task.store_kind == "local":
            store = Path(task.store_uri).resolve()
            refs = store.parent / "refs"
            # The home itself is an empty folder of the caller's: the engine would make the
            # mount points' parents as root, and the worker refuses a home another user owns.
            stub = self.home / "docker" / "home"
            for folder in (stub / store.name, stub / "refs"):
                make_private_dirs(folder)
            mounts[str(stub)] = (str(store.parent), "rw")
            self._mountpoint(code, store.parent)
            for folder in (store, refs):
                make_private_dirs(folder)
                mounts[str(folder)] = (str(folder), "rw")
                self._mountpoint(code, folder)
        return Launch(
            image_id=built.image_id,
            python=VENV_PYTHON,
            mounts=mounts,
            environment={
                # Writable whatever the uid: /tmp of the container itself, not the host.
                "HOME": "/tmp",  # noqa: S108
                "PYTHONPATH": SOURCE_DIR,
                "PYTHONDONTWRITEBYTECODE": "1",
                "STEPFLOW_WORKER_LIFELINE": "0",
                **self.opts.environment,
            },
            working_dir=str(self.rootdir),
            host_options=self._host_options(task),
            stop_timeout=self.opts.stop_timeout,
        )

    def _mountpoint(self, code: Path, target: Path) -> None:
        """A folder mounted inside the read-only code mount needs its mount point there."""
        try:
            relative = target.relative_to(self.rootdir)
        except ValueError:
            return
        (code / relative).mkdir(parents=True, exist_ok=True)

    def _host_options(self, task: Task) -> dict[str, Any]:
        import docker.types

        from stepflow_docker._spec import cpus_of, memory_of

        resources = task.resources
        options: dict[str, Any] = {}
        cpus = cpus_of(resources.cpus, f"resources cpus of step {task.step!r}") or self.opts.cpus
        if cpus:
            options["nano_cpus"] = int(cpus * 1e9)
        memory = memory_of(resources.memory, f"resources memory of step {task.step!r}")
        memory = memory or self.opts.memory
        if memory:
            options["mem_limit"] = memory
        if self.opts.network:
            options["network_mode"] = self.opts.network
        gpus = resources.gpus
        if gpus or (self.opts.gpus is not None and gpus is None):
            if self.opts.gpus is None or self.opts.gpus == "all":
                request = docker.types.DeviceRequest(count=gpus or -1, capabilities=[["gpu"]])
            else:
                ids = list(self.opts.gpus)[: gpus or None]
                request = docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])
            options["device_requests"] = [request]
        return options

    # --- stopping -------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop every container of this run (Ctrl-C, SIGTERM); their steps come back cancelled."""
        from stepflow_docker._engine import docker_errors
        from stepflow_docker._labels import RUN

        self._cancelled.set()
        if self._client is None:
            return
        try:
            running = self._client.containers.list(
                filters={"label": f"{RUN}={self.context.run_id}"}, ignore_removed=True
            )
        except docker_errors():
            return
        threads = [
            threading.Thread(target=_stop, args=(c, self.opts.stop_timeout), daemon=True)
            for c in running
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def close(self) -> None:
        super().close()
        if self._client is not None:
            self._client.close()


def _stop(container: Any, grace: float) -> None:
    from stepflow_docker._engine import docker_errors

    try:
        container.stop(timeout=int(grace))
    except docker_errors():
        pass
