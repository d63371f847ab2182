"""A rerun through the CLI never reuses a result made from a different value (DESIGN section 2):
module-level data counts by content, and ``0.0`` and ``-0.0`` are different parameters."""

from __future__ import annotations

import json

LOOKUP_FLOW = """
import numpy as np
from stepflow import step

LOOKUP = np.zeros(5000)
{change}

@step
def looked_up() -> float:
    return float(LOOKUP.sum())

@step
def written(looked_up: float) -> None:
    with open("answer.txt", "w") as fh:
        fh.write(repr(looked_up))
"""

SIGN_FLOW = """
import math
from stepflow import step

@step
def sign(z: float = 1.0) -> float:
    return math.copysign(1, z)

@step
def written(sign: float) -> None:
    with open("answer.txt", "w") as fh:
        fh.write(repr(sign))
"""


class TestArrayGlobal:
    def test_changed_middle_element_reruns_and_explain_names_the_global(self, stepflow_runner):
        """A numpy array global whose repr hides the change (a middle element of 5000) still
        changes the key: the rerun computes the new answer, and explain names the global."""
        stepflow_runner.makepyfile(flow=LOOKUP_FLOW.format(change=""))
        assert stepflow_runner.run("run", "flow.py").ret == 0
        assert (stepflow_runner.path / "answer.txt").read_text() == "0.0"
        stepflow_runner.makepyfile(flow=LOOKUP_FLOW.format(change="LOOKUP[2500] = 1.0"))
        out = stepflow_runner.run("explain", "flow.py", "looked_up")
        assert out.ret == 0
        out.fnmatch_lines(["step 'looked_up' would be run", "  - code: flow.LOOKUP changed"])
        out = stepflow_runner.run("run", "flow.py")
        assert out.ret == 0
        out.fnmatch_lines(["looked_up *ran*"])
        assert (stepflow_runner.path / "answer.txt").read_text() == "1.0"

    def test_unchanged_array_is_reused(self, stepflow_runner):
        """The same array content in a new process is the same key (no address, no id)."""
        stepflow_runner.makepyfile(flow=LOOKUP_FLOW.format(change="LOOKUP[7] = 3.0"))
        assert stepflow_runner.run("run", "flow.py").ret == 0
        out = stepflow_runner.run("run", "flow.py")
        out.fnmatch_lines(["looked_up *reused*"])
        data = json.loads(stepflow_runner.run("explain", "flow.py", "looked_up", "--json").stdout)
        assert data["verdict"] == "reuse"


class TestNegativeZero:
    def test_negative_zero_parameter_is_its_own_key(self, stepflow_runner):
        """``--param z=-0.0`` after ``z=0.0`` runs again and answers copysign's -1.0."""
        stepflow_runner.makepyfile(flow=SIGN_FLOW)
        assert stepflow_runner.run("run", "flow.py", "--param", "z=0.0").ret == 0
        assert (stepflow_runner.path / "answer.txt").read_text() == "1.0"
        out = stepflow_runner.run("explain", "flow.py", "sign", "--param", "z=-0.0")
        out.fnmatch_lines(["step 'sign' would be run", "  - parameter 'z' changed: 0.0 -> -0.0"])
        out = stepflow_runner.run("run", "flow.py", "--param", "z=-0.0")
        assert out.ret == 0
        out.fnmatch_lines(["sign *ran*"])
        assert (stepflow_runner.path / "answer.txt").read_text() == "-1.0"

    def test_nan_parameters_are_one_key(self, stepflow_runner):
        """Every NaN is one key: ``nan`` and ``-nan`` reuse each other's result."""
        stepflow_runner.makepyfile(flow=SIGN_FLOW)
        assert stepflow_runner.run("run", "flow.py", "--param", "z=nan").ret == 0
        out = stepflow_runner.run("run", "flow.py", "--param", "z=-nan")
        assert out.ret == 0
        out.fnmatch_lines(["sign *reused*"])


LAMBDA_FLOW = """
from stepflow import step
from pkg import helpers

@step
def transformed(x: int = 3) -> int:
    return helpers.TRANSFORM(x)
"""


class TestLambdaGlobal:
    def test_explain_names_the_global_a_lambda_is_bound_to(self, stepflow_runner):
        """A changed ``TRANSFORM = lambda ...`` in a helper module is named after the global,
        ``pkg.helpers.TRANSFORM``, by explain, not ``pkg.helpers.<lambda>``."""
        (stepflow_runner.path / "pkg").mkdir()
        (stepflow_runner.path / "pkg" / "__init__.py").write_text("")
        helpers = stepflow_runner.path / "pkg" / "helpers.py"
        helpers.write_text("TRANSFORM = lambda x: x * 2\n")
        stepflow_runner.makepyfile(flow=LAMBDA_FLOW)
        assert stepflow_runner.run("run", "flow.py").ret == 0
        helpers.write_text("TRANSFORM = lambda x: x * 3\n")
        out = stepflow_runner.run("explain", "flow.py", "transformed")
        out.fnmatch_lines(
            ["step 'transformed' would be run", "  - code: pkg.helpers.TRANSFORM changed"]
        )
        assert "<lambda>" not in out.stdout
