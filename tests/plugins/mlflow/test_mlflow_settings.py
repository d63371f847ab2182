"""``[tool.stepflow.mlflow]``: what it accepts, what it refuses, and how paths resolve."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from stepflow.errors import UsageError


@pytest.fixture
def settings_module(need):
    if importlib.util.find_spec("stepflow_mlflow") is None:
        need("the stepflow-mlflow plugin is not installed: pip install -e plugins/stepflow-mlflow")
    from stepflow_mlflow import _settings

    return _settings


def _read(module, table, rootdir=Path("/project"), environ=None):
    settings = {} if table is None else {"mlflow": table}
    return module.read_settings(settings, rootdir, environ or {})


class TestRead:
    def test_no_table_no_mirroring(self, settings_module):
        """Without the table (and without the variable) the plugin does nothing."""
        assert _read(settings_module, None) is None

    def test_relative_sqlite_path_is_from_the_project(self, settings_module, tmp_path):
        """``sqlite:///mlflow.db`` is the project's database, wherever stepflow starts."""
        found = _read(settings_module, {"tracking_uri": "sqlite:///runs/mlflow.db"}, tmp_path)
        assert found.tracking_uri == f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db"
        # Artifacts of the experiments the plugin makes go beside the database.
        assert found.artifact_location == (tmp_path.resolve() / "runs" / "mlartifacts").as_uri()

    def test_absolute_and_remote_uris_are_kept(self, settings_module):
        """Absolute SQLite paths and server URIs are passed to MLflow as they are."""
        for uri in ("sqlite:////srv/mlflow.db", "http://mlflow:5000", "databricks"):
            assert _read(settings_module, {"tracking_uri": uri}).tracking_uri == uri
        remote = _read(settings_module, {"tracking_uri": "http://mlflow:5000"})
        assert remote.artifact_location is None  # the server decides

    def test_folder_store_is_made_absolute(self, settings_module, tmp_path):
        """A plain folder (MLflow's file store) is resolved from the project folder."""
        found = _read(settings_module, {"tracking_uri": "mlruns"}, tmp_path)
        assert found.tracking_uri == (tmp_path.resolve() / "mlruns").as_uri()

    def test_all_keys(self, settings_module, tmp_path):
        table = {
            "tracking_uri": "http://mlflow:5000",
            "registry_uri": "sqlite:///registry.db",
            "experiment": "house-prices",
            "artifact_location": "artifacts",
            "register_models": False,
            "connect_timeout": 2,
        }
        found = _read(settings_module, table, tmp_path)
        assert found == settings_module.Settings(
            tracking_uri="http://mlflow:5000",
            registry_uri=f"sqlite:///{tmp_path.resolve()}/registry.db",
            experiment="house-prices",
            artifact_location=(tmp_path.resolve() / "artifacts").as_uri(),
            register_models=False,
            connect_timeout=2.0,
        )

    def test_variable_overrides_and_turns_off(self, settings_module):
        """``STEPFLOW_MLFLOW_TRACKING_URI`` wins over the table, works without it, and
        ``off`` turns mirroring off."""
        env = {"STEPFLOW_MLFLOW_TRACKING_URI": "http://other:5000"}
        table = {"tracking_uri": "http://mlflow:5000"}
        assert _read(settings_module, table, environ=env).tracking_uri == "http://other:5000"
        assert _read(settings_module, None, environ=env).tracking_uri == "http://other:5000"
        off = {"STEPFLOW_MLFLOW_TRACKING_URI": "off"}
        assert _read(settings_module, table, environ=off) is None


class TestRefused:
    @pytest.mark.parametrize(
        "table, message",
        [
            ({}, 'has no tracking_uri; add tracking_uri = "sqlite:///mlflow.db"'),
            ({"tracking_uri": "sqlite:///m.db", "trackin_uri": "x"}, "unknown key 'trackin_uri'"),
            ({"tracking_uri": 5}, "tracking_uri must be a str, got int 5"),
            ({"tracking_uri": "x", "register_models": "no"}, "register_models must be a bool"),
            ({"tracking_uri": "x", "connect_timeout": True}, "connect_timeout must be a number"),
            ({"tracking_uri": "x", "connect_timeout": 0}, "connect_timeout must be more than 0"),
            ("sqlite:///m.db", "must be a table"),
        ],
    )
    def test_bad_table(self, settings_module, table, message):
        """A wrong table is a usage error naming the key and the fix."""
        with pytest.raises(UsageError, match=r"\[tool\.stepflow\.mlflow\]") as excinfo:
            settings_module.read_settings({"mlflow": table}, Path("/p"), {})
        assert message in str(excinfo.value)

    def test_the_unknown_key_message_lists_the_keys(self, settings_module):
        with pytest.raises(UsageError) as excinfo:
            _read(settings_module, {"tracking_uri": "x", "uri": "y"})
        assert "the keys are tracking_uri, registry_uri, experiment" in str(excinfo.value)


def test_shown_uri_masks_a_password(settings_module):
    shown = settings_module.shown_uri
    assert (
        shown("https://bot:pa55@mlflow.example:8443/x") == "https://bot:***@mlflow.example:8443/x"
    )
    assert shown("http://mlflow:5000") == "http://mlflow:5000"
    assert shown("sqlite:////srv/m.db") == "sqlite:////srv/m.db"


class TestClient:
    def test_client_reads_what_a_run_mirrored(self, mlflow_store, make_module):
        """``stepflow_mlflow.client()`` opens the store the project's runs go to (a relative
        path resolved from the project), with no warning from MLflow's own code."""
        import stepflow_mlflow

        from stepflow import Pipeline

        mod = make_module(
            "mlflow_client_flow",
            "from stepflow import step\n\n@step\ndef one(k: int = 2) -> int:\n    return k\n",
        )
        (mlflow_store.project / "pyproject.toml").write_text(
            '[tool.stepflow.mlflow]\ntracking_uri = "sqlite:///../mlflow/mlflow.db"\n'
        )
        result = Pipeline("client_flow", [mod.one]).run()
        client = stepflow_mlflow.client()
        experiment = client.get_experiment_by_name("client_flow")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.data.tags["stepflow.run_id"] == result.run_id
        assert run.data.params == {"k": "2"}
        assert stepflow_mlflow.settings().tracking_uri == mlflow_store.uri

    def test_client_without_the_table(self, mlflow_store):
        import stepflow_mlflow

        (mlflow_store.project / "pyproject.toml").write_text("[tool.stepflow]\n")
        with pytest.raises(UsageError, match="MLflow mirroring is off here"):
            stepflow_mlflow.client()
