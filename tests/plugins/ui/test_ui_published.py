"""Published pipelines and schedules in the web UI, once stepflow has publishing (issue 17's
``stepflow.publish`` and ``stepflow.schedules``); skipped in a stepflow without it."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.fixture
def published_home(ui_home, ui_project, ui_secret):
    import stepflow

    sys.modules.pop("numbers_pipeline", None)
    module = importlib.import_module("numbers_pipeline")
    try:
        stepflow.publish(module.pipe, name="numbers_pub", description="for the UI", home=ui_home)
    finally:
        sys.modules.pop("numbers_pipeline", None)
    stepflow.schedules.create(
        "nightly",
        pipeline="numbers_pub",
        cron="30 1 * * *",
        time_zone="Europe/London",
        params={"n": "3", "token": ui_secret, "fail": "env:SHOULD_FAIL"},
        home=ui_home,
    )
    return ui_home


def test_published_versions_and_schedules_with_next_fire_times(
    published_home, ui_client, ui_secret
):
    found = ui_client.get("/api/published").json()
    assert found["available"] is True
    assert [(p["name"], p["version"]) for p in found["published"]] == [("numbers_pub", 1)]
    (nightly,) = found["schedules"]
    assert nightly["name"] == "nightly" and nightly["pipeline"] == "numbers_pub"
    assert len(nightly["next"]) == 5
    assert all("01:30" in t["local"] for t in nightly["next"])
    # n has a plain default in the published version; the token is secret; env: names a variable
    assert nightly["params"] == {"n": "3", "token": "***", "fail": "env:SHOULD_FAIL"}
    page = ui_client.get("/published")
    assert "numbers_pub@1" in page.text and "nightly" in page.text
    assert 'href="/runs?schedule=nightly"' in page.text
    assert ui_secret not in page.text
    assert ui_secret not in ui_client.get("/api/published").text
