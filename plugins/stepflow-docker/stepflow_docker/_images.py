"""Environment images: ``stepflow-env:<hash>``, built once per spec and then reused.

An environment is built in two layers, each made by running a container from the layer
below and committing it (so a build can mount the host's CA certificates, which a Dockerfile
build cannot, and reaches only the package index):

1. ``stepflow-runtime:<hash>``: a virtualenv at ``/opt/stepflow/venv`` with stepflow's own
   dependencies at the versions this run uses (stepflow itself is mounted, never installed);
   shared by every environment on the same base image;
2. ``stepflow-env:<hash>``: the apt packages and the requirements of the spec.

The hash covers the base image's ID, its Python version, the runtime pins, the requirements
and the apt packages, so the image is rebuilt exactly when one of them changes, and never
for a change of the user's code, which is mounted. Two processes that need one image build
it once: the build holds a lock file per hash in the home (``flock``, dropped by the kernel
when its holder dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import ssl
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

# Every folder made in the home is owner-only at each level (DESIGN.md section 7).
from stepflow._storage.home import make_private_dirs
from stepflow.errors import BackendUnavailableError
from stepflow_docker._engine import docker_errors
from stepflow_docker._labels import BUILD, OWNER, owner_labels
from stepflow_docker._spec import EnvSpec

if TYPE_CHECKING:
    import docker

__all__ = ["VENV_PYTHON", "Built", "Images"]

#: the interpreter of every environment image
VENV_PYTHON = "/opt/stepflow/venv/bin/python"
# 3: images keep neither the build's environment variables nor its labels
_FORMAT = 3
#: lines of a failed build's output shown in the error
_TAIL = 25
_PYTHON_PROBE = "import platform; print(platform.python_version())"


@attrs.frozen
class Built:
    """An environment image ready to run steps."""

    spec: EnvSpec
    #: ``stepflow-env:<hash>``
    tag: str
    image_id: str
    base_id: str
    python: str


class Images:
    """Resolves base images and builds environment images for one backend."""

    def __init__(self, client: docker.DockerClient, backend: str, home: Path, pull: str) -> None:
        self.client = client
        self.backend = backend
        self.pull = pull
        self.folder = Path(home) / "docker"
        self._bases: dict[str, str] = {}

    # --- base images ----------------------------------------------------------------------

    def base_id(self, name: str, *, fetch: bool = True) -> str | None:
        """The ID of base image ``name``, pulled as the ``pull`` option says.

        With ``fetch=False`` (``stepflow explain``) nothing is pulled: ``None`` when absent.

        :raises BackendUnavailableError: absent with ``pull = "never"``, or the pull failed.
        """
        if name in self._bases:
            return self._bases[name]
        import docker.errors

        found: str | None = None
        if self.pull != "always" or not fetch:
            with contextlib.suppress(docker.errors.ImageNotFound):
                found = self.client.images.get(name).id
        if found is None and fetch:
            if self.pull == "never":
                raise BackendUnavailableError(
                    f"backend {self.backend!r}: image {name!r} is not on the Docker engine and "
                    f'pull = "never": load it first (`docker pull {name}`, `docker load`, or '
                    f'`docker import`), or set pull = "missing" to let stepflow pull it'
                )
            try:
                found = self.client.images.pull(*_split_tag(name)).id
            except docker_errors() as exc:
                raise BackendUnavailableError(
                    f"backend {self.backend!r}: image {name!r} is not on the Docker engine and "
                    f"pulling it failed ({_last_line(exc)}). Check the name and that the "
                    f"registry is reachable, or load the image yourself (`docker load`)"
                ) from None
        if found is not None:
            self._bases[name] = found
        return found

    def python_of(self, image_id: str, name: str) -> str:
        """The Python version of ``python3`` in an image (remembered by image ID)."""
        memo_path = self.folder / "pythons.json"
        memo = _read_json(memo_path)
        if image_id in memo:
            return str(memo[image_id])
        out, code = self._run_once(image_id, ["python3", "-c", _PYTHON_PROBE])
        version = out.strip().splitlines()[-1] if out.strip() else ""
        if code != 0 or not re.fullmatch(r"\d+\.\d+\.\d+\S*", version):
            raise BackendUnavailableError(
                f"backend {self.backend!r}: image {name!r} has no working python3 "
                f"(exit code {code}: {out.strip()[-300:]}); use an image with Python "
                f"{_minor(sys.version)}, such as python:{_minor(sys.version)}-slim"
            )
        memo[image_id] = version
        _write_json(memo_path, memo)
        return version

    # --- environment images ---------------------------------------------------------------

    def tag_of(self, spec: EnvSpec, base_id: str, python: str) -> str:
        return "stepflow-env:" + _digest(
            {"base": base_id, "python": python, "runtime": runtime_pins(), **_spec_json(spec)}
        )

    def lookup(self, spec: EnvSpec) -> Built | None:
        """The built image of ``spec``, or ``None``: nothing is pulled or built (explain)."""
        import docker.errors

        base = self.base_id(spec.image, fetch=False)
        if base is None:
            return None
        memo = _read_json(self.folder / "pythons.json")
        if base not in memo:
            return None
        tag = self.tag_of(spec, base, str(memo[base]))
        try:
            image = self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            return None
        return Built(spec, tag, image.id, base, str(memo[base]))

    def ensure(self, spec: EnvSpec) -> Built:
        """The image of ``spec``, built (once, under its lock) if it is not there yet.

        :raises BackendUnavailableError: the base image is missing or has another Python, or
            the build failed (the end of its output and the spec are in the message).
        """
        base = self.base_id(spec.image)
        assert base is not None
        python = self.python_of(base, spec.image)
        if _minor(python) != _minor(sys.version):
            raise BackendUnavailableError(
                f"backend {self.backend!r}: image {spec.image!r} has Python {python}, but this "
                f"run uses Python {sys.version.split()[0]}; steps and results travel as Python "
                f"pickles, so use a base image with Python {_minor(sys.version)} (such as "
                f"python:{_minor(sys.version)}-slim) or run stepflow with Python {_minor(python)}"
            )
        tag = self.tag_of(spec, base, python)
        with self._lock(tag):
            image_id = self._image_id(tag)
            if image_id is None:
                runtime = self._runtime(base, python, spec)
                if spec.requirements or spec.apt:
                    image_id = self._build(runtime, tag, spec, _env_script(spec), spec.requirements)
                else:
                    self.client.images.get(runtime).tag(*tag.split(":"))
                    image_id = self.client.images.get(tag).id
        return Built(spec, tag, image_id, base, python)

    def _runtime(self, base: str, python: str, spec: EnvSpec) -> str:
        pins = runtime_pins()
        tag = "stepflow-runtime:" + _digest({"base": base, "python": python, "runtime": pins})
        with self._lock(tag):
            if self._image_id(tag) is None:
                self._build(base, tag, spec, _RUNTIME_SCRIPT, pins)
        return tag

    def _image_id(self, tag: str) -> str | None:
        import docker.errors

        try:
            return str(self.client.images.get(tag).id)
        except docker.errors.ImageNotFound:
            return None

    @contextlib.contextmanager
    def _lock(self, tag: str) -> Iterator[None]:
        locks = self.folder / "locks"
        make_private_dirs(locks)
        fd = os.open(locks / (tag.replace(":", "-") + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _build(
        self, source: str, tag: str, spec: EnvSpec, script: str, requirements: tuple[str, ...]
    ) -> str:
        """Run ``script`` in a container of ``source`` and commit it as ``tag``."""
        what = (
            "stepflow's dependencies" if tag.startswith("stepflow-runtime") else "the environment"
        )
        print(
            f"stepflow-docker: building {tag} ({what}) for backend {self.backend!r}; later runs "
            f"reuse it",
            file=sys.stderr,
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="stepflow-build-") as tmp:
            folder = Path(tmp)
            (folder / "requirements.txt").write_text("".join(r + "\n" for r in requirements))
            (folder / "apt.txt").write_text("".join(p + "\n" for p in spec.apt))
            folder.chmod(0o755)
            mounts = {str(folder): {"bind": "/stepflow-build", "mode": "ro"}}
            environment = {
                "PIP_NO_CACHE_DIR": "1",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PIP_DEFAULT_TIMEOUT": "120",
                "DEBIAN_FRONTEND": "noninteractive",
            }
            ca = ca_bundle()
            if ca is not None:
                # A copy in the one mounted folder: every mount point a build adds stays in
                # the committed image as an empty file.
                shutil.copyfile(ca, folder / "ca.crt")
                for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
                    environment[var] = "/stepflow-build/ca.crt"
            for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
                value = os.environ.get(var, "")
                if value.startswith(("http://", "https://")):
                    environment[var] = value
            # Variables in the script, not the container: a committed image keeps the
            # container's (PIP_CERT naming a file only the build had).
            exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in environment.items())
            (folder / "build.sh").write_text(exports + script)
            container = self.client.containers.create(
                source,
                ["sh", "/stepflow-build/build.sh"],
                user="0:0",
                volumes=mounts,
                labels={BUILD: tag, **owner_labels()},
            )
            try:
                container.start()
                code = container.wait()["StatusCode"]
                if code != 0:
                    output = container.logs().decode("utf-8", "replace")
                    raise BackendUnavailableError(
                        _failed_build(self.backend, tag, spec, code, output)
                    )
                # The engine merges the build container's labels into the image, and every
                # container of the image would inherit them: blank the build's own.
                labels = {
                    BUILD: "",
                    OWNER: "",
                    "io.stepflow.env": tag,
                    "io.stepflow.spec": json.dumps(_spec_json(spec)),
                }
                repository, name = tag.split(":")
                image = container.commit(repository, name, conf={"Labels": labels})
            finally:
                with contextlib.suppress(*docker_errors()):
                    container.remove(force=True)
        return str(image.id)

    def compile(self, image_id: str, folder: Path) -> None:
        """Compile the Python files under ``folder`` with the image's Python, as the caller.

        Best effort: a step only imports more slowly without the bytecode.
        """
        container = self.client.containers.create(
            image_id,
            [VENV_PYTHON, "-m", "compileall", "-q", "/stepflow-src"],
            user=f"{os.getuid()}:{os.getgid()}",
            volumes={str(folder): {"bind": "/stepflow-src", "mode": "rw"}},
            network_mode="none",
            labels={BUILD: "compile", **owner_labels()},
        )
        try:
            container.start()
            if container.wait()["StatusCode"] == 0:
                (folder / ".compiled").touch()
        finally:
            with contextlib.suppress(*docker_errors()):
                container.remove(force=True)

    def _run_once(self, image: str, command: list[str]) -> tuple[str, int]:
        container = self.client.containers.create(
            image, command, labels={BUILD: "probe", **owner_labels()}
        )
        try:
            container.start()
            code = container.wait()["StatusCode"]
            return container.logs().decode("utf-8", "replace"), int(code)
        finally:
            with contextlib.suppress(*docker_errors()):
                container.remove(force=True)


# umask 022: the step runs as the caller's uid, who must read what root installs.
_RUNTIME_SCRIPT = """set -e
umask 022
python3 -m venv /opt/stepflow/venv
/opt/stepflow/venv/bin/pip install -r /stepflow-build/requirements.txt
"""


def _env_script(spec: EnvSpec) -> str:
    lines = ["set -e", "umask 022"]
    if spec.apt:
        lines += [
            "apt-get update",
            "xargs apt-get install -y --no-install-recommends < /stepflow-build/apt.txt",
            "rm -rf /var/lib/apt/lists/*",
        ]
    if spec.requirements:
        lines.append("/opt/stepflow/venv/bin/pip install -r /stepflow-build/requirements.txt")
    return "\n".join(lines) + "\n"


def _failed_build(backend: str, tag: str, spec: EnvSpec, code: int, output: str) -> str:
    tail = "\n".join("    " + line for line in output.rstrip().splitlines()[-_TAIL:])
    return (
        f"backend {backend!r}: building {tag} failed (exit code {code}); nothing ran. The "
        f"environment: image {spec.image!r}, requirements {list(spec.requirements)}, apt "
        f"{list(spec.apt)}. The end of the build's output:\n{tail}\nFix the requirement it "
        f"names (a typo, a version that does not exist for Python {_minor(sys.version)}, a "
        f"package that needs a compiler: add it to apt)"
    )


_CORE_DEPENDENCIES = (
    "pluggy",
    "attrs",
    "cloudpickle",
    "diskcache",
    "pandas",
    "joblib",
    "pyarrow",
    "xxhash",
    "pathspec",
)


def runtime_pins() -> tuple[str, ...]:
    """stepflow's own dependencies, at the versions installed here (``name==version``).

    The worker in a container unpickles what this process pickled and the other way round,
    so the libraries that do it (cloudpickle, pandas, pyarrow, ...) must be the same.
    """
    pins = []
    try:
        requirements = importlib.metadata.requires("stepflow") or []
    except importlib.metadata.PackageNotFoundError:
        # stepflow imported from a source folder without being installed: its dependencies
        # as pyproject.toml lists them.
        requirements = list(_CORE_DEPENDENCIES)
    # numpy too: pandas and pyarrow need it, and it is in every DataFrame's pickle.
    for requirement in [*requirements, "numpy"]:
        if "extra ==" in requirement:
            continue
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        if match is None:
            continue
        name = match.group(0)
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if name != "numpy":  # not installed here: nothing to match
                pins.append(requirement.split(";")[0].strip())
    return tuple(sorted(set(pins)))


def ca_bundle() -> str | None:
    """The host's CA certificates, mounted into builds so pip trusts what the host trusts."""
    candidates = [
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        os.environ.get("REQUESTS_CA_BUNDLE"),
        ssl.get_default_verify_paths().cafile,
        "/etc/ssl/certs/ca-certificates.crt",
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            return os.path.realpath(candidate)
    return None


def _spec_json(spec: EnvSpec) -> dict[str, Any]:
    return {"requirements": list(spec.requirements), "apt": list(spec.apt)}


def _digest(data: Mapping[str, Any]) -> str:
    raw = json.dumps({"format": _FORMAT, **data}, sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:24]


def _split_tag(name: str) -> tuple[str, str]:
    repository, _, tag = name.rpartition(":")
    if not repository or "/" in tag:
        return name, "latest"
    return repository, tag


def _minor(version: str) -> str:
    return ".".join(version.split()[0].split(".")[:2])


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1][:300] if lines else type(exc).__name__


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
