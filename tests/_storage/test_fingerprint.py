"""Tests for code fingerprints (DESIGN section 2 "code fingerprint", section 7 "Keys are sound")."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from stepflow._storage.fingerprint import Fingerprint, fingerprint

PYTHON = f"python:{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture
def load(tmp_path, monkeypatch):
    """Write modules into a fresh folder and import them fresh: ``load(flow=src, helpers=src)``.

    Each call uses its own folder, so no stale bytecode or source cache can leak between
    versions, and returns the module named by ``main`` (default ``flow``).
    """
    counter = itertools.count()
    names: set[str] = set()

    def load(main="flow", **files):
        folder = tmp_path / f"v{next(counter)}"
        folder.mkdir()
        for name, source in files.items():
            (folder / f"{name}.py").write_text(textwrap.dedent(source))
        names.update(files)
        for name in names:
            sys.modules.pop(name, None)
        monkeypatch.syspath_prepend(str(folder))
        return importlib.import_module(main)

    yield load
    for name in names:
        sys.modules.pop(name, None)


def changed(a: Fingerprint, b: Fingerprint) -> set[str]:
    """Names of the parts that differ between two fingerprints, added and removed included."""
    return {k for k in a.parts.keys() | b.parts.keys() if a.parts.get(k) != b.parts.get(k)}


HELPERS = textwrap.dedent(
    """
    LIMIT = 2

    def clean(x):
        return x + LIMIT
    """
)


class TestFingerprint:
    """The result: a digest and named parts."""

    def test_value_object(self, load):
        """A fingerprint has a hex digest and names its own function first among its parts."""
        flow = load(flow="def fetched_data(path):\n    return path\n")
        fp = fingerprint(flow.fetched_data)
        assert len(fp.digest) == 32
        int(fp.digest, 16)
        assert list(fp.parts) == ["flow.fetched_data"]
        assert fp == fingerprint(flow.fetched_data)
        assert hash(fp) == hash(fingerprint(flow.fetched_data))


class TestNormalization:
    """Rule: the function's normalized AST counts, not its layout or @step options."""

    BASE = """
        def fetched_data(path: str) -> int:
            size = len(path)
            return size * 2
    """

    @pytest.mark.parametrize(
        "variant",
        [
            pytest.param(
                """
                def fetched_data(path: str) -> int:
                    # count the characters
                    size = len(path)  # inline comment
                    return size * 2
                """,
                id="comments",
            ),
            pytest.param(
                '''
                def fetched_data(path: str) -> int:
                    """Load the data.

                    With a long explanation.
                    """
                    size = len(path)
                    return size * 2
                ''',
                id="docstring",
            ),
            pytest.param(
                """


                def fetched_data(
                    path: str,
                ) -> int:

                    size = len( path )

                    return (size *
                            2)
                """,
                id="formatting-and-blank-lines",
            ),
            pytest.param(
                """
                import stepflow

                @stepflow.step(retries=2, timeout="30s")
                def fetched_data(path: str) -> int:
                    size = len(path)
                    return size * 2
                """,
                id="step-decorator-options",
            ),
        ],
    )
    def test_layout_does_not_count(self, load, variant):
        """Comments, docstrings, formatting, blank lines and @step options leave it unchanged."""
        before = fingerprint(load(flow=self.BASE).fetched_data)
        after = fingerprint(load(flow=variant).fetched_data)
        assert after.digest == before.digest

    def test_nested_docstring_does_not_count(self, load):
        """Docstrings of nested functions and classes are dropped too."""
        template = """
            def fetched_data(path):
                def inner():
                    {doc}
                    return path
                class Box:
                    {doc}
                    value = 1
                return inner(), Box
        """
        plain = load(flow=template.replace("{doc}", "pass"))
        documented = load(flow=template.replace("{doc}", '"""Why."""'))
        assert fingerprint(plain.fetched_data) != fingerprint(documented.fetched_data)
        again = load(flow=template.replace("{doc}", '"""Another why."""'))
        assert fingerprint(again.fetched_data) == fingerprint(documented.fetched_data)


class TestBody:
    """Rule: what the code says counts, names and annotations included."""

    def test_body_change_counts(self, load):
        """Changing what the function computes changes the fingerprint and its own part."""
        before = fingerprint(load(flow="def f(x):\n    return x * 2\n").f)
        after = fingerprint(load(flow="def f(x):\n    return x * 3\n").f)
        assert after.digest != before.digest
        assert changed(before, after) == {"flow.f"}

    def test_local_rename_counts(self, load):
        """Renaming a local changes it: names are in the AST; a rerun is the honest answer."""
        before = fingerprint(load(flow="def f(x):\n    y = x\n    return y\n").f)
        after = fingerprint(load(flow="def f(x):\n    z = x\n    return z\n").f)
        assert after.digest != before.digest

    def test_annotations_count(self, load):
        """Type annotations define ports, so changing one changes the fingerprint."""
        before = fingerprint(load(flow="def f(x: int) -> int:\n    return x\n").f)
        after = fingerprint(load(flow="def f(x: int) -> float:\n    return x\n").f)
        assert after.digest != before.digest

    def test_string_annotations_resolve(self, load):
        """Under postponed annotations, annotation names still resolve to what they name."""
        flow = load(
            flow="""
                from __future__ import annotations
                import helpers

                def f(x: helpers.Frame) -> int:
                    return 1
            """,
            helpers="class Frame:\n    pass\n",
        )
        assert "helpers.Frame" in fingerprint(flow.f).parts

    def test_step_options_of_a_called_step_do_not_count(self, load):
        """A step that calls another step is not invalidated by the callee's @step options."""
        source = """
            from stepflow import step

            @step(retries={})
            def helper(x):
                return x + 1

            def f(x):
                return helper(x)
        """
        assert fingerprint(load(flow=source.format(1)).f) == fingerprint(
            load(flow=source.format(5)).f
        )

    def test_other_decorators_of_helpers_count(self, load):
        """A helper's own decorator is code that runs, so it counts."""
        source = """
            import functools

            def twice(fn):
                @functools.wraps(fn)
                def wrapper(x):
                    return fn(fn(x))
                return wrapper

            @twice
            def helper(x):
                return x + 1

            def f(x):
                return helper(x)
        """
        before = fingerprint(load(flow=source).f)
        after = fingerprint(load(flow=source.replace("fn(fn(x))", "fn(x)")).f)
        # The wrapper is nested in the decorator's source, so both change.
        assert changed(before, after) == {"flow.twice", "flow.twice.<locals>.wrapper"}


