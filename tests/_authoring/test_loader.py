"""Importing user code named on the command line, and reporting its import errors."""

from __future__ import annotations

import pytest

from stepflow._authoring.loader import import_module_or_path, user_code_traceback
from stepflow.errors import TargetNotFoundError


def _import_error(path) -> BaseException:
    """The exception of importing ``path``, its traceback starting in stepflow's loader (as
    under the command line), not in this test."""
    with pytest.raises(Exception) as info:
        import_module_or_path(str(path))
    exc = info.value
    return exc.with_traceback(exc.__traceback__.tb_next)


class TestUserCodeTraceback:
    def test_syntax_error_keeps_file_line_and_caret_only(self, tmp_path, monkeypatch):
        """A SyntaxError loses the loader's and importlib's frames but keeps its caret."""
        monkeypatch.syspath_prepend(str(tmp_path))
        path = tmp_path / "syntax_flow.py"
        path.write_text("x = 1\ny = (2 +\n")
        text = user_code_traceback(_import_error(path))
        assert "Traceback" not in text and "importlib" not in text and "loader.py" not in text
        assert f'File "{path}", line 2' in text and "^" in text
        assert text.rstrip().splitlines()[-1].startswith("SyntaxError:")

    def test_error_at_module_level_starts_at_the_users_frame(self, tmp_path, monkeypatch):
        """An exception raised by the module's code shows that module's frames."""
        monkeypatch.syspath_prepend(str(tmp_path))
        path = tmp_path / "raising_flow.py"
        path.write_text("def helper():\n    raise ImportError('no backend')\n\nhelper()\n")
        lines = user_code_traceback(_import_error(path)).splitlines()
        assert lines[0] == "Traceback (most recent call last):"
        assert lines[1] == f'  File "{path}", line 4, in <module>'
        assert lines[-1] == "ImportError: no backend"
        assert not any("importlib" in line or "stepflow" in line for line in lines)

    def test_stepflow_bug_keeps_every_frame(self):
        """With no user frame and stepflow itself raising, nothing is hidden."""
        with pytest.raises(TargetNotFoundError) as info:
            import_module_or_path("/no/such/folder/flow.py")
        text = user_code_traceback(info.value)
        assert "loader.py" in text and "Traceback" in text


class TestImportModule:
    def test_missing_import_inside_module_is_not_a_missing_target(self, tmp_path, monkeypatch):
        """A module whose code imports a missing module named like its prefix raises that."""
        monkeypatch.syspath_prepend(str(tmp_path))
        (tmp_path / "pk_loader_case").mkdir()
        (tmp_path / "pk_loader_case" / "__init__.py").write_text("")
        (tmp_path / "pk_loader_case" / "mod.py").write_text("import pk\n")
        with pytest.raises(ModuleNotFoundError, match="No module named 'pk'"):
            import_module_or_path("pk_loader_case.mod")

    def test_missing_target_module(self, tmp_path, monkeypatch):
        """The target module itself missing is a TargetNotFoundError."""
        monkeypatch.chdir(tmp_path)
        with pytest.raises(TargetNotFoundError, match="cannot import module"):
            import_module_or_path("no_such_loader_target")
