"""Fixtures shared by the whole suite; user-facing fixtures live in ``stepflow.testing``."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

RESOURCES = Path(__file__).parent / "resources"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def resource_module() -> Iterator[callable]:
    """Import a module from ``tests/resources`` by name, fresh for each test."""
    loaded: list[str] = []

    def load(name: str) -> ModuleType:
        if str(RESOURCES) not in sys.path:
            sys.path.insert(0, str(RESOURCES))
        sys.modules.pop(name, None)
        loaded.append(name)
        return importlib.import_module(name)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[callable]:
    """Write a module into ``tmp_path`` and import it, so worker processes can import it too."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(name: str, source: str) -> ModuleType:
        import textwrap

        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
        names.append(name)
        importlib.invalidate_caches()
        return importlib.import_module(name)

    yield make
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def hp() -> Iterator[ModuleType]:
    """The house-prices example's ``house_prices.pipeline`` module, imported as the CLI
    imports it (``examples/`` on ``sys.path``), fresh for each test module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLES))
        for name in [n for n in sys.modules if n.split(".")[0] == "house_prices"]:
            mp.delitem(sys.modules, name)
        yield importlib.import_module("house_prices.pipeline")
        for name in [n for n in sys.modules if n.split(".")[0] == "house_prices"]:
            del sys.modules[name]


# --- a real S3-compatible server on loopback (moto), for the object-store datastore ----------

# Runs in its own process: the test session's `filterwarnings = error` and its threads stay
# out of the server, and the server dies with the session (it exits when stdin closes).
_MOTO_SERVER = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


class S3Server:
    """A bucket of its own on a moto server, with dummy credentials set."""

    def __init__(self, endpoint_url: str, bucket: str, process: _MotoProcess | None = None) -> None:
        #: ``http://127.0.0.1:PORT``
        self.endpoint_url = endpoint_url
        #: a fresh bucket for this test
        self.bucket = bucket
        self._process = process

    @property
    def options(self) -> dict[str, str]:
        """``[tool.stepflow.store_options]`` for this server."""
        return {"endpoint_url": self.endpoint_url}

    def url(self, prefix: str = "stepflow") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def pyproject(
        self, prefix: str = "stepflow", *, store: str | None = None, endpoint_url: str | None = None
    ) -> str:
        """A ``pyproject.toml`` whose ``[tool.stepflow]`` stores everything on this server
        (or at ``store``, through ``endpoint_url``, to test what goes wrong there)."""
        return (
            f'[tool.stepflow]\nstore = "{store or self.url(prefix)}"\n\n'
            f'[tool.stepflow.store_options]\nendpoint_url = "{endpoint_url or self.endpoint_url}"\n'
        )

    def fs(self):
        """An s3fs filesystem on the server, for looking behind the datastore's back."""
        import s3fs

        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint_url, skip_instance_cache=True, use_listings_cache=False
        )

    def stop(self) -> None:
        """Stop the server (only ``stoppable_s3_server``'s own one)."""
        assert self._process is not None, "the session's shared server cannot be stopped"
        self._process.stop()


def _need(what: str) -> None:
    import os

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what}, and CI=true requires it (pip install -e '.[test]')")
    pytest.skip(what)


@pytest.fixture
def need() -> Callable[[str], None]:
    """``need("no docker engine: ...")`` skips the test with that reason, or fails it when
    CI=true, where every real component of DESIGN.md section 5 must be present."""
    return _need


