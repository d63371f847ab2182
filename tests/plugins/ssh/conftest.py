"""A real OpenSSH server on a loopback port, with keys and known_hosts of its own (DESIGN §5).

The "remote" host is this machine, reached through sshd as the current user; its Python is
the one running the tests (stepflow installed). Each test gets a workdir of its own on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ssh_testing import SSHServer, missing_ssh, start_sshd, stop_sshd, toml_tables


@pytest.fixture(scope="session")
def _sshd_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer | str]:
    why = missing_ssh()
    if why is not None:
        yield why
        return
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_sshd(server)


@pytest.fixture
def sshd(_sshd_session: SSHServer | str, need) -> SSHServer:
    """The session's sshd (skips without OpenSSH, fails under CI=true)."""
    if isinstance(_sshd_session, str):
        need(_sshd_session)
    assert isinstance(_sshd_session, SSHServer)
    return _sshd_session


@pytest.fixture
def remote_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir on the "host" of the test's own (not yet created: the backend makes it)."""
    return tmp_path_factory.mktemp("remote") / "work dir"


@pytest.fixture
def project(tmp_path: Path, sshd: SSHServer, remote_workdir: Path):
    """Write ``pyproject.toml`` (backend ``gpu`` on the test sshd) and flow files."""

    def make(flow: str, *, extra_tables: dict | None = None, **options: object) -> Path:
        import textwrap

        workdir = options.pop("workdir", remote_workdir)
        tables = {"tool.stepflow.backends.gpu": sshd.options(workdir, **options)}
        tables.update(extra_tables or {})
        (tmp_path / "pyproject.toml").write_text(toml_tables(tables))
        (tmp_path / "flow.py").write_text(textwrap.dedent(flow).lstrip("\n"))
        return tmp_path

    return make
