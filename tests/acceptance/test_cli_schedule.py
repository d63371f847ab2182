"""Publishing and scheduling from the command line (DESIGN §9), with real processes: real
``stepflow scheduler serve`` daemons on one home, ``kill -9`` of a daemon in the middle of a
tick, exported timers claiming the same tick rows, and data triggers on a local folder and on
an S3 API (moto)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepflow._storage.scheduledb import ScheduleDB

FLOW = """
import os
import time
from pathlib import Path

from stepflow import Param, Pipeline, step

VERSION = "one"


@step(cache=False)
def stamp(out: Param[str] = "out", label: Param[str] = "x") -> str:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    gate = os.environ.get("GATE")
    if gate:
        # Tests hold the run here, mid-tick, until they create the gate file.
        Path(gate + ".started").write_text(str(os.getpid()))
        while not Path(gate).exists():
            time.sleep(0.05)
    path = folder / f"{label}.txt"
    path.write_text(VERSION)
    return str(path)


pipe = Pipeline("stamp", [stamp])
"""

#: the seed's times, in UTC so that the expected file names are easy to read
TWICE_DAILY = [
    "--frequency", "day", "--hours", "1,13", "--minutes", "30",
    "--start", "2026-03-28T00:00Z", "--param", "label={tick}",
]  # fmt: skip


def ok(out):
    assert out.ret == 0, f"exit {out.ret}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out


def _publish(runner):
    runner.makepyfile(flow=FLOW)
    ok(runner.run("publish", "flow.py:pipe", "--name", "stamp"))
    return runner


@pytest.fixture
def published(stepflow_runner):
    """``flow.py:pipe`` published as ``stamp``."""
    return _publish(stepflow_runner)


@pytest.fixture(scope="class")
def published_for_mistakes(tmp_path_factory):
    """``published``, made once for a class's bad-input cases (a publish is a process of
    its own, seconds each): every case exits 2 and stores nothing, so they can share it."""
    from stepflow.testing import StepflowRunner

    project = tmp_path_factory.mktemp("project")
    return _publish(StepflowRunner(project, tmp_path_factory.mktemp("stepflow-home")))


def runs(runner) -> list[dict]:
    out = runner.run("runs", "list", "--json")
    if out.ret == 2 and "no run records" in out.stderr:
        return []
    return json.loads(ok(out).stdout)


def ticks(runner, name: str) -> list[dict]:
    data = json.loads(ok(runner.run("schedule", "show", name, "--json", "--count", "0")).stdout)
    return data["last_runs"]


def stepflow_cmd(runner, *args: str) -> list[str]:
    return [sys.executable, "-m", "stepflow", *args]


def start_daemon(runner, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        stepflow_cmd(runner, "scheduler", "serve", *args),
        cwd=runner.path,
        env={**os.environ, "STEPFLOW_HOME": str(runner.home), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate, timeout: float = 60.0, what: str = "it") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class TestPublish:
    def test_versions_and_identical_content(self, published):
        """Identical content returns the existing version; changed code makes the next."""
        again = ok(published.run("publish", "flow.py:pipe", "--name", "stamp", "--json"))
        data = json.loads(again.stdout)
        assert (data["ref"], data["new"]) == ("stamp@1", False)
        assert data["target"] == "flow.py:pipe"
        assert "stepflow" in data["packages"]
        assert data["params"]["label"] == {"stamp": "x"}
        published.makepyfile(flow=FLOW.replace('VERSION = "one"', 'VERSION = "two"'))
        out = ok(published.run("publish", "flow.py:pipe", "--name", "stamp"))
        assert out.stdout.strip() == "stamp@2"
        listed = json.loads(ok(published.run("published", "list", "--json")).stdout)
        assert [(p["name"], p["version"]) for p in listed] == [("stamp", 2)]
        shown = ok(published.run("published", "show", "stamp", "--version", "1"))
        assert "stamp@1  (2 versions)" in shown.stdout

    def test_runs_from_the_snapshot_not_the_working_tree(self, published):
        """``run NAME@1`` runs version 1's code after the file was edited; ``run NAME`` the
        latest version; the run records the published snapshot."""
        published.makepyfile(flow=FLOW.replace('VERSION = "one"', 'VERSION = "edited"'))
        ok(published.run("run", "stamp@1", "--param", "label=a"))
        assert (published.path / "out" / "a.txt").read_text() == "one"
        ok(published.run("run", "stamp", "--param", "label=b"))
        assert (published.path / "out" / "b.txt").read_text() == "one"  # still only v1
        ok(published.run("publish", "flow.py:pipe", "--name", "stamp"))
        ok(published.run("run", "stamp", "--param", "label=c"))
        assert (published.path / "out" / "c.txt").read_text() == "edited"
        first = runs(published)[-1]
        assert first["target"] == "stamp@1"
        snapshot = json.loads(ok(published.run("published", "show", "stamp@1", "--json")).stdout)
        assert first["source_hash"] == snapshot["snapshot"]

    def test_python_api(self, stepflow_runner, stepflow_home, tmp_path, monkeypatch):
        """``stepflow.publish(pipeline, name=...)`` and ``stepflow.published.get``."""
        import stepflow

        stepflow_runner.makepyfile(apiflow=FLOW)
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
        import apiflow

        first = stepflow.publish(apiflow.pipe, name="api_stamp", description="from Python")
        assert (first.ref, first.target, first.description) == (
            "api_stamp@1",
            "apiflow.py:pipe",
            "from Python",
        )
        assert stepflow.publish(apiflow.pipe, name="api_stamp").version == 1
        # The command line, naming it as a module, publishes the same content.
        cli = ok(stepflow_runner.run("publish", "apiflow:pipe", "--name", "api_stamp"))
        assert cli.stdout.strip() == "api_stamp@1"
        assert stepflow.published.get("api_stamp").snapshot == first.snapshot
        with pytest.raises(stepflow.errors.UsageError, match="has no version 3"):
            stepflow.published.get("api_stamp", version=3)
        ok(stepflow_runner.run("run", "api_stamp", "--param", "label=api"))
        assert (tmp_path / "out" / "api.txt").read_text() == "one"
        del sys.modules["apiflow"]

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["publish", "flow.py:pipe", "--name", "bad name"], "*published name*not valid*"),
            (["publish", "nope.py:pipe", "--name", "x"], "*no module or file named 'nope.py'*"),
            (["run", "nothing@1"], "*no pipeline named 'nothing' is published*"),
            (["run", "stamp@9"], "*published pipeline 'stamp' has no version 9*"),
            (["published", "show", "zzz"], "*no pipeline named 'zzz' is published*"),
        ],
    )
    def test_bad_input(self, published_for_mistakes, args, message):
        out = published_for_mistakes.run(*args)
        assert out.ret == 2, out.stderr
        out.fnmatch_lines([f"stepflow: error: {message}"], stream="stderr")


class TestScheduleCommands:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--frequency", "day", "--hours", "25"], "hours: 25 is out of range*0 to 23"),
            (["--frequency", "day", "--time-zone", "Mars/Base"], "unknown time zone 'Mars/Base'*"),
            (["--cron", "61 * * * *"], "cron expression '61 * * * *': Bad minute*"),
            (["--cron", "30 1 * *"], "*has 4 fields*"),
            (["--frequency", "hour", "--hours", "1"], "hours need frequency day or week*"),
            (["--frequency", "day", "--param", "nosuch=1"], "*has no parameter 'nosuch'*"),
            (["--frequency", "day", "--catchup", "sometimes"], "--catchup 'sometimes' is not*"),
            (["--frequency", "day", "--overlap", "maybe"], "--overlap 'maybe' is not one of*"),
            (["--frequency", "day", "--max-catchup", "0"], "--max-catchup must be*"),
            ([], "a schedule needs a time rule*or a data trigger*"),
            (["--cron", "0 * * * *", "--hours", "1"], "--cron cannot be combined with --hours*"),
            (["--frequency", "day", "--on-dataset", "d"], "*and only one of them"),
            (["--frequency", "day", "--start", "soon"], "start 'soon' is not an ISO 8601*"),
        ],
    )
    def test_bad_input_exit_2_nothing_stored(self, published_for_mistakes, args, message):
        """Each mistake is named; exit 2; no schedule is stored."""
        runner = published_for_mistakes
        out = runner.run("schedule", "create", "s", "--pipeline", "stamp", *args)
        assert out.ret == 2, out.stdout + out.stderr
        out.fnmatch_lines([f"stepflow: error: {message}"], stream="stderr")
        assert json.loads(ok(runner.run("schedule", "list", "--json")).stdout) == []

    def test_unknown_pipeline(self, stepflow_runner):
        out = stepflow_runner.run(
            "schedule", "create", "s", "--pipeline", "nope", "--frequency", "day"
        )
        assert out.ret == 2
        out.fnmatch_lines(["*no pipeline named 'nope' is published*"], stream="stderr")
        assert not (stepflow_runner.home / "schedules.db").exists() or not json.loads(
            ok(stepflow_runner.run("schedule", "list", "--json")).stdout
        )

    def test_show_list_pause_resume_delete(self, published):
        ok(
            published.run(
                "schedule", "create", "twice_daily", "--pipeline", "stamp",
                "--frequency", "day", "--hours", "1,13", "--minutes", "30",
                "--time-zone", "Europe/London", "--start", "2026-01-01T00:00",
            )
        )  # fmt: skip
        out = ok(
            published.run(
                "schedule", "show", "twice_daily", "--after", "2026-03-28T12:00Z",
                "--count", "3", "--json",
            )
        )  # fmt: skip
        assert json.loads(out.stdout)["next"] == [
            {"local": "2026-03-28T13:30:00+00:00", "utc": "2026-03-28T13:30:00Z"},
            {"local": "2026-03-29T02:00:00+01:00", "utc": "2026-03-29T01:00:00Z"},
            {"local": "2026-03-29T13:30:00+01:00", "utc": "2026-03-29T12:30:00Z"},
        ]
        text = ok(published.run("schedule", "show", "twice_daily"))
        text.fnmatch_lines(["schedule twice_daily (active): every day at hours 1,13 minutes 30*"])
        ok(published.run("schedule", "pause", "twice_daily"))
        listed = ok(published.run("schedule", "list"))
        listed.fnmatch_lines(["twice_daily *stamp *every day*paused*"])
        ok(published.run("schedule", "resume", "twice_daily"))
        assert not json.loads(ok(published.run("schedule", "list", "--json")).stdout)[0]["paused"]
        ok(published.run("schedule", "delete", "twice_daily"))
        out = published.run("schedule", "show", "twice_daily")
        assert out.ret == 2
        out.fnmatch_lines(["*no schedule named 'twice_daily'; schedules: none*"], stream="stderr")

    def test_export_refuses_what_cron_cannot_say(self, published):
        ok(
            published.run(
                "schedule", "create", "odd", "--pipeline", "stamp", "--frequency", "minute",
                "--interval", "7",
            )
        )  # fmt: skip
        out = published.run("schedule", "export", "odd", "--format", "cron")
        assert out.ret == 2
        out.fnmatch_lines(["*every 7 minutes*cannot be written in cron*"], stream="stderr")

    def test_export_systemd_files(self, published, tmp_path):
        ok(published.run("schedule", "create", "daily", "--pipeline", "stamp", *TWICE_DAILY))
        folder = str(tmp_path / "u")
        out = ok(published.run("schedule", "export", "daily", "--format", "systemd", "-o", folder))
        assert sorted(Path(p).name for p in out.stdout.split()) == [
            "stepflow-daily.service",
            "stepflow-daily.timer",
        ]
        timer = (tmp_path / "u" / "stepflow-daily.timer").read_text()
        assert "OnCalendar=*-*-* 01,13:30:00 UTC" in timer


class TestTicks:
    def test_daemon_once_runs_due_ticks_tagged(self, published):
        """The test clock at 01:31 runs the 01:30 tick once; the run carries schedule and
        tick; the same instant again runs nothing."""
        ok(published.run("schedule", "create", "daily", "--pipeline", "stamp", *TWICE_DAILY))
        out = ok(published.run("scheduler", "serve", "--once", "--now", "2026-03-28T01:31Z"))
        assert "tick 2026-03-28T01:30:00Z started" in out.stdout
        assert (published.path / "out" / "20260328T0130Z.txt").read_text() == "one"
        ok(published.run("scheduler", "serve", "--once", "--now", "2026-03-28T01:31Z"))
        (run,) = runs(published)
        assert run["tags"] == {
            "schedule": "daily",
            "tick": "2026-03-28T01:30:00Z",
            "tick_attempt": "1",
        }
        assert [(t["tick"], t["state"], t["run_id"]) for t in ticks(published, "daily")] == [
            ("2026-03-28T01:30:00Z", "succeeded", run["id"])
        ]

    def test_timer_and_daemon_claim_the_same_row(self, published):
        """``run PUB --tick`` (what cron and systemd call) and the daemon share tick rows."""
        ok(published.run("schedule", "create", "daily", "--pipeline", "stamp", *TWICE_DAILY))
        tick = "daily@2026-03-28T13:30:00Z"
        ok(published.run("run", "stamp", "--tick", tick))
        again = ok(published.run("run", "stamp", "--tick", tick))
        assert "has succeeded already" in again.stderr
        ok(published.run("scheduler", "serve", "--once", "--now", "2026-03-28T13:31Z"))
        assert len(runs(published)) == 1
        # Without a time, --tick claims the latest fire time (the wall clock's: after March).
        ok(published.run("run", "stamp", "--tick", "daily"))
        assert len(runs(published)) == 2
        bad = published.run("run", "stamp", "--tick", "daily@2026-03-28T13:00:00Z")
        assert bad.ret == 2
        bad.fnmatch_lines(["*2026-03-28T13:00:00Z is not a fire time of schedule 'daily'*"],
                          stream="stderr")  # fmt: skip
        other = published.run("run", "flow.py:pipe", "--tick", "daily")
        assert other.ret == 2

    def test_catchup_all_runs_in_order(self, published):
        ok(
            published.run(
                "schedule", "create", "daily", "--pipeline", "stamp", *TWICE_DAILY,
                "--catchup", "all", "--max-catchup", "3",
            )
        )  # fmt: skip
        ok(published.run("scheduler", "serve", "--once", "--now", "2026-03-30T02:00Z"))
        files = sorted(p.name for p in (published.path / "out").iterdir())
        assert files == ["20260329T0130Z.txt", "20260329T1330Z.txt", "20260330T0130Z.txt"]
        started = [r["tags"]["tick"] for r in sorted(runs(published), key=lambda r: r["started"])]
        assert started == ["2026-03-29T01:30:00Z", "2026-03-29T13:30:00Z", "2026-03-30T01:30:00Z"]

    @pytest.mark.slow
    def test_two_daemons_one_home(self, published):
        """Two daemons race for ten due ticks at once, then two long-running daemons meet at
        one fire time: every tick runs exactly once, and SIGTERM stops both cleanly."""
        ok(
            published.run(
                "schedule", "create", "often", "--pipeline", "stamp", "--frequency", "minute",
                "--start", "2026-03-28T00:00Z", "--catchup", "all", "--param", "label={tick}",
            )
        )  # fmt: skip
        racers = [start_daemon(published, "--once", "--now", "2026-03-28T00:10:30Z")]
        racers.append(start_daemon(published, "--once", "--now", "2026-03-28T00:10:30Z"))
        outputs = [p.communicate(timeout=300)[0] for p in racers]
        assert [p.returncode for p in racers] == [0, 0], outputs
        done = [r["tags"]["tick"] for r in runs(published)]
        assert sorted(done) == [f"2026-03-28T00:{m:02d}:00Z" for m in range(1, 11)]
        assert len(list((published.path / "out").glob("*.txt"))) == 10

        # Long-running daemons, their clocks two seconds before the next fire time.
        serving = [
            start_daemon(published, "--now", "2026-03-28T00:10:58Z", "--interval", "0.2")
            for _ in range(2)
        ]
        target = published.path / "out" / "20260328T0011Z.txt"
        wait_for(target.exists, what="the 00:11 tick's run")
        wait_for(
            lambda: [t["state"] for t in ticks(published, "often")][:1] == ["succeeded"],
            what="the 00:11 tick to be recorded",
        )
        for daemon in serving:
            daemon.send_signal(signal.SIGTERM)
        stopped = [d.communicate(timeout=60)[0] for d in serving]
        assert [d.returncode for d in serving] == [0, 0], stopped
        assert all("scheduler stopped" in text for text in stopped)
        assert sum("tick 2026-03-28T00:11:00Z started" in text for text in stopped) == 1
        assert [r["tags"]["tick"] for r in runs(published)].count("2026-03-28T00:11:00Z") == 1

    @pytest.mark.slow
    def test_overlap_skip_and_queue(self, published, tmp_path):
        """A tick that comes due while its schedule's run still runs: ``skip`` records it as
        skipped, ``queue`` runs it when that run ends."""
        for name, policy in (("skipper", "skip"), ("queuer", "queue")):
            ok(
                published.run(
                    "schedule", "create", name, "--pipeline", "stamp", "--frequency",
                    "minute", "--start", "2026-03-28T00:00:30Z", "--overlap", policy,
                    "--param", "label={schedule}-{tick}",
                )
            )  # fmt: skip
        gate = tmp_path / "gate"
        daemon = start_daemon(
            published, "--now", "2026-03-28T00:00:59Z", "--interval", "0.2",
            env={"GATE": str(gate)},
        )  # fmt: skip
        started = Path(str(gate) + ".started")
        wait_for(started.exists, what="the 00:01 runs to start")
        out = ok(published.run("scheduler", "serve", "--once", "--now", "2026-03-28T00:02:05Z"))
        assert "schedule skipper: tick 2026-03-28T00:02:00Z skipped" in out.stdout
        assert "schedule queuer: tick 2026-03-28T00:02:00Z queued" in out.stdout
        gate.write_text("open")
        done = published.path / "out" / "queuer-20260328T0002Z.txt"
        wait_for(done.exists, what="the queued tick to run")
        wait_for(
            lambda: ticks(published, "queuer")[0]["state"] == "succeeded",
            what="the queued tick to be recorded",
        )
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
        assert daemon.returncode == 0
        skipped = ticks(published, "skipper")
        assert [(t["tick"], t["state"]) for t in skipped] == [
            ("2026-03-28T00:02:00Z", "skipped"),
            ("2026-03-28T00:01:00Z", "succeeded"),
        ]
        assert "overlap" in skipped[0]["detail"]
        assert not (published.path / "out" / "skipper-20260328T0002Z.txt").exists()

    def test_paused_schedule_is_not_run(self, published):
        ok(published.run("schedule", "create", "daily", "--pipeline", "stamp", *TWICE_DAILY))
        ok(published.run("schedule", "pause", "daily"))
        ok(published.run("scheduler", "serve", "--once", "--now", "2026-03-28T01:31Z"))
        out = ok(published.run("run", "stamp", "--tick", "daily@2026-03-28T01:30:00Z"))
        assert "schedule 'daily' is paused" in out.stderr
        assert runs(published) == []

    @pytest.mark.slow
    @pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="runs die with their daemon on Linux only"
    )
    def test_kill_9_mid_tick_is_resumed(self, published, tmp_path):
        """A daemon killed with -9 while its tick runs: its run dies with it, and the next
        daemon resumes the same tick row (attempt 2) instead of making a new one."""
        ok(published.run("schedule", "create", "daily", "--pipeline", "stamp", *TWICE_DAILY))
        gate = tmp_path / "gate"
        daemon = start_daemon(
            published, "--now", "2026-03-28T01:29:59Z", "--interval", "0.2",
            env={"GATE": str(gate)},
        )  # fmt: skip
        started = Path(str(gate) + ".started")
        wait_for(started.exists, what="the tick's run to start")
        run_pid = int(started.read_text())
        daemon.kill()
        daemon.communicate(timeout=60)

        def gone() -> bool:
            try:
                os.kill(run_pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(gone, what="the run to die with its daemon")
        (tick,) = ticks(published, "daily")
        assert tick["state"] in ("claimed", "running") and tick["attempts"] == 1
        gate.write_text("open")
        out = ok(published.run("scheduler", "serve", "--once", "--now", "2026-03-28T01:31Z"))
        assert "tick 2026-03-28T01:30:00Z: resumed" in out.stdout
        (tick,) = ticks(published, "daily")
        assert (tick["state"], tick["attempts"]) == ("succeeded", 2)
        states = sorted((r["state"], r["tags"]["tick_attempt"]) for r in runs(published))
        assert states == [("interrupted", "1"), ("succeeded", "2")]

    def test_claim_of_a_dead_daemon_is_resumed(self, published):
        """Killed between its claim and its run's start: the claim alone is resumed."""
        ok(published.run("schedule", "create", "daily", "--pipeline", "stamp", *TWICE_DAILY))
        import socket

        dead = f"{socket.gethostname()}:{2**22 + 12345}:dead"  # above Linux's pid_max default
        with ScheduleDB(published.home) as db:
            sched = db.schedule("daily")
            made = db.claim(sched.id, [("2026-03-28T01:30:00Z", 0.0, "claimed")], owner=dead,
                            cursor=4e9)  # fmt: skip
            assert len(made) == 1
        out = ok(published.run("scheduler", "serve", "--once", "--now", "2026-03-28T01:31Z"))
        assert "resumed" in out.stdout
        (tick,) = ticks(published, "daily")
        assert (tick["tick"], tick["state"], tick["attempts"]) == (
            "2026-03-28T01:30:00Z",
            "succeeded",
            1,
        )