@pytest.fixture
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real 1 MB tmpfs, mounted for the test: a disk that fills up (needs mount rights)."""
    import shutil
    import subprocess

    folder = tmp_path_factory.mktemp("small-disk")
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(folder)]
    if not shutil.which("mount") or subprocess.run(mount, capture_output=True).returncode:
        _need("cannot mount a tmpfs here (needs mount rights)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def needs_root() -> None:
    """Skip (fail when CI=true, which runs as root) unless the tests run as root."""
    import os

    if os.geteuid() != 0:
        _need("giving a folder to another user needs root")


class _MotoProcess:
    """``moto`` serving the S3 API on a free loopback port, in a child process."""

    def __init__(self, log: Path) -> None:
        import importlib.util
        import select
        import subprocess

        missing = [m for m in ("moto", "s3fs", "boto3", "flask") if not importlib.util.find_spec(m)]
        if missing:
            _need(f"the S3 test server needs {', '.join(missing)} (moto[server] and s3fs)")
        with open(log, "wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _MOTO_SERVER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.stop()
            pytest.fail(f"the moto S3 server did not start; its log:\n{log.read_text()}")
        self.endpoint_url = f"http://127.0.0.1:{int(line)}"

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="session")
def _moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = _MotoProcess(tmp_path_factory.mktemp("moto") / "server.log")
    try:
        yield server.endpoint_url
    finally:
        server.stop()


def _new_bucket(endpoint_url: str) -> str:
    import uuid

    import boto3

    bucket = f"stepflow-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint_url).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_server(_moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """A real S3 API on loopback with an empty bucket, and dummy credentials in the
    environment (worker processes inherit them). Skips without moto[server] and s3fs, except
    under CI=true, where it fails."""
    import os

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Never read the developer's own AWS configuration.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return S3Server(_moto_endpoint, _new_bucket(_moto_endpoint))


@pytest.fixture
def stoppable_s3_server(s3_server: S3Server, tmp_path: Path) -> Iterator[S3Server]:
    """Like ``s3_server`` but on a server of its own, which the test may ``stop()`` to lose
    the store halfway through something."""
    process = _MotoProcess(tmp_path / "moto.log")
    try:
        yield S3Server(process.endpoint_url, _new_bucket(process.endpoint_url), process)
    finally:
        process.stop()


# --- damaging stored results (outputs in object files, or inside their index records) -----


def _damaged(data: bytes, how: str) -> bytes:
    if how == "flip":
        return data[:-2] + bytes([data[-2] ^ 0xFF]) + data[-1:]  # same size, other bytes
    assert how == "truncate", how
    return data[:3]


def damage_record(home: Path, record: Any, how: str, output: str | None = None) -> None:
    """Damage the outputs of cache ``record`` of ``home`` (or only ``output``) where they
    are: in their object files, or inside the index row itself. ``how``: ``flip`` one byte,
    ``truncate`` to 3 bytes, or ``delete`` (an inline output's bytes are the row: it goes)."""
    from stepflow._storage.index import CacheIndex

    index = CacheIndex(home / "index")
    row = record.to_dict()
    for name, ref in record.outputs.items():
        if output is not None and name != output:
            continue
        if ref.inline:
            if how == "delete":
                index.delete(record.key)
                return
            row["outputs"][name]["data"] = _damaged(ref.data, how)
            index._cache.set(f"result:{record.key}", row)
            # This process keeps the records it read: it must read the damaged row back.
            index._open.records.clear()
            continue
        path = home / "objects" / ref.name[:2] / ref.name[2:]
        if how == "delete":
            path.unlink(missing_ok=True)
        elif path.exists():
            path.write_bytes(_damaged(path.read_bytes(), how))


@pytest.fixture(params=["inline", "file"])
def stored(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where small outputs live: inside their cache-index records (the default), or in object
    files (the inline limit lowered to 0 in this process, where the results to damage are
    made), so that each damage test covers both."""
    if request.param == "file":
        from stepflow._storage import artifacts

        monkeypatch.setattr(artifacts, "INLINE_LIMIT", 0)
    return str(request.param)


@pytest.fixture
def damage() -> Callable[..., None]:
    """``damage(home, record, how, output=None)``: see ``damage_record``."""
    return damage_record


@pytest.fixture
def wait_for():
    """``wait_for(predicate, timeout=60, what=...)``: poll ``predicate`` until it returns
    something true and return that; fail naming ``what`` once ``timeout`` seconds passed.

    For tests that watch another process (a run, a container, a remote attempt): they wait
    on what it leaves behind, never on a fixed sleep.
    """

    def wait(predicate, timeout: float = 60.0, what: str = "a condition"):
        deadline = time.monotonic() + timeout
        while True:
            found = predicate()
            if found:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"waited {timeout:g} s for {what}")
            time.sleep(0.05)

    return wait


@pytest.fixture
def task_for(tmp_path: Path):
    """``task_for(spec)``: a first attempt's task of the step ``spec``, with its store and
    import path in this test's folder (for tests that drive workers and pools directly)."""

    from stepflow._execution.task import Task

    def make(spec) -> Task:
        return Task(
            run_id="run1",
            step=spec.name,
            attempt=1,
            ref=spec.ref,
            inputs={},
            params={},
            store_uri=str(tmp_path / "store"),
            sys_path=(str(tmp_path),),
        )

    return make