class TestHelpers:
    """Rule: user-code functions the step references count transitively, across modules."""

    STEP = """
        import helpers

        def fetched_data(path):
            return helpers.clean(path)
    """

    def test_helper_in_another_module_counts(self, load):
        """Editing a helper in another module changes the step, and parts name the helper."""
        before = fingerprint(load(flow=self.STEP, helpers=HELPERS).fetched_data)
        edited = HELPERS.replace("x + LIMIT", "x - LIMIT")
        after = fingerprint(load(flow=self.STEP, helpers=edited).fetched_data)
        assert after.digest != before.digest
        assert changed(before, after) == {"helpers.clean"}

    def test_from_import_counts(self, load):
        """A helper imported by name is followed just like one reached through its module."""
        step = "from helpers import clean\n\ndef f(x):\n    return clean(x)\n"
        before = fingerprint(load(flow=step, helpers=HELPERS).f)
        after = fingerprint(load(flow=step, helpers=HELPERS.replace("+", "*")).f)
        assert "helpers.clean" in before.parts
        assert changed(before, after) == {"helpers.clean"}

    def test_helper_comment_does_not_count(self, load):
        """A comment or docstring added to a helper leaves the step's fingerprint unchanged."""
        before = fingerprint(load(flow=self.STEP, helpers=HELPERS).fetched_data)
        commented = HELPERS.replace(
            "def clean(x):", 'def clean(x):  # tidy\n    """Tidy."""\n    # why'
        )
        after = fingerprint(load(flow=self.STEP, helpers=commented).fetched_data)
        assert after == before

    def test_unused_helper_does_not_count(self, load):
        """Only what the step references counts: an unrelated function may change freely."""
        before = fingerprint(load(flow=self.STEP, helpers=HELPERS).fetched_data)
        extra = HELPERS + "\ndef unrelated():\n    return 1\n"
        after = fingerprint(load(flow=self.STEP, helpers=extra).fetched_data)
        assert after == before

    def test_rebinding_a_name_counts(self, load):
        """Swapping which helper each name refers to changes the digest and the step's part."""
        helpers = "def a(x):\n    return x + 1\n\ndef b(x):\n    return x * 2\n"
        step = "from helpers import {}\n\ndef f(x):\n    return first(second(x))\n"
        before = fingerprint(load(flow=step.format("a as first, b as second"), helpers=helpers).f)
        after = fingerprint(load(flow=step.format("b as first, a as second"), helpers=helpers).f)
        assert after.digest != before.digest
        assert changed(before, after) == {"flow.f"}

    def test_module_name_does_not_count(self, load):
        """The same code imported under other module names gives the same digest."""
        step = "from {} import clean\n\ndef fetched_data(path):\n    return clean(path)\n"
        one = load(main="flow_a", flow_a=step.format("tools_a"), tools_a=HELPERS)
        two = load(main="flow_b", flow_b=step.format("tools_b"), tools_b=HELPERS)
        one, two = fingerprint(one.fetched_data), fingerprint(two.fetched_data)
        assert one.digest == two.digest
        assert "tools_a.clean" in one.parts  # explain still names each module as imported

    def test_module_used_whole_counts_by_source(self, load):
        """A user module passed around as a value counts by its whole source."""
        step = "import helpers\n\ndef f():\n    return vars(helpers)\n"
        before = fingerprint(load(flow=step, helpers=HELPERS).f)
        after = fingerprint(load(flow=step, helpers=HELPERS + "\nOTHER = 1\n").f)
        assert changed(before, after) == {"helpers"}


class TestLocalImports:
    """Rule: imports inside the step are followed, libraries without importing them."""

    def test_user_helper_imported_inside_the_step(self, load):
        """``from helpers import clean`` inside the step is followed like a global import."""
        step = "def f(x):\n    from helpers import clean\n    return clean(x)\n"
        before = fingerprint(load(flow=step, helpers=HELPERS).f)
        after = fingerprint(load(flow=step, helpers=HELPERS.replace("+", "*")).f)
        assert "helpers.clean" in before.parts
        assert changed(before, after) == {"helpers.clean"}

    def test_user_module_imported_inside_the_step(self, load):
        """``import helpers`` inside the step resolves ``helpers.clean`` to the function."""
        step = "def f(x):\n    import helpers\n    return helpers.clean(x)\n"
        before = fingerprint(load(flow=step, helpers=HELPERS).f)
        after = fingerprint(load(flow=step, helpers=HELPERS.replace("LIMIT = 2", "LIMIT = 5")).f)
        assert changed(before, after) == {"helpers.LIMIT"}

    def test_library_imported_inside_the_step_is_not_imported(self, load, monkeypatch):
        """A lazily imported library counts by version, and fingerprinting does not import it."""
        monkeypatch.delitem(sys.modules, "dateutil.relativedelta", raising=False)
        monkeypatch.delitem(sys.modules, "dateutil", raising=False)
        flow = load(
            flow="""
                def f(x):
                    import json
                    from dateutil.relativedelta import relativedelta
                    return json.dumps(relativedelta(days=x).days)
            """
        )
        parts = fingerprint(flow.f).parts
        assert "dateutil" not in sys.modules
        assert parts["dist:python-dateutil"] == importlib.metadata.version("python-dateutil")
        assert PYTHON in parts


