"""Host keys, quoting and secrets."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from ssh_testing import start_sshd, stop_sshd

QUICK = """
from stepflow import step

@step(backend="gpu")
def quick() -> int:
    return 41

@step
def report(quick: int) -> None:
    print("ANSWER", quick + 1)
"""


def _fingerprint(pub: str) -> str:
    done = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"], input=pub.encode(), capture_output=True, check=True
    )
    return done.stdout.decode().split()[1]


def test_an_unknown_host_key_is_refused_with_its_fingerprint(
    project, stepflow_runner, sshd, tmp_path_factory
):
    """Strict by default: exit 2 before any step, with the key's fingerprint and the command
    that trusts it."""
    known = tmp_path_factory.mktemp("keys") / "known_hosts"
    known.write_text("")
    project(QUICK, ssh_options={"UserKnownHostsFile": str(known)})
    out = stepflow_runner.run("run", "flow.py")
    text = out.stdout + out.stderr
    assert out.ret == 2, text
    assert "is unknown" in text
    assert _fingerprint(sshd.host_pub) in text
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known}" in text
    assert "accept-new" in text
    assert "ANSWER" not in text
    assert known.read_text() == ""


def test_accept_new_trusts_a_first_key(project, stepflow_runner, sshd, tmp_path_factory):
    """``host_key_policy = "accept-new"`` records an unknown key and runs."""
    known = tmp_path_factory.mktemp("keys") / "known_hosts"
    known.write_text("")
    project(QUICK, host_key_policy="accept-new", ssh_options={"UserKnownHostsFile": str(known)})
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 0, out.stdout + out.stderr
    assert "ANSWER 42" in out.stdout + out.stderr
    assert sshd.host_pub.split()[1] in known.read_text()


def test_a_changed_host_key_is_refused_even_with_accept_new(
    project, stepflow_runner, sshd, tmp_path_factory
):
    """A known host offering another key is refused under both policies, naming the new
    key's fingerprint; the known_hosts file is left alone."""
    other = start_sshd(tmp_path_factory.mktemp("other-sshd"))
    try:
        known = tmp_path_factory.mktemp("keys") / "known_hosts"
        # The known key for the other server's address is the session server's key.
        key_type, key = sshd.host_pub.split()[:2]
        known.write_text(f"[127.0.0.1]:{other.port} {key_type} {key}\n")
        before = known.read_text()
        for policy in ("strict", "accept-new"):
            table = other.options(
                tmp_path_factory.mktemp("remote") / "w",
                host_key_policy=policy,
                ssh_options={"UserKnownHostsFile": str(known)},
            )
            from ssh_testing import toml_tables

            (stepflow_runner.path / "pyproject.toml").write_text(
                toml_tables({"tool.stepflow.backends.gpu": table})
            )
            (stepflow_runner.path / "flow.py").write_text(QUICK)
            out = stepflow_runner.run("run", "flow.py")
            text = out.stdout + out.stderr
            assert out.ret == 2, text
            assert "CHANGED" in text
            assert _fingerprint(other.host_pub) in text
            assert "ssh-keygen -R" in text
            assert known.read_text() == before
    finally:
        stop_sshd(other)


HOSTILE = [
    "'; touch MARK #",
    "$(touch MARK)",
    "`touch MARK`",
    "a\nb c\td",
    '" ; touch MARK ; "',
]


def test_hostile_strings_are_data_never_shell(project, stepflow_runner, tmp_path_factory):
    """Quotes, substitutions, newlines and spaces in parameters and in the workdir's path
    reach the step as they are, and nothing is run by a shell."""
    marks = tmp_path_factory.mktemp("marks")
    hostile = [h.replace("MARK", str(marks / "touched")) for h in HOSTILE]
    workdir = tmp_path_factory.mktemp("remote") / hostile[0] / hostile[1] / "w $(id)\nx"
    root = project(
        """
        import json, os
        from stepflow import step

        @step(backend="gpu")
        def echo(values: str = "[]") -> list:
            return json.loads(values) + [os.getcwd()]

        @step
        def report(echo: list) -> None:
            print("ECHO " + json.dumps(echo))
        """,
        workdir=str(workdir),
    )
    import json

    out = stepflow_runner.run("run", "flow.py", "--param", f"values={json.dumps(hostile)}")
    text = out.stdout + out.stderr
    assert out.ret == 0, text
    (line,) = [x for x in text.splitlines() if x.startswith("ECHO ")]
    seen = json.loads(line[len("ECHO ") :])
    assert seen[:-1] == hostile
    assert seen[-1].startswith(str(workdir / "code"))
    assert not list(marks.iterdir()), "a shell ran part of a value"
    assert root.exists()


