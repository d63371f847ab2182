"""``make_plugin_manager`` and the hook specifications, in process."""

from __future__ import annotations

import inspect
import os
import sys
import textwrap
import time
from pathlib import Path

import pluggy
import pytest

from stepflow import _pluginmanager, hookspecs
from stepflow._pluginmanager import BUILTIN_PLUGINS, make_plugin_manager
from stepflow._plugins.backends import LocalBackend, ProcessBackend
from stepflow._storage import kept
from stepflow._storage.kept import kept_in_home
from stepflow.errors import PluginError

HOW_TO = Path(__file__).parents[1] / "docs" / "how-to" / "write-a-plugin.md"

RECORDING = """
import stepflow

class Kind(stepflow.Backend):
    kind = "{kind}"

@stepflow.hookimpl
def stepflow_backend_types():
    return {{"{kind}": Kind}}
"""


def _kinds(pm):
    kinds = {}
    for mapping in pm.hook.stepflow_backend_types():
        for kind, factory in mapping.items():
            kinds.setdefault(kind, factory)
    return kinds


def _specs():
    return {
        name: obj
        for name, obj in vars(hookspecs).items()
        if callable(obj) and hasattr(obj, "stepflow_spec")
    }


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Write an installed distribution (a ``.dist-info`` folder) with ``stepflow`` entry points."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def make(name, entry_points, modules=None):
        info = site / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        lines = "".join(f"{ep} = {module}\n" for ep, module in entry_points.items())
        (info / "entry_points.txt").write_text(f"[stepflow]\n{lines}")
        for module, source in (modules or {}).items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))

    yield make
    for module in list(sys.modules):
        if module.startswith("fakeplugin_"):
            del sys.modules[module]


class TestBuiltins:
    def test_builtin_backends(self):
        """The built-in plugin registers the ``local`` and ``process`` backend kinds."""
        pm = make_plugin_manager(entrypoints=False)
        assert all(pm.has_plugin(name) for name in BUILTIN_PLUGINS)
        assert _kinds(pm) == {"local": LocalBackend, "process": ProcessBackend}

    def test_without_builtins(self):
        """``builtins=False`` leaves no backend kinds at all."""
        pm = make_plugin_manager(entrypoints=False, builtins=False)
        assert _kinds(pm) == {}
        assert pm.get_plugins() == set()

    def test_block_builtin(self):
        """``no:stepflow._plugins.backends`` blocks the built-in plugin like any other."""
        pm = make_plugin_manager(["no:stepflow._plugins.backends"], entrypoints=False)
        assert not pm.has_plugin("stepflow._plugins.backends")
        assert pm.is_blocked("stepflow._plugins.backends")
        assert _kinds(pm) == {}

    def test_every_hook_has_a_caller(self):
        """Each hook spec is callable on the manager, with no implementation required."""
        pm = make_plugin_manager(entrypoints=False, builtins=False)
        for name in _specs():
            assert getattr(pm.hook, name).has_spec()
        assert pm.hook.stepflow_step_finish(run=None, report=None) == []


