"""Per-step capture of stdout, stderr and logging, also with several steps in one process."""

from __future__ import annotations

import io
import logging
import os
import sys
import threading

from stepflow._execution.capture import Captured, capturing, inline_fd_output, step_output


def test_each_thread_writes_to_its_own_step() -> None:
    results: dict[str, dict[str, str]] = {}
    barrier = threading.Barrier(2)

    def step(name: str) -> None:
        with step_output() as captured:
            barrier.wait()
            for i in range(50):
                print(f"{name} {i}")
            logging.getLogger("t").warning("%s warned", name)
        results[name] = captured.texts()

    with capturing():
        threads = [threading.Thread(target=step, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for name, other in (("a", "b"), ("b", "a")):
        lines = results[name]["stdout"].splitlines()
        assert lines == [f"{name} {i}" for i in range(50)]
        assert f"{name} warned" in results[name]["log"]
        assert f"{other} warned" not in results[name]["log"]


def test_streams_and_log_level_are_restored() -> None:
    before_out, before_err = sys.stdout, sys.stderr
    root = logging.getLogger()
    level = root.level
    with capturing(), capturing():
        assert sys.stdout is not before_out
        assert root.level <= logging.INFO
    assert sys.stdout is before_out and sys.stderr is before_err
    assert root.level == level
    assert all(type(h).__name__ != "_LogRouter" for h in root.handlers)


def test_output_outside_a_step_passes_through(capsys) -> None:
    with capturing():
        print("not in a step")
    assert capsys.readouterr().out == "not in a step\n"


def test_echo_shows_and_records(capsys) -> None:
    with capturing(), step_output(echo=True) as captured:
        print("both")
    assert captured.texts() == {"stdout": "both\n"}
    assert capsys.readouterr().out == "both\n"


def test_quiet_records_only(capsys) -> None:
    with capturing(), step_output(echo=False) as captured:
        print("only recorded")
        print("err", file=sys.stderr)
    assert captured.texts() == {"stdout": "only recorded\n", "stderr": "err\n"}
    assert capsys.readouterr() == ("", "")


def test_secrets_are_masked_and_huge_output_is_cut() -> None:
    captured = Captured()
    captured.write("stdout", "the key is hunter22\n")
    assert captured.texts(("hunter22",)) == {"stdout": "the key is ***\n"}
    big = Captured()
    chunk = "x" * 100_000
    for _ in range(30):
        big.write("stdout", chunk)
    text = big.texts()["stdout"]
    assert len(text) < 2_200_000
    assert text.endswith("more than 2,000,000 characters]\n")


def test_router_behaves_like_a_text_stream() -> None:
    target = io.StringIO()
    old = sys.stdout
    sys.stdout = target
    try:
        with capturing():
            assert sys.stdout.writable()
            assert sys.stdout.encoding
            sys.stdout.write("plain")
            sys.stdout.flush()
    finally:
        sys.stdout = old
    assert target.getvalue() == "plain"


def test_fd_output_captures_descriptors_and_child_processes(tmp_path) -> None:
    """``fd_output`` sees what bypasses ``sys.stdout``: raw writes to fd 1 and 2 and child
    processes; the files hold it while the step runs (``read_output``, after a kill) and are
    emptied when it ends; the descriptors are restored."""
    import os
    import subprocess

    from stepflow._execution.capture import fd_output, read_output

    with capturing(), step_output(secrets=("s3cret",)) as captured:
        with fd_output(tmp_path, captured):
            print("from python")
            os.write(1, b"raw fd 1\n")
            subprocess.run([sys.executable, "-c", "print('from a child')"], check=True)
            subprocess.run(
                [sys.executable, "-c", "import sys; print('child err s3cret', file=sys.stderr)"],
                check=True,
            )
            while_running = read_output(tmp_path, ("s3cret",))
    texts = captured.texts(("s3cret",))
    assert texts["stdout"].splitlines() == ["from python", "raw fd 1", "from a child"]
    assert texts["stderr"] == "child err ***\n"
    assert while_running == texts
    # emptied: whoever follows the files never takes this step's output for the next one's
    assert read_output(tmp_path) == {}
    assert not captured.fd_level


def _descriptor_target(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def test_inline_step_keeps_child_process_output(make_module, tmp_path) -> None:
    """A step run in the calling process is captured at the descriptor level: what its child
    processes print is in its log, and descriptors 1 and 2 are given back afterwards."""
    mod = make_module(
        "inline_child_flow",
        """
        import subprocess
        from stepflow import Pipeline, step

        @step
        def talk() -> int:
            print("python line")
            subprocess.run(["echo", "child line"], check=True)
            subprocess.run(["sh", "-c", "echo child err >&2"], check=True)
            return 1

        pipe = Pipeline("inline_child", [talk])
        """,
    )
    before = (_descriptor_target(1), _descriptor_target(2))
    result = mod.pipe.run(home=tmp_path / "home")
    logs = result.steps["talk"].logs
    assert logs["stdout"] == "python line\nchild line\n"
    assert logs["stderr"] == "child err\n"
    assert (_descriptor_target(1), _descriptor_target(2)) == before


def test_only_one_step_of_a_process_holds_the_descriptors(tmp_path) -> None:
    """Two steps capturing at once in one process (two runs in two threads): the second falls
    back to the Python-level capture instead of taking the descriptors from the first."""
    first_in = threading.Event()
    release = threading.Event()
    seen: dict[str, dict[str, str]] = {}

    def first() -> None:
        with capturing(), step_output() as captured, inline_fd_output():
            print("first step")
            first_in.set()
            release.wait(10)
        seen["first"] = captured.texts()

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(10)
    with capturing(), step_output() as captured, inline_fd_output():
        print("second step")
        assert not captured.fd_level
    release.set()
    thread.join(10)
    assert seen["first"] == {"stdout": "first step\n"}
    assert captured.texts() == {"stdout": "second step\n"}
