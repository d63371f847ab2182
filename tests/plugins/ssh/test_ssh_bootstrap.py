"""``bootstrap = true``: a host whose Python lacks stepflow gets a virtualenv in the workdir,
made from a wheel of the local stepflow (uploaded: the host needs no index for stepflow
itself; stepflow's dependencies come from the package index)."""

from __future__ import annotations

import zipfile

import pytest
from test_ssh_options import _python_without_stepflow


def test_the_wheel_is_the_running_stepflow():
    """The wheel holds this stepflow's modules and metadata, and is the same bytes each time
    (so the host's virtualenv, keyed by its hash, is made once)."""
    import io

    from stepflow_ssh._ship import _built

    import stepflow

    wheel = _built()
    assert wheel.name == f"stepflow-{stepflow.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(io.BytesIO(wheel.data)).namelist()
    assert "stepflow/worker.py" in names
    assert not [n for n in names if "__pycache__" in n]
    meta = zipfile.ZipFile(io.BytesIO(wheel.data)).read(
        f"stepflow-{stepflow.__version__}.dist-info/METADATA"
    )
    assert b"Requires-Dist: cloudpickle" in meta
    _built.cache_clear()
    assert _built().digest == wheel.digest


@pytest.mark.slow
def test_bootstrap_makes_a_virtualenv_with_this_stepflow(
    project, stepflow_runner, remote_workdir, need
):
    python = _python_without_stepflow()
    if python is None:
        need("no Python of this version without stepflow on this machine")
    project(
        """
        import sys
        from stepflow import step

        @step(backend="gpu")
        def where() -> str:
            import stepflow
            return sys.executable + "|" + stepflow.__file__

        @step
        def report(where: str) -> None:
            print("WHERE " + where)
        """,
        python=python,
        bootstrap=True,
    )
    out = stepflow_runner.run("run", "flow.py", timeout=900)
    text = out.stdout + out.stderr
    assert out.ret == 0, text
    (line,) = [x for x in text.splitlines() if x.startswith("WHERE ")]
    executable, module = line[len("WHERE ") :].split("|")
    (venv,) = [p for p in (remote_workdir / "venvs").iterdir() if p.is_dir()]
    assert executable == str(venv / "bin" / "python")
    assert module.startswith(str(venv))
    # A second run finds the virtualenv made.
    again = stepflow_runner.run("run", "flow.py", "--regenerate", timeout=300)
    assert again.ret == 0, again.stdout + again.stderr
    assert [p for p in (remote_workdir / "venvs").iterdir() if p.is_dir()] == [venv]