class TestModules:
    def test_registers_module(self, make_module):
        """A module name registers that module under its own name."""
        module = make_module("fakeplugin_a", RECORDING.format(kind="aaa"))
        pm = make_plugin_manager(["fakeplugin_a"], entrypoints=False)
        assert pm.get_plugin("fakeplugin_a") is module
        assert _kinds(pm)["aaa"] is module.Kind

    def test_names_are_stripped_and_deduplicated(self, make_module):
        """Whitespace and empty names are ignored; a module named twice registers once."""
        make_module("fakeplugin_b", RECORDING.format(kind="bbb"))
        pm = make_plugin_manager(["  fakeplugin_b ", "", "fakeplugin_b"], entrypoints=False)
        assert pm.has_plugin("fakeplugin_b")
        assert len(pm.hook.stepflow_backend_types()) == 2  # the builtins and b, once

    @pytest.mark.parametrize(
        "names",
        [["no:fakeplugin_c", "fakeplugin_c"], ["fakeplugin_c", "no:fakeplugin_c"]],
    )
    def test_block_wins_in_any_order(self, make_module, names):
        """``no:NAME`` blocks a module whether it comes before or after the module's name."""
        make_module("fakeplugin_c", RECORDING.format(kind="ccc"))
        pm = make_plugin_manager(names, entrypoints=False)
        assert not pm.has_plugin("fakeplugin_c")
        assert "ccc" not in _kinds(pm)

    def test_unknown_module(self):
        """A module that cannot be imported is a ``PluginError`` carrying the name."""
        with pytest.raises(PluginError, match="'fakeplugin_missing' could not be imported") as e:
            make_plugin_manager(["fakeplugin_missing"], entrypoints=False)
        assert e.value.plugin == "fakeplugin_missing"
        assert "-p" in str(e.value)

    def test_module_with_missing_dependency(self, make_module, tmp_path):
        """A module whose own import fails says which import failed."""
        (tmp_path / "fakeplugin_dep.py").write_text("import fakeplugin_not_installed\n")
        with pytest.raises(PluginError, match="fakeplugin_not_installed") as e:
            make_plugin_manager(["fakeplugin_dep"], entrypoints=False)
        assert e.value.plugin == "fakeplugin_dep"

    def test_unknown_hook(self, make_module):
        """A hookimpl matching no spec fails ``check_pending``: a ``PluginError`` naming both."""
        make_module(
            "fakeplugin_typo",
            """
            import stepflow

            @stepflow.hookimpl
            def stepflow_stp_finish(run, report):
                pass
            """,
        )
        with pytest.raises(PluginError, match="stepflow_stp_finish") as e:
            make_plugin_manager(["fakeplugin_typo"], entrypoints=False)
        assert e.value.plugin == "fakeplugin_typo"
        assert isinstance(e.value.__cause__, pluggy.PluginValidationError)

    def test_bad_signature(self, make_module):
        """A hookimpl asking for an argument the hook does not pass is a ``PluginError``."""
        make_module(
            "fakeplugin_sig",
            """
            import stepflow

            @stepflow.hookimpl
            def stepflow_step_finish(run, report, extra):
                pass
            """,
        )
        with pytest.raises(PluginError, match="extra") as e:
            make_plugin_manager(["fakeplugin_sig"], entrypoints=False)
        assert e.value.plugin == "fakeplugin_sig"

    def test_undecorated_typo(self, make_module):
        """A ``stepflow_*`` function matching no hook is an error even without the decorator."""
        make_module(
            "fakeplugin_undecorated",
            """
            def stepflow_stp_finish(run, report):
                pass
            """,
        )
        with pytest.raises(PluginError, match="stepflow_stp_finish"):
            make_plugin_manager(["fakeplugin_undecorated"], entrypoints=False)


class TestEntryPoints:
    def test_entry_point_registered_by_its_name(self, fake_dist):
        """An installed distribution's ``stepflow`` entry point registers under its name."""
        fake_dist(
            "fake-echo",
            {"fake": "fakeplugin_ep"},
            {"fakeplugin_ep": RECORDING.format(kind="fake")},
        )
        pm = make_plugin_manager()
        plugin = pm.get_plugin("fake")
        assert plugin is not None and plugin.__name__ == "fakeplugin_ep"
        assert "fake" in _kinds(pm)
        dists = {name: dist.project_name for name, dist in _distinfo(pm)}
        assert dists["fake"] == "fake-echo"

    def test_entry_point_blocked(self, fake_dist):
        """``no:NAME`` with the entry point's name keeps it from loading at all."""
        fake_dist("fake-echo", {"fake": "fakeplugin_never_imported"})
        pm = make_plugin_manager(["no:fake"])
        assert pm.get_plugin("fake") is None
        assert "fake" not in _kinds(pm)

    def test_entrypoints_off(self, fake_dist):
        """``entrypoints=False`` ignores installed plugins."""
        fake_dist("fake-echo", {"fake": "fakeplugin_never_imported"})
        assert not make_plugin_manager(entrypoints=False).has_plugin("fake")

    def test_broken_entry_point(self, fake_dist):
        """An entry point whose module is missing is a ``PluginError`` that says how to block."""
        fake_dist("fake-broken", {"broken": "fakeplugin_gone"})
        with pytest.raises(PluginError, match="fakeplugin_gone") as e:
            make_plugin_manager()
        assert "-p no:NAME" in str(e.value)