class TestConstants:
    """Rule: module-level values count by a canonical encoding of their value."""

    STEP = """
        import struct

        THRESHOLD = {}

        def fetched_data(x):
            return x > THRESHOLD
    """

    def test_module_constant_counts(self, load):
        """THRESHOLD = 3 -> 4 changes the fingerprint, and parts name the constant."""
        before = fingerprint(load(flow=self.STEP.format("3")).fetched_data)
        after = fingerprint(load(flow=self.STEP.format("4")).fetched_data)
        assert after.digest != before.digest
        assert changed(before, after) == {"flow.THRESHOLD"}

    def test_constant_in_another_module_counts(self, load):
        """A constant read as ``config.THRESHOLD`` is named after its module."""
        step = "import config\n\ndef f(x):\n    return x > config.THRESHOLD\n"
        before = fingerprint(load(flow=step, config="THRESHOLD = 3\n").f)
        after = fingerprint(load(flow=step, config="THRESHOLD = 4\n").f)
        assert changed(before, after) == {"config.THRESHOLD"}

    @pytest.mark.parametrize(
        ("one", "other"),
        [
            ("{'a': 1, 'b': 2}", "{'b': 2, 'a': 1}"),
            ("{3, 1, 2}", "{2, 3, 1}"),
            ("frozenset({'x', 'y'})", "frozenset({'y', 'x'})"),
            ("float('nan')", "-float('nan')"),
            ("float('nan')", "struct.unpack('<d', bytes.fromhex('010000000000f87f'))[0]"),
            ("complex(1, float('nan'))", "complex(1, -float('nan'))"),
        ],
        ids=[
            "dict-order",
            "set-order",
            "frozenset-order",
            "nan-sign",
            "nan-payload",
            "complex-nan",
        ],
    )
    def test_equal_values_hash_equal(self, load, one, other):
        """Equal constants written in another order give the same fingerprint."""
        before = fingerprint(load(flow=self.STEP.format(one)).fetched_data)
        after = fingerprint(load(flow=self.STEP.format(other)).fetched_data)
        assert after == before

    @pytest.mark.parametrize(
        ("one", "other"),
        [
            ("0.0", "-0.0"),
            ("1", "True"),
            ("1", "1.0"),
            ("(1, 2)", "[1, 2]"),
            ("'1'", "b'1'"),
            ("{'a': 1}", "{'a': 1.0}"),
            ("complex(1, 0.0)", "complex(1, -0.0)"),
            ("{0.0: 'a'}", "{-0.0: 'a'}"),
        ],
        ids=[
            *("zero-sign", "bool-int", "int-float", "tuple-list", "str-bytes", "nested"),
            *("complex-zero-sign", "zero-sign-key"),
        ],
    )
    def test_different_values_hash_different(self, load, one, other):
        """Values that compare equal or print alike but differ in type or bits do not collide."""
        before = fingerprint(load(flow=self.STEP.format(one)).fetched_data)
        after = fingerprint(load(flow=self.STEP.format(other)).fetched_data)
        assert after.digest != before.digest

    def test_enum_member_counts(self, load):
        """An Enum member counts by its class's source, so editing the enum changes it."""
        step = """
            import enum

            class Mode(enum.Enum):
                FAST = {}

            def f():
                return Mode.FAST
        """
        before = fingerprint(load(flow=step.format("1")).f)
        after = fingerprint(load(flow=step.format("2")).f)
        assert changed(before, after) == {"flow.Mode"}

    def test_other_objects_count_by_content(self, load):
        """A compiled regex counts by its content and type, so a new pattern changes it."""
        step = "import re\n\nPATTERN = re.compile({!r})\n\ndef f(s):\n    return PATTERN.match(s)\n"
        before = fingerprint(load(flow=step.format("a+")).f)
        after = fingerprint(load(flow=step.format("b+")).f)
        assert changed(before, after) == {"flow.PATTERN"}
        assert before.parts[PYTHON]

    def test_addresses_in_repr_do_not_count(self, load):
        """An object whose repr shows its address still fingerprints the same in a new import."""
        step = "class Box:\n    pass\n\nBOX = Box()\n\ndef f():\n    return BOX\n"
        assert fingerprint(load(flow=step).f) == fingerprint(load(flow=step).f)

    def test_logger_counts_by_name_not_level(self, load):
        """A module logger counts by its name: its level is configuration, not code."""
        flow = load(
            flow="""
                import logging

                logger = logging.getLogger("flow.test_logger")

                def f(x):
                    logger.info("x=%s", x)
                    return x
            """
        )
        before = fingerprint(flow.f)
        try:
            flow.logger.setLevel(logging.DEBUG)
            assert fingerprint(flow.f) == before
        finally:
            flow.logger.setLevel(logging.NOTSET)

    def test_rebinding_a_global_in_process_counts(self, load):
        """A global rebound in a running process (a notebook cell) is seen on the next call."""
        flow = load(flow=self.STEP.format("3"))
        before = fingerprint(flow.fetched_data)
        flow.THRESHOLD = 4
        after = fingerprint(flow.fetched_data)
        assert changed(before, after) == {"flow.THRESHOLD"}


