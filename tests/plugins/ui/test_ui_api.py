"""The web UI's JSON API and pages through Starlette's test client, over real runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


def _runs(client, **params):
    answer = client.get("/api/runs", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_runs_are_listed_newest_first_and_filtered(ui_client):
    found = _runs(ui_client)
    assert found["total"] == 3
    assert [r["state"] for r in found["runs"]] == ["failed", "succeeded", "succeeded"]
    assert found["pipelines"] == ["numbers"]
    assert re.match(r"\d{4}-\d\d-\d\dT", found["runs"][0]["started"])  # ISO 8601
    assert [r["state"] for r in _runs(ui_client, state="failed")["runs"]] == ["failed"]
    assert _runs(ui_client, pipeline="other")["total"] == 0
    assert _runs(ui_client, schedule="nightly")["total"] == 0
    page = _runs(ui_client, limit=1, offset=1)
    assert page["total"] == 3 and [r["id"] for r in page["runs"]] == [found["runs"][1]["id"]]


def test_bad_filters_are_clear_errors(ui_client):
    answer = ui_client.get("/api/runs", params={"state": "done"})
    assert answer.status_code == 400
    assert "unknown run state 'done'" in answer.json()["error"]
    assert ui_client.get("/api/runs", params={"limit": "x"}).status_code == 400
    missing = ui_client.get("/api/runs/nosuchrun")
    assert missing.status_code == 404 and "no run 'nosuchrun'" in missing.json()["error"]
    page = ui_client.get("/runs/nosuchrun")
    assert page.status_code == 404 and "no run" in page.text
    assert ui_client.get("/api/compare", params={"a": "last"}).status_code == 400


def test_a_run_has_its_graph_states_timings_and_masked_params(ui_client):
    runs = _runs(ui_client)["runs"]
    first = ui_client.get(f"/api/runs/{runs[2]['id']}").json()
    assert {s["name"]: s["state"] for s in first["steps"]} == {
        "raw": "ran",
        "features": "ran",
        "model": "ran",
        "report": "ran",
    }
    assert sorted(map(tuple, first["edges"])) == [
        ("features", "model"),
        ("model", "report"),
        ("raw", "features"),
    ]
    assert first["params"]["token"] == "***" and first["params"]["n"] == 4
    assert all(s["duration"] is not None for s in first["steps"])
    second = ui_client.get(f"/api/runs/{runs[1]['id']}").json()
    assert {s["state"] for s in second["steps"]} == {"reused"}
    assert {s["reused_from"] for s in second["steps"]} == {first["id"]}
    failed = ui_client.get(f"/api/runs/{runs[0]['id']}").json()
    states = {s["name"]: s["state"] for s in failed["steps"]}
    assert states == {"raw": "ran", "features": "ran", "model": "failed", "report": "skipped"}


def test_the_run_page_draws_the_graph_with_states_and_reused_badges(ui_client):
    runs = _runs(ui_client)["runs"]
    page = ui_client.get(f"/runs/{runs[1]['id']}")
    assert page.status_code == 200
    drawn = dict(re.findall(r'data-step="([^"]+)" data-state="([^"]+)"', page.text))
    assert drawn == dict.fromkeys(["raw", "features", "model", "report"], "reused")
    assert page.text.count('class="sf-badge"') == 4  # one badge per reused step
    assert f'href="/runs/{runs[1]["id"]}/steps/model"' in page.text
    assert "numbers_pipeline.py" in page.text  # the code snapshot's files
    svg = ui_client.get(f"/runs/{runs[0]['id']}/graph.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert 'data-step="model" data-state="failed"' in svg.text


def test_a_step_page_has_log_metrics_key_parts_and_lineage(ui_client):
    first = _runs(ui_client)["runs"][2]["id"]
    step = ui_client.get(f"/api/runs/{first}/steps/features").json()
    assert [v["value"] for v in step["metrics"]["loss"]] == [1.0, 0.5, 1 / 3, 0.25]
    assert step["cache_key_parts"] and set(step["cache_key_parts"]) >= {"code", "inputs"}
    ins = [io for io in step["io"] if io["direction"] == "in"]
    assert [io["name"] for io in ins] == ["raw"]
    page = ui_client.get(f"/runs/{first}/steps/features").text
    assert page.count('<svg class="chart"') == 2  # over steps, and across runs
    assert f'href="/lineage/{ins[0]["content_hash"]}"' in page
    lineage = ui_client.get(f"/api/lineage/{ins[0]['content_hash']}").json()
    assert (lineage["run"], lineage["step"]) == (first, "raw")
    assert f"/runs/{first}/steps/raw" in ui_client.get(f"/lineage/{ins[0]['content_hash']}").text
    log = ui_client.get(f"/api/runs/{first}/steps/raw/log").json()
    assert any("making 4 numbers" in e["text"] for e in log)
    assert "making 4 numbers" in ui_client.get(f"/runs/{first}/steps/raw").text


def test_metrics_across_runs_follow_the_pipeline(ui_client):
    runs = _runs(ui_client)["runs"]
    failed = ui_client.get(f"/api/runs/{runs[0]['id']}/steps/features").json()
    history = failed["metric_history"]["loss"]
    # the first and the failed run ran `features`; the second reused it and logged nothing
    assert [h["run"] for h in history] == [runs[2]["id"], runs[0]["id"]]
    assert [h["value"] for h in history] == [0.25, 0.2]


def test_compare_two_runs(ui_client):
    runs = _runs(ui_client)["runs"]
    diff = ui_client.get("/api/compare", params={"a": runs[2]["id"], "b": runs[0]["id"]}).json()
    assert diff["params"]["n"] == [4, 5] and diff["params"]["fail"] == [False, True]
    assert "token" not in diff["params"]  # masked on both sides, so the same
    assert diff["steps"]["model"]["b"] == "failed"
    page = ui_client.get("/compare", params={"a": runs[2]["id"], "b": runs[0]["id"]}).text
    assert "Parameters that differ" in page and ">fail<" in page
    bad = ui_client.get("/compare", params={"a": "nope", "b": "last"})
    assert bad.status_code == 404 and "no run &#x27;nope&#x27;" in bad.text


def test_no_page_or_answer_contains_the_secret(ui_client, ui_secret):
    """Every page and API answer of every run and step, the logs and the failed step's error
    (which printed and raised with the token) included."""
    urls = ["/runs", "/api/runs", "/datasets", "/models", "/published", "/api/published"]
    for run in _runs(ui_client)["runs"]:
        rid = run["id"]
        urls += [f"/runs/{rid}", f"/api/runs/{rid}", f"/runs/{rid}/graph.svg"]
        urls += [f"/api/runs/{rid}/source", f"/runs/{rid}/source/numbers_pipeline.py"]
        for name in ("raw", "features", "model", "report"):
            urls += [f"/runs/{rid}/steps/{name}", f"/api/runs/{rid}/steps/{name}"]
            urls += [f"/api/runs/{rid}/steps/{name}/log"]
    seen_mask = False
    for url in urls:
        answer = ui_client.get(url)
        assert answer.status_code == 200, (url, answer.text[:300])
        assert ui_secret not in answer.text, url
        seen_mask = seen_mask or "using token ***" in answer.text
    assert seen_mask  # the step printed the token, and its log shows it masked
    failed = _runs(ui_client, state="failed")["runs"][0]["id"]
    model = ui_client.get(f"/api/runs/{failed}/steps/model").json()
    assert model["error"] == "ValueError: bad token ***" or "bad token ***" in model["error"]


def test_code_snapshot_files_are_served(ui_client, ui_project: Path):
    rid = _runs(ui_client)["runs"][2]["id"]
    files = ui_client.get(f"/api/runs/{rid}/source").json()
    assert [f["path"] for f in files] == ["numbers_pipeline.py"]
    page = ui_client.get(f"/runs/{rid}/source/numbers_pipeline.py")
    assert "def features(raw: list[int])" in page.text
    assert ui_client.get(f"/runs/{rid}/source/nope.py").status_code == 404


def test_event_stream_of_a_finished_run_says_done(ui_client):
    rid = _runs(ui_client)["runs"][0]["id"]
    with ui_client.stream("GET", f"/events/runs/{rid}") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        text = "".join(events.iter_text())
    assert "event: change\ndata: done" in text


def test_pages_have_no_inline_script_and_a_strict_policy(ui_client):
    page = ui_client.get("/runs")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "<script>" not in page.text  # scripts come only from /static
    assert ui_client.get("/static/htmx.min.js").status_code == 200


def test_other_host_names_are_refused_on_loopback(ui_client):
    answer = ui_client.get("/runs", headers={"host": "evil.example:8765"})
    assert answer.status_code == 400 and "answers only to" in answer.text


def test_a_token_is_required_when_set(ui_home):
    from starlette.testclient import TestClient
    from stepflow_ui.app import make_app

    from stepflow._config import load_config

    app = make_app(load_config(home=ui_home), token="tok-123", hosts=None)
    with TestClient(app, base_url="http://10.1.2.3:8765") as client:
        refused = client.get("/api/runs")
        assert refused.status_code == 401 and "needs its token" in refused.text
        assert client.get("/api/runs", headers={"authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/api/runs", headers={"authorization": "Bearer tok-123"})
        assert ok.status_code == 200 and ok.json()["total"] == 3
        entered = client.get("/runs?token=tok-123", follow_redirects=False)
        assert entered.status_code == 303 and "token" not in entered.headers["location"]
        assert client.get("/runs").status_code == 200  # the cookie carries it from now on


def test_an_empty_home_lists_no_runs(tmp_path):
    from starlette.testclient import TestClient
    from stepflow_ui.app import make_app

    from stepflow._config import load_config

    app = make_app(load_config(home=tmp_path / "empty"))
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/api/runs").json()["total"] == 0
        assert "no runs" in client.get("/runs").text
        assert client.get("/api/datasets").json() == []
    assert not (tmp_path / "empty" / "runs.db").exists()  # the UI made nothing


def test_published_and_schedules_say_when_none_exist(ui_client):
    import importlib.util

    page = ui_client.get("/published").text
    if importlib.util.find_spec("stepflow._storage.scheduledb") is None:
        assert "publishing is not available in this stepflow" in page
        assert ui_client.get("/api/published").json()["available"] is False
    else:
        assert "no pipeline has been published" in page
    assert "no schedule exists" in page


def test_data_sets_and_models_with_versions_and_aliases(ui_home, ui_client, tmp_path):
    import stepflow.datasets
    import stepflow.models

    csv = tmp_path / "houses.csv"
    csv.write_text("a,b\n1,2\n")
    stepflow.datasets.register("houses", csv, "the houses", home=ui_home)
    csv.write_text("a,b\n1,2\n3,4\n")
    stepflow.datasets.register("houses", csv, home=ui_home)
    stepflow.models.register("prices", {"w": 1}, metrics={"r2": 0.5}, home=ui_home)
    stepflow.models.register("prices", {"w": 2}, metrics={"r2": 0.7}, home=ui_home)
    stepflow.models.set_alias("prices", "production", 1, home=ui_home)
    assert [d["version"] for d in ui_client.get("/api/datasets").json()] == [2]
    versions = ui_client.get("/api/datasets/houses").json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert (
        "v2" in ui_client.get("/datasets").text and "v1" in ui_client.get("/datasets/houses").text
    )
    model = ui_client.get("/api/models/prices").json()
    assert model["aliases"] == {"production": 1}
    assert [v["metrics"]["r2"] for v in model["versions"]] == [0.5, 0.7]
    page = ui_client.get("/models/prices").text
    assert "production → v1" in page and "r2=0.7" in page
    assert ui_client.get("/api/models/nope").status_code == 404


@pytest.mark.parametrize("argv, message", [(["--port", "70000"], "give a port from 0 to 65535")])
def test_the_command_refuses_bad_options(argv, message, ui_project, capsys):
    from stepflow._surfaces.cli import main

    assert main(["ui", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_command_refuses_a_port_in_use(ui_project, capsys):
    import socket

    from stepflow._surfaces.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 2
    finally:
        taken.close()
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_a_page_made_before_a_change_is_told_at_once(ui_client):
    """The runs page carries the version of the records it was made from; its event stream
    says "change" at once when they moved on before the stream opened (no update is lost
    between the page and its stream)."""
    page = ui_client.get("/runs").text
    live = re.search(r'data-live="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert "v=" in live
    with ui_client.stream("GET", live.replace("v=", "v=0")) as events:
        for line in events.iter_lines():
            if line.startswith("event:"):
                assert line == "event: change"
                break
    finished = ui_client.get(f"/runs/{_runs(ui_client)['runs'][0]['id']}").text
    assert "data-live" not in finished  # a run that ended is not followed