class TestEntryPointScanKept:
    """The scan of installed plugins is kept in the home for later processes, until a
    folder of the import path changes (as an install does)."""

    @pytest.fixture(autouse=True)
    def settled(self, monkeypatch):
        # Kept only under folders unchanged for two seconds: these tests make their folders.
        monkeypatch.setattr(kept, "SETTLE_NS", -(10**12))
        monkeypatch.setattr(_pluginmanager, "_ENTRY_POINTS", None)

    @staticmethod
    def new_process(monkeypatch, *, can_scan: bool = True):
        monkeypatch.setattr(_pluginmanager, "_ENTRY_POINTS", None)
        if not can_scan:

            def no_scan():
                raise AssertionError("the installed metadata was read again")

            monkeypatch.setattr(_pluginmanager, "_scan_entry_points", no_scan)

    def test_a_later_process_reads_no_metadata(self, fake_dist, tmp_path, monkeypatch):
        fake_dist(
            "fake-echo", {"fake": "fakeplugin_ep"}, {"fakeplugin_ep": RECORDING.format(kind="fake")}
        )
        home = tmp_path / "home"
        make_plugin_manager(keep=kept_in_home(home))
        assert [p.name[:13] for p in (home / "fingerprints").iterdir()] == ["entry-points-"]
        self.new_process(monkeypatch, can_scan=False)
        pm = make_plugin_manager(keep=kept_in_home(home))
        assert pm.get_plugin("fake").__name__ == "fakeplugin_ep"
        assert {n: d.project_name for n, d in _distinfo(pm)}["fake"] == "fake-echo"
        assert {n: d.version for n, d in _distinfo(pm)}["fake"] == "1.0"

    def test_an_install_is_seen(self, fake_dist, tmp_path, monkeypatch):
        site, home = tmp_path / "site", tmp_path / "home"
        fake_dist(
            "fake-one", {"one": "fakeplugin_one"}, {"fakeplugin_one": RECORDING.format(kind="one")}
        )
        past = time.time() - 60
        os.utime(site, (past, past))
        assert make_plugin_manager(keep=kept_in_home(home)).has_plugin("one")
        self.new_process(monkeypatch)
        fake_dist(
            "fake-two", {"two": "fakeplugin_two"}, {"fakeplugin_two": RECORDING.format(kind="two")}
        )
        pm = make_plugin_manager(keep=kept_in_home(home))
        assert pm.has_plugin("one") and pm.has_plugin("two")

    def test_a_damaged_record_is_scanned_again(self, fake_dist, tmp_path, monkeypatch):
        fake_dist(
            "fake-echo", {"fake": "fakeplugin_ep"}, {"fakeplugin_ep": RECORDING.format(kind="fake")}
        )
        home = tmp_path / "home"
        make_plugin_manager(keep=kept_in_home(home))
        (kept,) = (home / "fingerprints").iterdir()
        kept.write_text(kept.read_text().replace("fakeplugin_ep", "fakeplugin_xx"))
        self.new_process(monkeypatch)
        assert (
            make_plugin_manager(keep=kept_in_home(home)).get_plugin("fake").__name__
            == "fakeplugin_ep"
        )

    def test_malformed_entry_point_value(self, fake_dist):
        fake_dist("fake-bad", {"bad": "not a module path"})
        with pytest.raises(PluginError, match="malformed entry point value"):
            make_plugin_manager()


def _distinfo(pm):
    names = {id(plugin): name for name, plugin in pm.list_name_plugin()}
    return [(names[id(plugin)], dist) for plugin, dist in pm.list_plugin_distinfo()]


class TestHookSpecs:
    def test_specs_found(self):
        """The spec module declares the registration, configuration and lifecycle hooks."""
        assert {
            "stepflow_backend_types",
            "stepflow_addoption",
            "stepflow_configure",
            "stepflow_unconfigure",
            "stepflow_run_start",
            "stepflow_step_start",
            "stepflow_step_finish",
            "stepflow_run_finish",
        } <= set(_specs())

    @pytest.mark.parametrize("name", sorted(_specs()))
    def test_spec_documented(self, name):
        """Every hook has a docstring and a ``stepflow_`` name."""
        spec = _specs()[name]
        assert name.startswith("stepflow_")
        doc = inspect.getdoc(spec)
        assert doc and len(doc.split()) >= 5

    @pytest.mark.parametrize("name", sorted(_specs()))
    def test_spec_params_documented(self, name):
        """Each hook argument is explained in its docstring, or (if shared) in some hook's."""
        specs = _specs()

        def explains(spec, param):
            doc = inspect.getdoc(spec)
            return f":param {param}:" in doc or f"``{param}``" in doc

        for param in inspect.signature(specs[name]).parameters:
            sharing = [s for s in specs.values() if param in inspect.signature(s).parameters]
            candidates = sharing if len(sharing) > 1 else [specs[name]]
            assert any(explains(spec, param) for spec in candidates), param

    def test_no_stray_functions(self):
        """Every public ``stepflow_*`` function in the spec module is a registered hook spec."""
        functions = {n for n, o in vars(hookspecs).items() if inspect.isfunction(o)}
        assert {n for n in functions if n.startswith("stepflow_")} == set(_specs())

    def test_how_to_lists_every_hook(self):
        """``docs/how-to/write-a-plugin.md`` has a row for each hook."""
        text = HOW_TO.read_text()
        for name in _specs():
            assert f"| `{name}" in text, name


