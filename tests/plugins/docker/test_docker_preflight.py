"""What the Docker backend says before any step runs: each problem, its cause, its fix."""

from __future__ import annotations

import pytest

FLOW = """
from stepflow import step

@step
def first() -> int:
    print("FIRST RAN")
    return 1

@step(backend="box")
def inside(first: int) -> int:
    return first + 1
"""


def test_no_daemon_exits_2_naming_docker_host(project):
    """No engine at DOCKER_HOST: exit 2, the address, how to start one; nothing ran."""
    project.backend()
    project.write("flow.py", FLOW)
    done = project.run("run", "flow.py", DOCKER_HOST="unix:///nonexistent/stepflow-docker.sock")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "DOCKER_HOST=unix:///nonexistent/stepflow-docker.sock" in done.stderr
    assert "dockerd" in done.stderr
    assert "FIRST RAN" not in done.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pull": "sometimes"}, "pull = 'sometimes': use one of 'never', 'missing', 'always'"),
        ({"memory": "lots"}, "memory = 'lots': give a size such as"),
        ({"colour": "blue"}, "unknown option(s) colour"),
        ({"requirements": "missing-requirements.txt"}, "cannot read"),
    ],
)
def test_bad_options_are_named(project, options, message):
    """A bad option stops the run before any step, naming the option and the fix."""
    project.backend(**options)
    project.write("flow.py", FLOW)
    done = project.run("run", "flow.py")
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "[tool.stepflow.backends.box]" in done.stderr or "unknown option" in done.stderr


def test_missing_image_with_pull_never_is_named(docker_client, project):
    """pull = "never" and no such image: exit 2 naming the image, before any step."""
    project.backend(image="stepflow-test-absent:never", pull="never")
    project.write("flow.py", FLOW)
    done = project.run("run", "flow.py")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "image 'stepflow-test-absent:never' is not on the Docker engine" in done.stderr
    assert 'pull = "never"' in done.stderr
    assert "FIRST RAN" not in done.stdout


def test_uninstallable_requirement_shows_the_end_of_pips_error(docker_client, project):
    """A requirement pip cannot install: exit 2 with pip's own last lines and the spec."""
    project.backend(requirements=["stepflow-no-such-distribution-xyz==9.9"])
    project.write("flow.py", FLOW)
    done = project.run("run", "flow.py")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "No matching distribution found for stepflow-no-such-distribution-xyz==9.9" in (
        done.stderr
    )
    assert "requirements ['stepflow-no-such-distribution-xyz==9.9']" in done.stderr
    assert "FIRST RAN" not in done.stdout
    # The failed build left no container behind.
    assert not docker_client.containers.list(all=True, filters={"label": "io.stepflow.build"})


def test_unknown_env_key_is_refused(docker_client, project):
    """A step env key the backend does not know is refused, never ignored."""
    project.backend()
    project.write(
        "flow.py",
        FLOW.replace('@step(backend="box")', '@step(backend="box", env={"conda": ["x"]})'),
    )
    done = project.run("run", "flow.py")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "conda" in done.stderr
