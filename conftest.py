"""Guards for the whole test session, doctests in ``stepflow/`` included.

They live at the repository root so that they apply to the package's doctests as well as to
``tests/``; the suite's fixtures live in ``tests/conftest.py``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

#: the checkout's own home (``[tool.stepflow] home`` in its pyproject.toml): tests never touch it
CHECKOUT_HOME = Path(__file__).resolve().parent / ".stepflow"


def _home_state() -> tuple[int, int] | None:
    try:
        stat = CHECKOUT_HOME.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_checkout_home_key] = _home_state()
    # A suite started in the background by a non-interactive shell (`cmd &`, as a CI script
    # may) inherits Ctrl-C ignored, and every process it starts would too: the tests that
    # interrupt a run (a real SIGINT, or `_thread.interrupt_main`) would wait for nothing.
    # Children then get the default again (an exec resets a handled signal, not an ignored one).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_checkout_home_key, None)
    if _home_state() != before:
        # A test ran a pipeline without a home of its own and wrote into the developer's store.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"ERROR: the test session wrote into the checkout's own home {CHECKOUT_HOME}; "
                "every test must use a temporary home",
                red=True,
            )


_checkout_home_key = pytest.StashKey["tuple[int, int] | None"]()


@pytest.fixture(autouse=True)
def _private_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test gets a home of its own, so none writes into the checkout's ``.stepflow``.

    Tests that need a particular home set ``STEPFLOW_HOME`` (``stepflow_home``) or a
    ``[tool.stepflow] home`` after deleting the variable.
    """
    monkeypatch.setenv("STEPFLOW_HOME", str(tmp_path_factory.mktemp("home", numbered=True)))


@pytest.fixture(autouse=True)
def _snapshot_threads_end_with_their_test() -> Iterator[None]:
    """Wait for the code-snapshot threads a test's runs started (they outlive ``run()`` by
    design), so that one test's background writes never land in the next test."""
    yield
    for thread in threading.enumerate():
        if thread.name == "stepflow-source":
            thread.join(timeout=60)


@pytest.fixture(autouse=True)
def _modules_of_temporary_folders_end_with_their_test(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """Forget the modules a test imported from its temporary folders (``flow.py``...), so a
    later test's module of the same name is imported from its own folder, not found in
    ``sys.modules`` from an earlier test."""
    import sys
    import tempfile

    yield
    # pytest's folders and the ones tests make with tempfile (they lie under both).
    bases = (str(tmp_path_factory.getbasetemp()), tempfile.gettempdir() + "/")
    # Never the project's own modules or installed ones: a checkout (and its venv) may
    # itself lie under the temporary folder.
    kept = (str(CHECKOUT_HOME.parent) + "/", sys.prefix + "/", sys.base_prefix + "/")
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        if file.startswith(bases) and not file.startswith(kept):
            del sys.modules[name]