class TestDataGlobals:
    """Rule: module-level data counts by content, like an input, never by its repr."""

    ARRAY = """
        import numpy as np

        LOOKUP = np.zeros(5000)
        {}

        def f(i):
            return LOOKUP[i]
    """

    def test_array_middle_element_counts(self, load):
        """One middle element of a 5000-element array (elided from its repr) changes it."""
        before = fingerprint(load(flow=self.ARRAY.format("")).f)
        after = fingerprint(load(flow=self.ARRAY.format("LOOKUP[2500] = 1.0")).f)
        assert after.digest != before.digest
        assert changed(before, after) == {"flow.LOOKUP"}
        assert "dist:numpy" in before.parts  # what an array means is numpy's too

    def test_equal_arrays_in_new_imports_agree(self, load):
        """The same content in another object (another address) is the same fingerprint."""
        before = fingerprint(load(flow=self.ARRAY.format("LOOKUP[7] = 2.0")).f)
        assert fingerprint(load(flow=self.ARRAY.format("LOOKUP[7] = 2.0")).f) == before

    def test_array_changed_in_place_in_process(self, load):
        """An array global changed in place (a notebook cell) is seen on the next call."""
        flow = load(flow=self.ARRAY.format(""))
        before = fingerprint(flow.f)
        flow.LOOKUP[2500] = 1.0
        assert changed(before, fingerprint(flow.f)) == {"flow.LOOKUP"}
        flow.LOOKUP[2500] = 0.0
        assert fingerprint(flow.f) == before

    def test_array_negative_zero_and_nan_payload(self, load):
        """An array's -0.0 differs from 0.0; a NaN's payload does not count."""
        base = fingerprint(load(flow=self.ARRAY.format("LOOKUP[9] = 0.0")).f)
        assert fingerprint(load(flow=self.ARRAY.format("LOOKUP[9] = -0.0")).f) != base
        nan = fingerprint(load(flow=self.ARRAY.format("LOOKUP[9] = np.nan")).f)
        payload = "LOOKUP.view(np.uint64)[9] = 0x7FF8000000000123"
        assert fingerprint(load(flow=self.ARRAY.format(payload)).f) == nan

    def test_dataframe_middle_row_counts(self, load):
        """A DataFrame global whose repr elides the changed row still changes it."""
        step = """
            import pandas as pd

            TABLE = pd.DataFrame({{"x": range(1000), "y": [0.5] * 1000}})
            {}

            def f():
                return TABLE["y"].sum()
        """
        before = fingerprint(load(flow=step.format("")).f)
        after = fingerprint(load(flow=step.format('TABLE.loc[500, "y"] = 0.25')).f)
        assert changed(before, after) == {"flow.TABLE"}

    def test_containers_of_arrays_name_the_member(self, load):
        """A list or dict holding arrays counts member by member, and names the one changed."""
        step = """
            import numpy as np

            TABLES = {{"a": np.zeros(3000), "b": np.zeros(3000)}}
            LAYERS = [np.ones(3000), np.ones(3000)]
            {}

            def f():
                return TABLES["b"].sum() + LAYERS[1].sum()
        """
        before = fingerprint(load(flow=step.format("")).f)
        in_dict = fingerprint(load(flow=step.format('TABLES["b"][1500] = 1.0')).f)
        assert changed(before, in_dict) == {"flow.TABLES['b']"}
        in_list = fingerprint(load(flow=step.format("LAYERS[1][1500] = 0.0")).f)
        assert changed(before, in_list) == {"flow.LAYERS[1]"}
        # Dict order is not content: the same members inserted the other way agree.
        swapped = step.replace('{{"a": np.zeros(3000), "b": np.zeros(3000)}}', "{{}}")
        swapped = swapped.format('TABLES["b"] = np.zeros(3000); TABLES["a"] = np.zeros(3000)')
        assert fingerprint(load(flow=swapped).f) == before

    def test_container_changed_in_place_in_process(self, load):
        """A member replaced, added or changed in place in a running process is seen."""
        flow = load(
            flow="import numpy as np\n\nITEMS = [np.zeros(10)]\n\ndef f():\n    return ITEMS\n"
        )
        before = fingerprint(flow.f)
        flow.ITEMS[0][3] = 1.0
        assert changed(before, fingerprint(flow.f)) == {"flow.ITEMS[0]"}
        flow.ITEMS.append(flow.np.zeros(2))
        assert fingerprint(flow.f).digest != before.digest

    def test_function_in_a_dict_counts_by_its_code(self, load):
        """A lambda kept in a dict global counts by its code, named by its key."""
        step = "OPS = {{'double': lambda x: x * {}}}\n\ndef f(x):\n    return OPS['double'](x)\n"
        before = fingerprint(load(flow=step.format("2")).f)
        after = fingerprint(load(flow=step.format("3")).f)
        assert changed(before, after) == {"flow.OPS['double']"}

    def test_instance_with_default_repr_counts_by_content(self, load):
        """An instance whose repr is ``<Box object at 0x...>`` counts by its attributes: a
        change is seen, and the same state at another address is the same fingerprint."""
        step = """
            import numpy as np

            class Box:
                def __init__(self, size, weights):
                    self.size = size
                    self.weights = weights

            BOX = Box({}, np.arange(4000.0))
            {}

            def f():
                return BOX.size * BOX.weights.sum()
        """
        before = fingerprint(load(flow=step.format(2, "")).f)
        assert fingerprint(load(flow=step.format(2, "")).f) == before
        assert changed(before, fingerprint(load(flow=step.format(3, "")).f)) == {"flow.BOX.size"}
        middle = "BOX.weights[2000] = -1.0"
        after = fingerprint(load(flow=step.format(2, middle)).f)
        assert changed(before, after) == {"flow.BOX.weights"}
        flow = load(flow=step.format(2, ""))
        cached = fingerprint(flow.f)
        flow.BOX.extra = 1  # an attribute added in a running process
        assert fingerprint(flow.f).digest != cached.digest

    def test_slots_instance_counts_by_content(self, load):
        """An instance of a class with __slots__ counts by its slots."""
        step = """
            class Point:
                __slots__ = ("x", "y")

                def __init__(self, x, y):
                    self.x, self.y = x, y

            ORIGIN = Point(0, {})

            def f():
                return ORIGIN.y
        """
        before = fingerprint(load(flow=step.format(0)).f)
        assert changed(before, fingerprint(load(flow=step.format(1)).f)) == {"flow.ORIGIN.y"}

    def test_set_of_objects_ignores_order(self, load):
        """A set of instances (ordered by address) counts by content, whatever its order."""
        step = """
            class Tag:
                def __init__(self, name):
                    self.name = name

            TAGS = {{Tag(n) for n in {}}}

            def f():
                return len(TAGS)
        """
        before = fingerprint(load(flow=step.format("'abcdefgh'")).f)
        assert fingerprint(load(flow=step.format("'hgfedcba'")).f) == before
        assert fingerprint(load(flow=step.format("'abcdefgz'")).f).digest != before.digest

    def test_numpy_scalars_count_by_value_and_dtype(self, load):
        """numpy scalars differ by value, by dtype and by the sign of zero."""
        step = "import numpy as np\n\nSCALE = {}\n\ndef f(x):\n    return x * SCALE\n"
        digests = [
            fingerprint(load(flow=step.format(value)).f).digest
            for value in (
                *("np.float64(0.5)", "np.float64(0.25)", "np.float32(0.5)"),
                *("np.float64(0.0)", "np.float64(-0.0)"),
            )
        ]
        assert len(set(digests)) == len(digests)

    def test_large_list_counts_as_a_whole(self, load):
        """A long list of non-constants counts by content, in one part."""
        step = """
            import numpy as np

            ROWS = [np.zeros(2) for _ in range(500)]
            {}

            def f():
                return ROWS
        """
        before = fingerprint(load(flow=step.format("")).f)
        after = fingerprint(load(flow=step.format("ROWS[250][1] = 1.0")).f)
        assert changed(before, after) == {"flow.ROWS"}
        assert len(before.parts) < 10


class TestClasses:
    """Rule: user classes count by their source, methods and bases included."""

    HELPERS = textwrap.dedent(
        """
        class Cleaner:
            scale = 2

            def run(self, x):
                return x * self.scale
        """
    )
    STEP = "import helpers\n\ndef f(x):\n    return helpers.Cleaner().run(x)\n"

    def test_method_change_counts(self, load):
        """Editing a method of a class the step uses changes the fingerprint."""
        before = fingerprint(load(flow=self.STEP, helpers=self.HELPERS).f)
        edited = self.HELPERS.replace("x * self.scale", "x + self.scale")
        after = fingerprint(load(flow=self.STEP, helpers=edited).f)
        assert changed(before, after) == {"helpers.Cleaner"}

    def test_base_class_counts(self, load):
        """A user base class counts through the subclass."""
        helpers = self.HELPERS + "\nclass Fancy(Cleaner):\n    pass\n"
        step = "import helpers\n\ndef f(x):\n    return helpers.Fancy().run(x)\n"
        before = fingerprint(load(flow=step, helpers=helpers).f)
        after = fingerprint(load(flow=step, helpers=helpers.replace("scale = 2", "scale = 3")).f)
        assert changed(before, after) == {"helpers.Cleaner"}

    def test_class_made_in_a_function_counts_its_closure(self, load):
        """Two classes made by one factory differ by the values their methods capture."""
        flow = load(
            flow="""
                def make(k):
                    class Scaler:
                        def run(self, x):
                            return x * k
                    return Scaler

                def use(cls):
                    def step(x):
                        return cls().run(x)
                    return step
            """
        )
        two, three = flow.use(flow.make(2)), flow.use(flow.make(3))
        assert fingerprint(two).digest != fingerprint(three).digest
        assert fingerprint(two) == fingerprint(flow.use(flow.make(2)))

    def test_instance_counts_by_class_and_fields(self, load):
        """A module-level instance counts by its class's code and its fields, each named."""
        step = """
            import dataclasses

            @dataclasses.dataclass
            class Config:
                k: int

            CONFIG = Config(k={})

            def f():
                return CONFIG.k
        """
        before = fingerprint(load(flow=step.format("1")).f)
        after = fingerprint(load(flow=step.format("2")).f)
        assert changed(before, after) == {"flow.CONFIG.k"}
        assert "flow.Config" in before.parts