def test_secrets_travel_in_owner_only_files_never_on_command_lines(
    project, stepflow_runner, tmp_path_factory, remote_workdir
):
    """A ``Secret`` parameter reaches the remote step, but no ``ssh`` command line holds it,
    the attempt's files are owner-only, and nothing is left on the host that holds it."""
    secret = "s3cr3t-value-7d1f"
    wrappers = tmp_path_factory.mktemp("bin")
    log = wrappers / "argv.log"
    real = subprocess.run(["which", "ssh"], capture_output=True, text=True).stdout.strip()
    (wrappers / "ssh").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec {real} "$@"\n')
    os.chmod(wrappers / "ssh", 0o755)
    project(
        """
        import os, stat
        from pathlib import Path
        from stepflow import Secret, step

        @step(backend="gpu")
        def use(token: Secret[str]) -> str:
            folder = Path(os.environ["STEPFLOW_SSH_ATTEMPT"])
            modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir()}
            modes["."] = oct(stat.S_IMODE(folder.stat().st_mode))
            forwarded = os.environ["FWD_TOKEN"]
            on_disk = any(forwarded in p.read_text(errors="replace")
                          for p in folder.iterdir() if p.is_file())
            return f"{len(token)} {len(forwarded)} {on_disk} {sorted(modes.items())}"

        @step
        def report(use: str) -> None:
            print("USE", use)
        """,
        forward_env=["FWD_TOKEN"],
    )
    forwarded = "fwd-credential-93ab"
    env = {
        "PATH": f"{wrappers}{os.pathsep}{os.environ['PATH']}",
        "API_TOKEN": secret,
        "FWD_TOKEN": forwarded,
    }
    out = stepflow_runner.run("run", "flow.py", "--param", "token=env:API_TOKEN", env=env)
    text = out.stdout + out.stderr
    assert out.ret == 0, text
    (line,) = [x for x in text.splitlines() if x.startswith("USE ")]
    # Forwarded variables reach the step, and stay in memory only once it runs.
    assert line.startswith(f"USE {len(secret)} {len(forwarded)} False ")
    modes = eval(line.split(" ", 4)[4])  # our own step's repr of a list
    # The task file (parameters, secrets) is gone once the worker read it; the files written
    # beside it the same way are owner-only.
    assert "task.pkl" not in dict(modes)
    assert dict(modes)["spec.json"] == "0o600"
    assert dict(modes)["."] == "0o700"
    assert all(mode in ("0o600", "0o700") for _, mode in modes)
    assert log.exists() and log.read_text(), "the wrapper saw the ssh commands"
    assert secret not in log.read_text()
    assert forwarded not in log.read_text()
    for path in Path(remote_workdir).rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
            assert forwarded.encode() not in path.read_bytes(), path
    assert secret not in text
    mode = stat.S_IMODE(os.stat(remote_workdir).st_mode)
    assert mode == 0o700


def test_attempt_folders_never_leave_their_level():
    """Step names are identifiers (stepflow refuses others), but the attempt's folder name is
    made safe whatever it gets: one plain name per level, different names kept apart."""
    from stepflow_ssh._backend import attempt_dir

    from stepflow._authoring.step import StepRef
    from stepflow.backends import Task

    def folder(run: str, step: str) -> str:
        task = Task(
            run_id=run, step=step, attempt=2, ref=StepRef("m", "f"), inputs={}, params={},
            store_uri="/tmp/x",
        )  # fmt: skip
        return attempt_dir(task)

    assert folder("20261201-120000-abcdef", "train") == "attempts/20261201-120000-abcdef/train/2"
    names = set()
    for hostile in [*HOSTILE, "../..", "a/b", "/etc", ".", "", "x" * 500]:
        rel = folder(hostile, hostile)
        parts = rel.split("/")
        assert len(parts) == 4 and parts[0] == "attempts" and parts[3] == "2", rel
        for part in parts[1:3]:
            assert part not in ("", ".", "..") and len(part) <= 100, rel
            assert all(c.isalnum() or c in "_-" for c in part), rel
        names.add(rel)
    assert len(names) == len(HOSTILE) + 6
