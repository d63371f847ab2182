"""Containers end with their run: timeouts, Ctrl-C, kill -9 and the sweep; one build."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

pytestmark = pytest.mark.slow

SLOW = """
import signal, sys, time
from stepflow import step

@step
def seconds(wait: float = 0.0) -> float:
    return wait

@step(backend="box", timeout="{timeout}")
def slow(seconds: float) -> float:
    def term(signum, frame):
        print("got SIGTERM, ignoring it", flush=True)
    if {ignore_term}:
        signal.signal(signal.SIGTERM, term)
    print("started", flush=True)
    time.sleep(seconds)
    print("finished", flush=True)
    return seconds
"""


def _flow(timeout: str = "10m", ignore_term: bool = False) -> str:
    return SLOW.format(timeout=timeout, ignore_term=ignore_term)


def _running(containers, step: str):
    found = [c for c in containers(step=step) if c.status == "running"]
    return found[0] if found else None


def test_kill_9_stops_the_container_and_the_next_run_sweeps_it(
    docker_client, project, containers, wait_for
):
    """kill -9 of the run: its container stops by itself (the step never finishes), and the
    next run removes it, then computes the step once."""
    project.backend()
    project.write("flow.py", _flow())
    run = project.start("run", "flow.py", "--param", "wait=60")
    try:
        container = wait_for(lambda: _running(containers, "slow"), 120, "the step's container")
        labels = container.labels
        assert container.name == f"stepflow-{labels['io.stepflow.run']}-slow-1"
        assert labels["io.stepflow.step"] == "slow" and labels["io.stepflow.attempt"] == "1"
        wait_for(lambda: b"started" in container.logs(), 60, "the step to start")
        run.send_signal(signal.SIGKILL)
    finally:
        run.kill()
        run.communicate()
    # The run's process is gone: the engine closed the container's stdin, the worker stopped.
    wait_for(
        lambda: (container.reload(), container.status)[1] == "exited", 30, "the orphan to stop"
    )
    assert b"finished" not in container.logs()
    assert containers(run_id=labels["io.stepflow.run"])  # left for the next run to sweep
    again = project.run("run", "flow.py", "--param", "wait=0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert containers(run_id=labels["io.stepflow.run"]) == []
    assert re.search(r"slow \.+ ran", again.stdout), again.stdout


def test_timeout_stops_then_kills(docker_client, project, containers):
    """Past its timeout the step gets SIGTERM, then SIGKILL after stop_timeout; what it
    printed is kept, and its container is removed."""
    project.backend(stop_timeout=1)
    project.write("flow.py", _flow(timeout="3s", ignore_term=True))
    done = project.run("run", "flow.py", "--param", "wait=120")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ran past its timeout of 3s" in done.stdout
    logs = project.run("logs", "last", "slow")
    assert logs.returncode == 0, logs.stdout + logs.stderr
    assert "started" in logs.stdout
    assert "got SIGTERM, ignoring it" in logs.stdout  # stopped first ...
    assert "finished" not in logs.stdout  # ... then killed
    assert containers(step="slow") == []


def test_ctrl_c_stops_every_container_of_the_run(docker_client, project, containers, wait_for):
    """SIGINT (Ctrl-C) stops the run's containers; the run exits 130 and leaves none."""
    project.backend(stop_timeout=1)
    project.write("flow.py", _flow())
    run = project.start("run", "flow.py", "--param", "wait=60")
    try:
        container = wait_for(lambda: _running(containers, "slow"), 120, "the step's container")
        wait_for(lambda: b"started" in container.logs(), 60, "the step to start")
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, out + err
    assert containers(run_id=container.labels["io.stepflow.run"]) == []


def test_two_runs_at_once_build_the_image_once(docker_client, project):
    """Two runs that need the same new environment: one builds it, the other waits for it."""
    requirement = "six==1.15.0"
    spec = json.dumps({"requirements": [requirement], "apt": []})
    for image in docker_client.images.list(filters={"label": f"io.stepflow.spec={spec}"}):
        docker_client.images.remove(image.id, force=True)
    project.backend(requirements=[requirement])
    project.write("flow.py", _flow())
    runs = [project.start("run", "flow.py") for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, out + err
    builds = sum(err.count("building stepflow-env:") for _, err in outputs)
    assert builds == 1, outputs
    assert len(docker_client.images.list(filters={"label": f"io.stepflow.spec={spec}"})) == 1
    assert os.path.isdir(project.home / "docker" / "locks")


def test_what_a_step_prints_is_shown_while_its_container_runs(
    docker_client, project, wait_for, live_log
):
    """The worker in the container captures into the mounted attempt folder, which the run
    follows from the host: `stepflow ui` shows the step's first line before it ends."""
    project.backend()
    project.write("flow.py", _flow())
    run = project.start("run", "flow.py", "--param", "wait=60")
    try:
        log = wait_for(lambda: live_log(project.home, "slow"), 240, "the step's live log")
        assert log == "[stdout #1] started\n"
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=120)
    finally:
        run.kill()
        run.communicate()
    assert not (project.home / "live").exists()


def test_runs_sweeping_at_once_all_succeed(docker_client, tmp_path):
    """Runs that start together each sweep the dead runs' containers: one removing a container
    another has just listed must not fail the other (its listing inspects each container)."""
    import socket
    import threading

    import docker
    from stepflow_docker._labels import OWNER, sweep

    dead = f"{socket.gethostname()}:999999999:0"  # no such pid: a dead run
    made = [
        docker_client.containers.create(
            "stepflow-test-base:bookworm", "true", labels={OWNER: dead, "io.stepflow.test": "1"}
        )
        for _ in range(40)
    ]
    errors, removed = [], []

    def one_run(client) -> None:
        try:
            removed.extend(sweep(client, tmp_path / "attempts"))
        except Exception as exc:  # what a run's check would have failed on
            errors.append(exc)

    # Each run has its own client; they start one after another while the first removes,
    # so later ones list containers that go before they inspect them.
    clients = [docker.from_env() for _ in range(4)]
    threads = [threading.Thread(target=one_run, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
        thread.join(timeout=0.1)
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert errors == []
    assert {c.name for c in made} <= set(removed)
    assert docker_client.containers.list(all=True, filters={"label": "io.stepflow.test"}) == []