class TestRecursion:
    """Rule: cycles between functions terminate."""

    def test_mutual_recursion_terminates(self, load):
        """Mutually recursive helpers are each fingerprinted once."""
        flow = load(
            flow="""
                def odd(n):
                    return n != 0 and even(n - 1)

                def even(n):
                    return n == 0 or odd(n - 1)

                def f(n):
                    return odd(n)
            """
        )
        fp = fingerprint(flow.f)
        assert set(fp.parts) == {"flow.f", "flow.odd", "flow.even"}
        assert fingerprint(flow.odd).digest != fp.digest

    def test_self_recursion_terminates(self, load):
        """A step that calls itself references its own piece."""
        flow = load(flow="def f(n):\n    return 1 if n < 2 else n * f(n - 1)\n")
        assert set(fingerprint(flow.f).parts) == {"flow.f"}


class TestClosuresAndGlobals:
    """Rule: same source text with other globals or closure values differs."""

    def test_closures_with_different_values_differ(self, load):
        """Two closures from one factory differ by their captured values and agree when equal."""
        flow = load(
            flow="""
                def make(k):
                    def inner(x):
                        return x + k
                    return inner
            """
        )
        one, two, again = flow.make(1), flow.make(2), flow.make(1)
        assert fingerprint(one).digest != fingerprint(two).digest
        assert fingerprint(one) == fingerprint(again)
        assert "flow.make.<locals>.inner.<closure>.k" in fingerprint(one).parts

    def test_closure_over_function_recurses(self, load):
        """A captured function counts by its code, not by its repr."""
        flow = load(
            flow="""
                def double(x):
                    return 2 * x

                def triple(x):
                    return 3 * x

                def make(fn):
                    def inner(x):
                        return fn(x)
                    return inner
            """
        )
        assert fingerprint(flow.make(flow.double)) != fingerprint(flow.make(flow.triple))
        assert "flow.double" in fingerprint(flow.make(flow.double)).parts

    def test_same_source_different_globals_differ(self, load):
        """The same source text in modules with different globals gives different digests."""
        step = "SCALE = {}\n\ndef f(x):\n    return x * SCALE\n"
        one = load(main="flow_a", flow_a=step.format("2"))
        two = load(main="flow_b", flow_b=step.format("3"))
        assert fingerprint(one.f).digest != fingerprint(two.f).digest

    def test_local_shadowing_a_global_is_not_a_dependency(self, load):
        """A local that shadows a global name does not pull the global in."""
        flow = load(flow="path = 'x'\n\ndef f(path):\n    return path\n")
        assert set(fingerprint(flow.f).parts) == {"flow.f"}

    def test_wrapped_helper_counts(self, load):
        """A helper behind functools.lru_cache counts by the wrapped function's code."""
        step = """
            import functools

            @functools.lru_cache
            def helper(x):
                return x + {}

            def f(x):
                return helper(x)
        """
        before = fingerprint(load(flow=step.format("1")).f)
        after = fingerprint(load(flow=step.format("2")).f)
        assert after.digest != before.digest
        assert changed(before, after) & {"flow.helper", "flow.helper#2"}

    def test_partial_counts_its_arguments(self, load):
        """A functools.partial global counts by its function and its bound arguments."""
        step = """
            import functools

            def scale(x, k):
                return x * k

            SCALED = functools.partial(scale, k={})

            def f(x):
                return SCALED(x)
        """
        before = fingerprint(load(flow=step.format("2")).f)
        after = fingerprint(load(flow=step.format("3")).f)
        assert "flow.scale" in before.parts
        assert "flow.SCALED.keywords[k]" in changed(before, after)


class TestLibraries:
    """Rule: third-party code counts by distribution version, stdlib by Python version."""

    def test_third_party_counts_by_version(self, load):
        """pandas.read_csv appears as dist:pandas with the installed version, never as source."""
        flow = load(flow="import pandas as pd\n\ndef f(path):\n    return pd.read_csv(path)\n")
        parts = fingerprint(flow.f).parts
        assert parts["dist:pandas"] == importlib.metadata.version("pandas")
        assert set(parts) == {"flow.f", "dist:pandas"}

    def test_third_party_imported_by_name(self, load):
        """A library function imported by name counts by its distribution too."""
        flow = load(flow="from pandas import read_csv\n\ndef f(path):\n    return read_csv(path)\n")
        assert set(fingerprint(flow.f).parts) == {"flow.f", "dist:pandas"}

    def test_distribution_named_unlike_its_import(self, load):
        """dateutil counts as dist:python-dateutil (the same path as sklearn: scikit-learn)."""
        flow = load(flow="from dateutil import parser\n\ndef f(s):\n    return parser.parse(s)\n")
        parts = fingerprint(flow.f).parts
        assert parts["dist:python-dateutil"] == importlib.metadata.version("python-dateutil")

    def test_stdlib_counts_by_python_version(self, load):
        """Standard-library code counts as python:<major.minor>."""
        flow = load(
            flow="""
                import json
                import math
                from os.path import join

                def f(x):
                    return json.dumps(math.sqrt(x)), join("a", "b")
            """
        )
        parts = fingerprint(flow.f).parts
        assert set(parts) == {"flow.f", PYTHON}
        assert parts[PYTHON] == PYTHON.removeprefix("python:")

    def test_builtins_count_as_nothing(self, load):
        """Builtins add no parts."""
        flow = load(flow="def f(xs):\n    return len(sorted(xs)), max(xs)\n")
        assert set(fingerprint(flow.f).parts) == {"flow.f"}

    def test_stepflow_counts_by_version(self, load):
        """stepflow is third party here, even installed editable: its version, not its source."""
        flow = load(flow="from stepflow import Param\n\ndef f():\n    return Param\n")
        parts = fingerprint(flow.f).parts
        assert parts["dist:stepflow"] == importlib.metadata.version("stepflow")
        assert set(parts) == {"flow.f", "dist:stepflow"}

    def test_library_function_as_the_step(self):
        """Fingerprinting a library or builtin function itself works and names its library."""
        assert PYTHON in fingerprint(textwrap.dedent).parts
        assert fingerprint(len).parts
        assert fingerprint(len) != fingerprint(max)


