"""``Pipeline.run`` from Python configures the plugins it loads, as the command line does."""

from __future__ import annotations

from stepflow import Pipeline
from stepflow._config import load_config
from stepflow._pluginmanager import make_plugin_manager

# A plugin that reads a table of its own from [tool.stepflow] and records the hooks it sees.
SETTINGS_PLUGIN = """
calls = []

def stepflow_configure(config):
    calls.append(("configure", dict(config.settings.get("watcher", {}))))

def stepflow_run_start(run):
    calls.append(("run_start", run.pipeline))

def stepflow_run_finish(run, result):
    calls.append(("run_finish", result.ok))

def stepflow_unconfigure(config):
    calls.append(("unconfigure", None))
"""

FLOW = """
from stepflow import step

@step
def one() -> int:
    return 1
"""


def _project(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[tool.stepflow.watcher]\ncolour = "green"\n')
    monkeypatch.chdir(tmp_path)


def test_configure_and_unconfigure_around_each_run(tmp_path, monkeypatch, make_module):
    """Each ``Pipeline.run`` calls ``stepflow_configure`` with the project's settings before
    the run and ``stepflow_unconfigure`` after it."""
    _project(tmp_path, monkeypatch)
    watcher = make_module("watcher_plugin", SETTINGS_PLUGIN)
    flow = make_module("watched_flow", FLOW)
    pipe = Pipeline("watched", [flow.one])
    assert pipe.run(plugins=["watcher_plugin"]).ok
    assert watcher.calls == [
        ("configure", {"colour": "green"}),
        ("run_start", "watched"),
        ("run_finish", True),
        ("unconfigure", None),
    ]
    pipe.run(plugins=["watcher_plugin"])
    assert [name for name, _ in watcher.calls].count("configure") == 2
    assert watcher.calls[-1] == ("unconfigure", None)


def test_unconfigure_after_a_failed_step(tmp_path, monkeypatch, make_module):
    """A run whose step fails still unconfigures its plugins."""
    _project(tmp_path, monkeypatch)
    watcher = make_module("watcher_plugin", SETTINGS_PLUGIN)
    flow = make_module("failing_flow", FLOW.replace("return 1", "raise ValueError('no')"))
    result = Pipeline("failing", [flow.one]).run(plugins=["watcher_plugin"])
    assert not result.ok
    assert watcher.calls[-2:] == [("run_finish", False), ("unconfigure", None)]


def test_a_given_plugin_manager_is_not_configured_again(tmp_path, monkeypatch, make_module):
    """A caller that passes its own plugin manager (the command line) configured it itself."""
    _project(tmp_path, monkeypatch)
    watcher = make_module("watcher_plugin", SETTINGS_PLUGIN)
    flow = make_module("watched_flow", FLOW)
    config = load_config(plugins=("watcher_plugin",))
    pm = make_plugin_manager(config.plugins)
    Pipeline("watched", [flow.one]).run(config=config, plugin_manager=pm)
    assert [name for name, _ in watcher.calls] == ["run_start", "run_finish"]