class TestDataTriggers:
    def test_on_change_local_folder(self, published):
        """Files added between two polls make one run; an unchanged folder none."""
        data = published.path / "incoming"
        data.mkdir()
        ok(
            published.run(
                "schedule", "create", "fresh", "--pipeline", "stamp", "--on-change",
                str(data), "--poll", "1", "--param", "label=change-{tick}",
            )
        )  # fmt: skip
        ok(published.run("scheduler", "serve", "--once"))
        assert runs(published) == []
        (data / "a.csv").write_text("1")
        (data / "b.csv").write_text("2")
        ok(published.run("scheduler", "serve", "--once"))
        ok(published.run("scheduler", "serve", "--once"))
        (run,) = runs(published)
        assert run["tags"]["schedule"] == "fresh"
        assert run["tags"]["change"] and run["tags"]["tick"].startswith("change:")
        # Back to an earlier state (the same files, sizes and times) is a change too.
        stamp = (data / "b.csv").stat().st_mtime_ns
        (data / "b.csv").unlink()
        ok(published.run("scheduler", "serve", "--once"))
        (data / "b.csv").write_text("2")
        os.utime(data / "b.csv", ns=(stamp, stamp))
        ok(published.run("scheduler", "serve", "--once"))
        changes = [r["tags"]["change"] for r in sorted(runs(published), key=lambda r: r["started"])]
        assert len(changes) == 3 and changes[0] == changes[2] != changes[1]

    def test_on_dataset(self, published):
        """Two new versions seen in one poll make one run, which records the version."""
        import stepflow

        data = published.path / "houses.csv"
        data.write_text("a\n1\n")
        stepflow.datasets.register("houses", data, home=published.home)
        ok(
            published.run(
                "schedule", "create", "on_houses", "--pipeline", "stamp",
                "--on-dataset", "houses",
            )
        )  # fmt: skip
        for rows in ("a\n2\n", "a\n3\n"):
            data.write_text(rows)
            stepflow.datasets.register("houses", data, home=published.home)
        ok(published.run("scheduler", "serve", "--once"))
        ok(published.run("scheduler", "serve", "--once"))
        (run,) = runs(published)
        assert run["tags"]["dataset"] == "houses@v3"

    @pytest.mark.slow
    def test_s3_store(self, stepflow_runner, s3_server):
        """With an S3 store: publishing stores the snapshot there, and both data triggers
        watch S3 (a prefix of objects, and a data set registered in the store)."""
        import stepflow

        stepflow_runner.makepyfile(flow=FLOW)
        (stepflow_runner.path / "pyproject.toml").write_text(s3_server.pyproject())
        ok(stepflow_runner.run("publish", "flow.py:pipe", "--name", "stamp"))
        fs = s3_server.fs()
        assert fs.find(f"{s3_server.bucket}/stepflow/docs/source/snapshots") or fs.find(
            f"{s3_server.bucket}/stepflow"
        )
        url = f"s3://{s3_server.bucket}/incoming"
        ok(
            stepflow_runner.run(
                "schedule", "create", "s3change", "--pipeline", "stamp", "--on-change", url,
                "--param", "label=s3",
            )
        )  # fmt: skip
        ok(stepflow_runner.run("schedule", "create", "s3data", "--pipeline", "stamp",
                               "--on-dataset", "houses", "--param", "label=ds"))  # fmt: skip
        ok(stepflow_runner.run("scheduler", "serve", "--once"))
        assert runs(stepflow_runner) == []
        fs.pipe(f"{s3_server.bucket}/incoming/part-1.csv", b"1")
        fs.pipe(f"{s3_server.bucket}/incoming/part-2.csv", b"2")
        data = stepflow_runner.path / "houses.csv"
        data.write_text("a\n1\n")
        from stepflow._config import load_config

        config = load_config(stepflow_runner.path, home=stepflow_runner.home)
        stepflow.datasets.register("houses", data, config=config)
        ok(stepflow_runner.run("scheduler", "serve", "--once"))
        tags = sorted(
            (r["tags"]["schedule"], r["tags"].get("dataset")) for r in runs(stepflow_runner)
        )
        assert tags == [("s3change", None), ("s3data", "houses@v1")]