BACKEND_KIND = """
import stepflow

class Kind(stepflow.Backend):
    kind = "gpu"

@stepflow.hookimpl
def stepflow_backend_types():
    return {{"gpu": {value}}}
"""


class TestOneOwner:
    """A name a registration hook gives belongs to one plugin: two is an error naming both."""

    def test_two_plugins_same_backend_kind(self, make_module):
        make_module("fakeplugin_fast", BACKEND_KIND.format(value="Kind"))
        make_module("fakeplugin_cheap", BACKEND_KIND.format(value="Kind"))
        pm = make_plugin_manager(["fakeplugin_fast", "fakeplugin_cheap"], entrypoints=False)
        with pytest.raises(PluginError, match="backend kind 'gpu'") as caught:
            _pluginmanager.backend_types(pm)
        assert "'fakeplugin_fast'" in str(caught.value)
        assert "'fakeplugin_cheap'" in str(caught.value)
        assert "-p no:NAME" in str(caught.value)

    def test_datastore_scheme_of_a_builtin(self, make_module):
        make_module(
            "fakeplugin_s3",
            """
            import stepflow

            @stepflow.hookimpl
            def stepflow_datastore_types():
                return {"s3": lambda uri, *, home, options: None}
            """,
        )
        pm = make_plugin_manager(["fakeplugin_s3"], entrypoints=False)
        with pytest.raises(PluginError, match="datastore kind 's3'") as caught:
            _pluginmanager.datastore_types(pm)
        assert "'stepflow._plugins.storage'" in str(caught.value)
        assert "'fakeplugin_s3'" in str(caught.value)

    def test_serializer_name(self, make_module):
        make_module(
            "fakeplugin_npy",
            """
            import stepflow
            from stepflow._storage.serializers import NumpySerializer

            @stepflow.hookimpl
            def stepflow_serializer_types():
                return [NumpySerializer()]
            """,
        )
        pm = make_plugin_manager(["fakeplugin_npy"], entrypoints=False)
        with pytest.raises(PluginError, match="serializer 'npy'") as caught:
            _pluginmanager.serializers_of(pm)
        assert "'fakeplugin_npy'" in str(caught.value)
        assert "'stepflow._plugins.storage'" in str(caught.value)

    def test_one_plugin_alone_is_fine(self, make_module):
        module = make_module("fakeplugin_fast", BACKEND_KIND.format(value="Kind"))
        pm = make_plugin_manager(["fakeplugin_fast"], entrypoints=False)
        assert _pluginmanager.backend_types(pm)["gpu"] is module.Kind