class TestWithoutSource:
    """Rule: code without source (lambdas, exec) counts by its code object."""

    def test_lambda(self, load):
        """A lambda counts by its code object: its body and the globals it reads."""
        flow = load(flow="K = 2\ndouble = lambda x: x * K\ntriple = lambda x: x * 3\n")
        fp = fingerprint(flow.double)
        assert set(fp.parts) == {"flow.<lambda>", "flow.K"}
        assert fp.digest != fingerprint(flow.triple).digest
        other = load(flow="K = 5\ndouble = lambda x: x * K\ntriple = lambda x: x * 3\n")
        assert changed(fp, fingerprint(other.double)) == {"flow.K"}

    def test_lambda_global_is_named_after_the_global(self, load):
        """A lambda a step reads through a global counts under that global's name, so a
        changed body is reported as ``helpers.TRANSFORM``, not ``helpers.<lambda>``."""
        step = "import helpers\n\ndef f(x):\n    return helpers.TRANSFORM(x)\n"
        before = fingerprint(load(flow=step, helpers="TRANSFORM = lambda x: x * 2\n").f)
        after = fingerprint(load(flow=step, helpers="TRANSFORM = lambda x: x * 3\n").f)
        assert changed(before, after) == {"helpers.TRANSFORM"}
        assert not any("<lambda>" in part for part in before.parts)

    def test_exec_defined_function(self):
        """A function defined by exec has no source; its code object stands in, docstring aside."""
        namespaces = []
        for source in (
            "def f(x):\n    return x + 1\n",
            "def f(x):\n    '''Doc.'''\n    return x + 1\n",
            "def f(x):\n    return x + 2\n",
        ):
            namespace = {"__name__": "scratch"}
            exec(source, namespace)
            namespaces.append(namespace["f"])
        plain, documented, other = (fingerprint(f) for f in namespaces)
        assert plain == documented
        assert plain.digest != other.digest

    def test_exec_defined_class(self):
        """A class defined by exec counts by its members' code."""
        classes = []
        for body in ("return 1", "return 2"):
            namespace = {"__name__": "scratch"}
            source = f"class C:\n    def m(self):\n        {body}\n\ndef f():\n    return C().m()\n"
            exec(source, namespace)
            classes.append(fingerprint(namespace["f"]))
        assert classes[0].digest != classes[1].digest


