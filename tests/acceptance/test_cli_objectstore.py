"""The command line with ``store = "s3://..."`` (a real S3 API: moto on loopback)."""

from __future__ import annotations

import json
import socket
import textwrap

FLOW = """
from stepflow import step

@step
def numbers(n: int = 20_000) -> list[int]:  # past 32 KiB pickled: an object in the store
    return list(range(n))

@step
def total(numbers: list[int]) -> int:
    return sum(numbers)
"""


class TestSharedStore:
    def test_second_home_reuses_and_prunes(self, stepflow_runner, s3_server, tmp_path_factory):
        stepflow_runner.makepyfile(flow=FLOW)
        (stepflow_runner.path / "pyproject.toml").write_text(s3_server.pyproject())
        first = stepflow_runner.run("run", "flow.py")
        assert first.ret == 0, first.stderr
        first.fnmatch_lines(["*2 ran in*"])

        other_home = {"STEPFLOW_HOME": str(tmp_path_factory.mktemp("second-home"))}
        second = stepflow_runner.run("run", "flow.py", env=other_home)
        assert second.ret == 0, second.stderr
        second.fnmatch_lines(["numbers *reused*", "total *reused*", "*2 reused in*"])

        listed = json.loads(stepflow_runner.run("cache", "ls", "--json", env=other_home).stdout)
        assert sorted(r["step"] for r in listed) == ["numbers", "total"]
        info = json.loads(stepflow_runner.run("cache", "info", "--json").stdout)
        assert (info["store"], info["shared"], info["results"]) == (s3_server.url(), True, 2)

        pruned = stepflow_runner.run("cache", "prune", "--all", env=other_home)
        assert pruned.ret == 0, pruned.stderr
        # `total` is small: its bytes were inside its shared record, not an object
        pruned.fnmatch_lines(["removed 2 results and 1 object*"])
        assert s3_server.fs().find(f"{s3_server.bucket}/stepflow/objects") == []

    def test_second_home_reuses_a_step_taking_a_secret(
        self, stepflow_runner, s3_server, tmp_path_factory
    ):
        """The key that hashes secrets lives in the store, so another home reuses a step
        whose key includes a secret; the key itself is never printed."""
        stepflow_runner.makepyfile(
            flow=FLOW
            + textwrap.dedent(
                """
                from stepflow import Secret

                @step
                def fetched(total: int, token: Secret[str] = "dev-token") -> int:
                    return total + len(token)
                """
            )
        )
        (stepflow_runner.path / "pyproject.toml").write_text(s3_server.pyproject())
        args = ("run", "flow.py", "--param", "token=env:API_TOKEN")
        env = {"API_TOKEN": "s3cr3t-value"}
        first = stepflow_runner.run(*args, env=env)
        assert first.ret == 0, first.stderr
        first.fnmatch_lines(["*3 ran in*"])

        other_home = {**env, "STEPFLOW_HOME": str(tmp_path_factory.mktemp("second-home"))}
        second = stepflow_runner.run(*args, env=other_home)
        assert second.ret == 0, second.stderr
        second.fnmatch_lines(["fetched *reused*", "*3 reused in*"])
        fs = s3_server.fs()
        key = fs.cat_file(fs.find(f"{s3_server.bucket}/stepflow/refs/keys")[0])
        for out in (first, second):
            for text in (out.stdout, out.stderr):
                assert key.hex() not in text and "s3cr3t-value" not in text


class TestErrors:
    def test_unreachable_endpoint(self, stepflow_runner, s3_server):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        stepflow_runner.makepyfile(flow=FLOW)
        (stepflow_runner.path / "pyproject.toml").write_text(
            s3_server.pyproject(endpoint_url=f"http://127.0.0.1:{port}")
        )
        out = stepflow_runner.run("run", "flow.py")
        assert out.ret == 2
        assert f"store {s3_server.url()} at http://127.0.0.1:{port}" in out.stderr
        assert "did not answer" in out.stderr and "Traceback" not in out.stderr

    def test_missing_bucket(self, stepflow_runner, s3_server):
        stepflow_runner.makepyfile(flow=FLOW)
        (stepflow_runner.path / "pyproject.toml").write_text(
            s3_server.pyproject(store="s3://no-such-bucket/x")
        )
        out = stepflow_runner.run("cache", "info")
        assert out.ret == 2
        assert "bucket 'no-such-bucket' does not exist" in out.stderr

    def test_unknown_scheme(self, stepflow_runner):
        stepflow_runner.makepyfile(flow=FLOW)
        out = stepflow_runner.run("run", "flow.py", env={"STEPFLOW_STORE": "nope://b/p"})
        assert out.ret == 2
        assert "no datastore plugin handles nope:// URLs" in out.stderr