class TestTypeChecks:
    """What a registration hook returns is checked, and a wrong answer names plugin and hook."""

    @pytest.mark.parametrize("value", ["int", "'LocalBackend'", "42"])
    def test_backend_not_a_backend(self, make_module, value):
        make_module("fakeplugin_bad", BACKEND_KIND.format(value=value))
        pm = make_plugin_manager(["fakeplugin_bad"], entrypoints=False)
        with pytest.raises(PluginError, match="stepflow_backend_types") as caught:
            _pluginmanager.backend_types(pm)
        assert "plugin 'fakeplugin_bad'" in str(caught.value)
        assert caught.value.plugin == "fakeplugin_bad"

    def test_backend_factory_function_accepted(self, make_module):
        make_module("fakeplugin_fn", BACKEND_KIND.format(value="lambda n, o, c: Kind(n, o, c)"))
        pm = make_plugin_manager(["fakeplugin_fn"], entrypoints=False)
        assert callable(_pluginmanager.backend_types(pm)["gpu"])

    def test_backend_hook_returns_a_list(self, make_module):
        make_module(
            "fakeplugin_list",
            """
            import stepflow

            @stepflow.hookimpl
            def stepflow_backend_types():
                return ["gpu"]
            """,
        )
        pm = make_plugin_manager(["fakeplugin_list"], entrypoints=False)
        with pytest.raises(PluginError, match="returned list, not a dict"):
            _pluginmanager.backend_types(pm)

    def test_serializer_class_not_instance(self, make_module):
        make_module(
            "fakeplugin_cls",
            """
            import stepflow

            class Arrow(stepflow.Serializer):
                name = "arrow"

            @stepflow.hookimpl
            def stepflow_serializer_types():
                return [Arrow]
            """,
        )
        pm = make_plugin_manager(["fakeplugin_cls"], entrypoints=False)
        with pytest.raises(PluginError, match="a class; return an instance") as caught:
            _pluginmanager.serializers_of(pm)
        assert "plugin 'fakeplugin_cls': stepflow_serializer_types()" in str(caught.value)

    def test_datastore_factory_returns_no_datastore(self, make_module, tmp_path):
        from stepflow._storage.stores import open_datastore

        make_module(
            "fakeplugin_dav",
            """
            import stepflow

            @stepflow.hookimpl
            def stepflow_datastore_types():
                return {"dav": lambda uri, *, home, options: {"not": "a store"}}
            """,
        )
        pm = make_plugin_manager(["fakeplugin_dav"], entrypoints=False)
        home = tmp_path / "home"
        home.mkdir(mode=0o700)
        with pytest.raises(PluginError, match="returned dict, not a stepflow Datastore") as c:
            open_datastore("dav://x/y", home=home, kinds=_pluginmanager.datastore_kinds(pm))
        assert "plugin 'fakeplugin_dav'" in str(c.value)
        assert "stepflow_datastore_types" in str(c.value)

    def test_local_datastore_through_the_hook(self, tmp_path):
        from stepflow._plugins.storage import stepflow_datastore_types
        from stepflow._storage.datastore import LocalDatastore
        from stepflow._storage.stores import open_datastore

        pm = make_plugin_manager(entrypoints=False)
        assert _pluginmanager.datastore_types(pm)["local"][0] == "stepflow._plugins.storage"
        assert "local" in stepflow_datastore_types()
        home = tmp_path / "home"
        home.mkdir(mode=0o700)
        kinds = _pluginmanager.datastore_kinds(pm)
        assert isinstance(open_datastore(None, home=home, kinds=kinds), LocalDatastore)

    def test_storage_opens_only_the_kinds_it_is_given(self, tmp_path):
        """Storage sits below the plugins: it makes no plugin manager and knows no kind of
        its own, not even the local folder store; the caller hands the factories in."""
        import ast
        import inspect

        from stepflow._storage import stores
        from stepflow.errors import UsageError

        home = tmp_path / "home"
        home.mkdir(mode=0o700)
        with pytest.raises(UsageError, match="no datastore plugin handles local:// URLs"):
            stores.open_datastore(None, home=home, kinds=lambda kind: {})
        imported = {
            node.module
            for node in ast.walk(ast.parse(inspect.getsource(stores)))
            if isinstance(node, ast.ImportFrom)
        }
        assert "stepflow._pluginmanager" not in imported
        assert "LocalDatastore" not in inspect.getsource(stores)


POINT = """
import stepflow

class Point:
    def __init__(self, x, y, scratch=None):
        self.x, self.y, self.scratch = x, y, scratch

@stepflow.hookimpl
def stepflow_hashers():
    # scratch does not count: two points with the same x and y are one value
    return {Point: lambda p, hasher: hasher.add((p.x, p.y))}
"""