class TestReuseWithinAProcess:
    """Rule: a result is reused in a process only while what it read is unchanged."""

    STEP = """
        import helpers

        SCALES = [1, 2]

        def make(k):
            def step(x):
                return helpers.clean(x) * k * SCALES[0]
            def rebind(value):
                nonlocal k
                k = value
            return step, rebind
    """

    def test_unchanged_result_is_reused(self, load):
        """A second call with nothing changed returns the very same result."""
        step, _ = load(flow=self.STEP, helpers=HELPERS).make(2)
        assert fingerprint(step) is fingerprint(step)

    def test_mutated_constant_is_seen(self, load):
        """A module-level list changed in place invalidates the reused result."""
        flow = load(flow=self.STEP, helpers=HELPERS)
        step, _ = flow.make(2)
        before = fingerprint(step)
        flow.SCALES[0] = 10
        assert changed(before, fingerprint(step)) == {"flow.SCALES"}

    def test_rebound_closure_variable_is_seen(self, load):
        """A closure variable rebound through ``nonlocal`` invalidates the reused result."""
        step, rebind = load(flow=self.STEP, helpers=HELPERS).make(2)
        before = fingerprint(step)
        rebind(3)
        assert changed(before, fingerprint(step)) == {"flow.make.<locals>.step.<closure>.k"}

    def test_replaced_helper_is_seen(self, load):
        """A helper replaced on its module (monkeypatching) invalidates the reused result."""
        flow = load(flow=self.STEP, helpers=HELPERS)
        step, _ = flow.make(2)
        before = fingerprint(step)
        sys.modules["helpers"].clean = lambda x: x
        after = fingerprint(step)
        # The lambda is named after the global it replaced, so the step's own part (its code
        # and the names its references resolve to) is unchanged; the digest is not.
        assert "helpers.clean" in changed(before, after)
        assert after.digest != before.digest

    def test_replaced_code_is_seen(self, load):
        """Assigning a new ``__code__`` to the step invalidates the reused result."""
        flow = load(flow="def f(x):\n    return x\n\ndef g(x):\n    return -x\n")
        before = fingerprint(flow.f)
        flow.f.__code__ = flow.g.__code__
        assert fingerprint(flow.f).digest != before.digest

    def test_steps_keyed_at_once_analyse_their_file_once(self, load, monkeypatch, tmp_path):
        """Eight threads fingerprinting functions of one file at the same time (steps keyed
        with --workers 8) parse it once, and get what one thread alone gets."""
        import threading

        from stepflow._storage.fingerprint import _store

        source = "\n".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(8))
        flow = load(flow=source)
        analysed = []
        real = _store._analyse

        def counting(*args):
            analysed.append(args[0])
            time.sleep(0.2)  # a slow parse: every other thread asks for the file meanwhile
            return real(*args)

        monkeypatch.setattr(_store, "_analyse", counting)
        start = threading.Barrier(8)
        found = {}

        def key(i):
            start.wait()
            found[i] = fingerprint(getattr(flow, f"f{i}"), cache_dir=tmp_path / "fp")

        threads = [threading.Thread(target=key, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert analysed == [flow.__file__]
        assert len(list((tmp_path / "fp").glob("src-*.json"))) == 1
        from stepflow._storage import fingerprint as module

        module._results.clear()
        _store._files.clear()
        assert found == {i: fingerprint(getattr(flow, f"f{i}")) for i in range(8)}


def _digests_in_fresh_processes(name: str) -> set[str]:
    """The digests of ``flow.<name>`` in two fresh processes with different hash seeds."""
    folder = os.path.dirname(sys.modules["flow"].__file__)
    script = (
        f"import sys; sys.path.insert(0, {folder!r}); import flow; "
        "from stepflow._storage.fingerprint import fingerprint; "
        f"print(fingerprint(flow.{name}).digest)"
    )
    return {
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout.strip()
        for seed in ("1", "2")
    }


class TestStability:
    """Rule: the digest is the same in every process."""

    def test_same_digest_in_fresh_processes(self, load, tmp_path):
        """The digest does not depend on the process: hash seeds and import order aside."""
        load(flow=TestHelpers.STEP, helpers=HELPERS)
        assert _digests_in_fresh_processes("fetched_data") == {
            fingerprint(sys.modules["flow"].fetched_data).digest
        }

    def test_data_globals_same_digest_in_fresh_processes(self, load):
        """Arrays, sets and instances with default reprs digest alike in every process."""
        load(
            flow="""
                import numpy as np

                class Box:
                    pass

                BOX = Box()
                BOX.weights = np.arange(3000.0)
                BOX.tags = {"a", "b", "c", "d"}
                TAGS = {Box(), Box()}

                def f():
                    return BOX, TAGS
            """
        )
        assert _digests_in_fresh_processes("f") == {fingerprint(sys.modules["flow"].f).digest}

    def test_repeated_calls_agree(self, load):
        """Cached analysis gives the same answer as the first computation."""
        flow = load(flow=TestHelpers.STEP, helpers=HELPERS)
        assert fingerprint(flow.fetched_data) == fingerprint(flow.fetched_data)


class TestPinnedDigests:
    """Rule: a digest changes only with the algorithm's name (``_ALGORITHM``), never by accident.

    The digests below were computed by the single-module fingerprint.py, before it became a
    package; keys already in users' homes depend on them. The AST and bytecode differ between
    Python versions (and the ``python:`` piece names the version), so they are pinned for one.
    """

    HELPERS = """
        LIMIT = 2


        def step(func):
            return func


        def clean(x):
            return x + LIMIT


        class Scale:
            def __init__(self, k):
                self.k = k

            def apply(self, x):
                return x * self.k
    """
    FLOW = """
        import functools
        import logging

        import helpers
        from helpers import clean, step

        LOG = logging.getLogger("pinned")
        TABLE = {"a": helpers.clean, "b": 2.5}
        TAGS = {"x", "y"}
        SCALE = helpers.Scale(3)
        TWICE = functools.partial(helpers.clean, 2)
        TRANSFORM = lambda x: x * 2  # noqa: E731
        ROWS = [helpers.Scale(i) for i in range(70)]


        @step
        def fetched(x: int, limit: int = helpers.LIMIT) -> float:
            '''Docstrings do not count.'''
            import json

            total = clean(x) + len(TAGS) + TABLE["b"] + SCALE.apply(x)
            return total + TWICE(x) + len(json.dumps(x))


        def outer(k):
            def inner(x):
                return x * k + helpers.LIMIT

            return inner


        closure = outer(3)


        class Model:
            def __init__(self, w):
                self.w = w

            def predict(self, x):
                return clean(x) * self.w * len(ROWS)


        def uses_class(x):
            LOG.info("x")
            return Model(2).predict(TRANSFORM(x))
    """
    #: Python 3.11: function, helper, constants, a set, a dict and an instance member by
    #: member, a partial and a logger as objects, a large list by content, a local import,
    #: a closure, a class, and a lambda by its code object
    PINNED = {
        "fetched": "345c4eee491e33f24dcc5bb58ffd8979",
        "closure": "b6e5bf87c64e70e3b6dc57c0d4522be7",
        "uses_class": "a240fa67340cb67fd86b4ba658d3009a",
        "TRANSFORM": "becef34813fad36fdfe80f89bddef079",
    }

    @pytest.fixture(autouse=True)
    def _python_3_11(self):
        if sys.version_info[:2] != (3, 11):
            pytest.skip("digests are pinned for Python 3.11, whose AST and bytecode they hash")

    def test_digests_in_process(self, load):
        """Fingerprints computed here, without a kept analysis, match the pinned digests."""
        flow = load(flow=self.FLOW, helpers=self.HELPERS)
        digests = {name: fingerprint(getattr(flow, name)).digest for name in self.PINNED}
        assert digests == self.PINNED

    def test_digests_with_kept_analysis(self, tmp_path):
        """The same digests from a fresh process that keeps, then reads, its analysis."""
        write(tmp_path / "src", flow=self.FLOW, helpers=self.HELPERS)
        cache = tmp_path / "fingerprints"
        for name, digest in self.PINNED.items():
            assert fresh(tmp_path / "src", cache, func=name)[0] == digest
        # Every file's analysis is on disk now: a process that cannot parse agrees too.
        for name, digest in self.PINNED.items():
            assert fresh(tmp_path / "src", cache, func=name, setup=_NO_PARSING)[0] == digest


# A fingerprint computed in a fresh process; the script patches out what the test forbids.
_FRESH = """
import json, sys
sys.path[:0] = {path!r}
{setup}
import flow
from stepflow._storage.fingerprint import fingerprint
fp = fingerprint(flow.{func}, cache_dir={cache!r})
print(json.dumps({{"digest": fp.digest, "parts": fp.parts}}))
"""

# Makes parsing fail loudly: a process that still parses a file did not use the kept analysis.
_NO_PARSING = "import ast\ndef _no(*a, **k):\n    raise AssertionError('parsed')\nast.parse = _no"
# Makes reading installed metadata fail: the process must use the versions kept on disk.
_NO_METADATA = (
    "import importlib.metadata as md\ndef _no(*a, **k):\n    raise AssertionError('metadata')\n"
    "md.distribution = md.version = md.packages_distributions = _no"
)


def fresh(folder, cache, *, func="f", setup="", env=None, path=(), cwd=None):
    """Fingerprint ``flow.<func>`` from ``folder`` in a new interpreter; returns (digest, parts)."""
    script = _FRESH.format(
        path=[str(folder), *map(str, path)],
        setup=setup,
        func=func,
        cache=None if cache is None else str(cache),
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    return data["digest"], data["parts"]


def write(folder, **files):
    folder.mkdir(exist_ok=True)
    for name, source in files.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))


class TestKeptOnDisk:
    """Rule: analysis kept in the home for later processes never makes a fingerprint stale."""

    STEP = TestHelpers.STEP

    def test_later_process_parses_nothing_and_agrees(self, tmp_path):
        """A second process takes the analysis from disk instead of parsing, same digest."""
        write(tmp_path / "src", flow=self.STEP, helpers=HELPERS)
        cache = tmp_path / "fingerprints"
        uncached = fresh(tmp_path / "src", None, func="fetched_data")
        first = fresh(tmp_path / "src", cache, func="fetched_data")
        assert sorted(p.name[:4] for p in cache.iterdir()) == ["src-", "src-"]
        second = fresh(tmp_path / "src", cache, func="fetched_data", setup=_NO_PARSING)
        assert first == second == uncached
        # The guard itself works: without the kept analysis, the same process fails.
        with pytest.raises(AssertionError, match="parsed"):
            fresh(tmp_path / "src", tmp_path / "empty", func="fetched_data", setup=_NO_PARSING)

    def test_helper_edited_between_processes(self, tmp_path):
        """Editing a helper in another module changes the digest in the next process, even
        when the edit keeps the file's size and modification time."""
        src = tmp_path / "src"
        write(src, flow=self.STEP, helpers=HELPERS)
        cache = tmp_path / "fingerprints"
        before = fresh(src, cache, func="fetched_data")
        helper = src / "helpers.py"
        stat = helper.stat()
        helper.write_text(helper.read_text().replace("x + LIMIT", "x - LIMIT"))
        os.utime(helper, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert helper.stat().st_size == stat.st_size
        after = fresh(src, cache, func="fetched_data")
        assert after[0] != before[0]
        assert {k for k in after[1] if after[1][k] != before[1].get(k)} == {"helpers.clean"}
        assert after == fresh(src, None, func="fetched_data")

    def test_comment_edited_between_processes(self, tmp_path):
        """A comment added to a helper between processes leaves the digest as it was."""
        src = tmp_path / "src"
        write(src, flow=self.STEP, helpers=HELPERS)
        cache = tmp_path / "fingerprints"
        before = fresh(src, cache, func="fetched_data")
        write(src, helpers=HELPERS.replace("def clean(x):", "def clean(x):  # tidy"))
        assert fresh(src, cache, func="fetched_data") == before

    def test_constant_computed_at_import_is_read_in_each_process(self, tmp_path):
        """A module constant taken from the environment counts by its value in each process:
        the source file is unchanged, so nothing keyed by the file could notice."""
        src = tmp_path / "src"
        write(
            src,
            flow="import os\nSCALE = int(os.environ['SCALE'])\n\ndef f(x):\n    return x * SCALE\n",
        )
        cache = tmp_path / "fingerprints"
        one = fresh(src, cache, env={"SCALE": "1"})
        two = fresh(src, cache, env={"SCALE": "2"})
        assert one[0] != two[0] and one[1]["flow.SCALE"] != two[1]["flow.SCALE"]
        assert fresh(src, cache, env={"SCALE": "1"}) == one

    def test_name_resolved_elsewhere_in_a_later_process(self, tmp_path):
        """Which file ``import helpers`` finds is looked up in each process, not kept."""
        write(tmp_path / "src", flow=self.STEP)
        write(tmp_path / "a", helpers=HELPERS)
        write(tmp_path / "b", helpers=HELPERS.replace("x + LIMIT", "x * LIMIT"))
        cache = tmp_path / "fingerprints"
        via_a = fresh(tmp_path / "src", cache, func="fetched_data", path=[tmp_path / "a"])
        via_b = fresh(tmp_path / "src", cache, func="fetched_data", path=[tmp_path / "b"])
        assert via_a[0] != via_b[0]
        assert via_b == fresh(tmp_path / "src", None, func="fetched_data", path=[tmp_path / "b"])

    @pytest.mark.parametrize("damage", ["truncated", "bytes changed", "garbage", "wrong shape"])
    def test_damaged_files_are_ignored_and_rewritten(self, tmp_path, damage):
        """A torn, edited or malformed file is not used; the next process rewrites it."""
        src = tmp_path / "src"
        write(src, flow=self.STEP, helpers=HELPERS)
        cache = tmp_path / "fingerprints"
        before = fresh(src, cache, func="fetched_data")
        files = sorted(cache.iterdir())
        for path in files:
            raw = path.read_bytes()
            if damage == "truncated":
                path.write_bytes(raw[: len(raw) // 2])
            elif damage == "bytes changed":
                # A digest in the payload changed: still valid JSON of the right shape.
                check, _, payload = raw.partition(b"\n")
                digest = re.search(rb'"([0-9a-f]{32})"', payload).group(1)
                payload = payload.replace(digest, digest[::-1])
                path.write_bytes(check + b"\n" + payload)
            elif damage == "garbage":
                path.write_bytes(b"\x00\xff" * 50)
            else:
                import xxhash

                payload = b'{"functions": [[1, "f"]], "classes": 3}'
                path.write_bytes(xxhash.xxh3_128_hexdigest(payload).encode() + b"\n" + payload)
            assert path.read_bytes() != raw
        assert fresh(src, cache, func="fetched_data") == before
        # Rewritten whole: a third process parses nothing again.
        assert fresh(src, cache, func="fetched_data", setup=_NO_PARSING) == before

    def test_unusable_cache_folder_is_only_slower(self, tmp_path):
        """A cache folder that cannot be created (a file is in the way) changes nothing."""
        src = tmp_path / "src"
        write(src, flow=self.STEP, helpers=HELPERS)
        blocked = tmp_path / "file"
        blocked.write_text("not a folder")
        assert fresh(src, blocked, func="fetched_data") == fresh(src, None, func="fetched_data")

    def test_upgraded_distribution_is_seen(self, tmp_path):
        """A library upgraded between two processes counts by its new version, although the
        older version was kept on disk."""
        site = tmp_path / "env" / "site-packages"
        (site / "fakelib").mkdir(parents=True)
        (site / "fakelib" / "__init__.py").write_text("def go(x):\n    return x\n")

        def install(version):
            for old in site.glob("fakelib-*.dist-info"):
                for item in old.iterdir():
                    item.unlink()
                old.rmdir()
            info = site / f"fakelib-{version}.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(
                f"Metadata-Version: 2.1\nName: fakelib\nVersion: {version}\n"
            )
            (info / "top_level.txt").write_text("fakelib\n")

        src, cwd = tmp_path / "src", tmp_path / "cwd"
        write(src, flow="import fakelib\n\ndef f(x):\n    return fakelib.go(x)\n")
        cwd.mkdir()
        cache = tmp_path / "fingerprints"

        def settle():
            # Versions are kept only under folders that have not changed for a while.
            past = time.time() - 60
            for folder in (site, src, cwd):
                os.utime(folder, (past, past))

        install("1.0")
        settle()
        one = fresh(src, cache, path=[site], cwd=cwd)
        assert one[1]["dist:fakelib"] == "1.0"
        assert any(p.name.startswith("dist-") for p in cache.iterdir())
        # The kept version is used: this process cannot read any metadata.
        assert fresh(src, cache, path=[site], cwd=cwd, setup=_NO_METADATA) == one
        install("2.0")
        assert fresh(src, cache, path=[site], cwd=cwd)[1]["dist:fakelib"] == "2.0"

    def test_versions_not_kept_while_a_folder_is_changing(self, tmp_path):
        """Right after an install, versions are looked up but not kept: the install may not
        be finished within the folder's clock tick."""
        src = tmp_path / "src"
        write(src, flow="import xxhash\n\ndef f(x):\n    return xxhash.xxh3_64(x)\n")
        cache = tmp_path / "fingerprints"
        _, parts = fresh(src, cache, cwd=src)  # src was just written
        assert parts["dist:xxhash"] == importlib.metadata.version("xxhash")
        assert not any(p.name.startswith("dist-") for p in cache.iterdir())

    def test_same_result_with_and_without_cache_in_process(self, load, tmp_path):
        """In one process, the kept analysis gives exactly what a fresh analysis gives."""
        flow = load(flow=self.STEP, helpers=HELPERS)
        without = fingerprint(flow.fetched_data)
        from stepflow._storage import fingerprint as module
        from stepflow._storage.fingerprint import _store

        module._results.clear()
        _store._files.clear()
        with_cache = fingerprint(flow.fetched_data, cache_dir=tmp_path / "fp")
        assert with_cache == without
