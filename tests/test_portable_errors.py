"""An ``error`` finding carries no absolute path of the machine that made it: its traceback names frames relative
to the project, mechaudit's folder or the folder Python imports them from, in findings.json, SARIF and HTML."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from conftest import rulebook_with, write_project

from mechaudit.checks.registry import CHECKS, register
from mechaudit.engine import run_audit
from mechaudit.portable import portable_traceback
from mechaudit.spec import load_spec

TORCH_FOLDER = Path(torch.__file__).resolve().parent.parent
MISSING: list[Path] = []  # the file the second check names (set by the test: a path inside its project)


@dataclass(frozen=True)
class _NoParams:
    pass


@pytest.fixture(scope="module", autouse=True)
def raising_checks():
    @register("test_raises_in_torch", _NoParams)
    def _in_torch(context, rule):
        torch.nn.Linear(2, 2).forward(torch.zeros(3))  # raises inside torch's linear.py
        return []

    @register("test_raises_naming_a_file", _NoParams)
    def _naming(context, rule):
        raise FileNotFoundError(f"no file {MISSING[-1]} nor /home/alice/secret/data.npz")
    yield
    CHECKS.pop("test_raises_in_torch")
    CHECKS.pop("test_raises_naming_a_file")


def test_frames_are_named_relative_to_where_they_lie(tmp_path: Path) -> None:
    torch_file = TORCH_FOLDER / "torch" / "nn" / "modules" / "linear.py"
    text = (f'  File "{torch_file}", line 134, in forward\n  File "{tmp_path / "model.py"}", line 7, in build\n'
            f'  File "/nowhere/else/odd.py", line 3, in f\nOSError: {tmp_path / "data.npz"} and {tmp_path}-other/x\n'
            "FileNotFoundError: No such file: '/home/alice/secret/data.npz' (see /opt/x/y.py), "
            "nor C:\\Users\\alice\\w.npz, nor D:/share/v.npz; see https://example.org/a/b and torch/nn/c.py")
    portable = portable_traceback(text, tmp_path)
    assert 'File "torch/nn/modules/linear.py", line 134' in portable
    assert 'File "model.py", line 7' in portable and 'File "odd.py", line 3' in portable
    assert "OSError: data.npz and x\n" in portable  # a sibling folder is outside the project: its last part alone
    assert "No such file: 'data.npz' (see y.py), nor w.npz, nor v.npz;" in portable  # outside every known folder
    assert "https://example.org/a/b and torch/nn/c.py" in portable  # a URL and a relative path are left as they are
    assert not re.search(r"/home|/opt|alice|[A-Z]:[\\/]", portable) and str(tmp_path) not in portable


def test_an_error_finding_holds_no_absolute_path_in_any_format(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj")
    (project.dir / "pyproject.toml").write_text("")  # the project root
    MISSING.append(project.dir / "missing" / "table.npz")
    spec = load_spec(project.spec)
    spec = replace(spec, options=replace(spec.options, select=("D900", "D901")))
    result = run_audit(spec, rulebook_with(tmp_path, {"D900": "test_raises_in_torch",
                                                      "D901": "test_raises_naming_a_file"}))
    assert [f.status for f in result.findings] == ["error", "error"]
    in_torch, naming = result.findings
    assert re.search(r'File "torch/nn/modules/linear\.py", line \d+, in forward', in_torch.evidence["traceback"])
    assert "missing/table.npz" in naming.message and "missing/table.npz" in naming.evidence["traceback"]
    assert "nor data.npz" in naming.message and "alice" not in naming.message + naming.evidence["traceback"]
    out = result.save(tmp_path / "out", ("json", "sarif", "html"))
    machine = {str(tmp_path), str(tmp_path.resolve()), str(TORCH_FOLDER), sys.prefix, str(Path.cwd())}
    for name in ("findings.json", "findings.sarif", "report.html"):
        text = (out / name).read_text(encoding="utf-8")
        assert "table.npz" in text and ("linear.py" in text or name == "findings.sarif")  # SARIF: messages only
        assert not re.search(r'File \\?"(/|[A-Za-z]:)', text), name
        for folder in machine:
            assert folder not in _tracebacks_and_messages(text), (name, folder)


def _tracebacks_and_messages(text: str) -> str:
    """The parts of a report that come from the two error findings (other metadata may name the project)."""
    return "\n".join(line for line in text.splitlines() if "linear.py" in line or "table.npz" in line
                     or "Traceback" in line or "File " in line)