class TestHashers:
    def test_installed_in_worker_processes(self, make_module, stepflow_home):
        """A worker hashes the outputs it stores with the plugins' hashers too, so a value
        made in a worker has the hash it would have in the run's process, and the step that
        reads it is reused (without them its hash came from pickle, and differed)."""
        from stepflow import Pipeline, StepState

        make_module("fakeplugin_point", POINT)
        mod = make_module(
            "on_points",
            """
            import time
            from stepflow import step
            from fakeplugin_point import Point

            @step(cache=False)
            def point() -> Point:
                return Point(1, 2, scratch=time.time())  # scratch differs every time

            @step
            def total(point: Point) -> int:
                return point.x + point.y
            """,
        )
        pipe = Pipeline("p", [mod.point, mod.total])
        first = pipe.run(plugins=["fakeplugin_point"])  # both in this process
        assert first.ok and first.steps["total"].state is StepState.RAN
        again = pipe.run(plugins=["fakeplugin_point"], backends={"point": "process"})
        assert again.steps["point"].state is StepState.RAN
        assert again.steps["total"].state is StepState.REUSED

    def test_registered_when_the_manager_is_made(self, make_module):
        from stepflow._storage.hashing import hash_value

        module = make_module("fakeplugin_point", POINT)
        a, b = module.Point(1, 2, scratch=[1]), module.Point(1, 2, scratch=[2])
        make_plugin_manager(["fakeplugin_point"], entrypoints=False)
        assert hash_value(a) == hash_value(b)
        assert hash_value(a) != hash_value(module.Point(1, 3))

    def test_two_plugins_same_class(self, make_module):
        module = make_module("fakeplugin_point", POINT)
        make_module(
            "fakeplugin_point2",
            """
            import stepflow
            from fakeplugin_point import Point

            @stepflow.hookimpl
            def stepflow_hashers():
                return {Point: lambda p, hasher: hasher.add(p.x)}
            """,
        )
        with pytest.raises(PluginError, match="hasher of class 'Point'") as caught:
            make_plugin_manager(["fakeplugin_point", "fakeplugin_point2"], entrypoints=False)
        assert "'fakeplugin_point'" in str(caught.value)
        assert "'fakeplugin_point2'" in str(caught.value)
        assert module.Point  # the module stays importable

    def test_key_not_a_class(self, make_module):
        make_module(
            "fakeplugin_nokey",
            """
            import stepflow

            @stepflow.hookimpl
            def stepflow_hashers():
                return {"Point": lambda p, hasher: None}
            """,
        )
        with pytest.raises(PluginError, match=r"fakeplugin_nokey.*stepflow_hashers.*not a class"):
            make_plugin_manager(["fakeplugin_nokey"], entrypoints=False)

    def test_builtin_encoding_refused(self, make_module):
        make_module(
            "fakeplugin_int",
            """
            import stepflow

            @stepflow.hookimpl
            def stepflow_hashers():
                return {int: lambda p, hasher: None}
            """,
        )
        import stepflow._storage.hashing  # noqa: F401  (loaded: refused at once)

        with pytest.raises(PluginError, match=r"fakeplugin_int.*cannot replace the built-in"):
            make_plugin_manager(["fakeplugin_int"], entrypoints=False)


class TestStepReportMetrics:
    def test_step_finish_gets_the_logged_metrics(self, make_module, tmp_path):
        import stepflow

        plugin = make_module(
            "fakeplugin_metrics",
            """
            import stepflow

            SEEN = {}

            @stepflow.hookimpl
            def stepflow_step_finish(run, report):
                SEEN[report.name] = [(m.name, m.value, m.step) for m in report.metrics]
            """,
        )

        @stepflow.step
        def trained() -> int:
            ctx = stepflow.context()
            ctx.log_metric("loss", 0.5, step=1)
            ctx.log_metric("loss", 0.25, step=2)
            return 1

        pipeline = stepflow.Pipeline("metrics", [trained])
        home = tmp_path / "home"
        result = pipeline.run(home=home, plugins=["fakeplugin_metrics"])
        assert plugin.SEEN["trained"] == [("loss", 0.5, 1), ("loss", 0.25, 2)]
        assert [m.value for m in result.steps["trained"].metrics] == [0.5, 0.25]
        plugin.SEEN.clear()
        pipeline.run(home=home, plugins=["fakeplugin_metrics"])
        assert plugin.SEEN["trained"] == []  # reused: nothing was logged this time


def test_module_plugins_and_specs_are_read_as_pluggy_reads_them() -> None:
    """The plugin manager skips names that are not functions without pluggy's
    ``getattr_static``: every name of every built-in plugin and of the hook specifications
    gives what pluggy's own parsing gives."""
    import importlib

    pm = make_plugin_manager(entrypoints=False, builtins=False)
    plain = pluggy.PluginManager("stepflow")
    modules = [hookspecs, *(importlib.import_module(n) for n in BUILTIN_PLUGINS)]
    hooks = 0
    for module in modules:
        for name in dir(module):
            spec = pm.parse_hookspec_opts(module, name)
            assert spec == plain.parse_hookspec_opts(module, name), name
            impl = pm.parse_hookimpl_opts(module, name)
            if impl is None or not name.startswith("stepflow_"):
                # Undecorated ``stepflow_*`` functions are hooks here (see _PluginManager).
                assert impl == plain.parse_hookimpl_opts(module, name), name
            hooks += spec is not None or impl is not None
    assert hooks > 20
