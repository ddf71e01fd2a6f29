"""Single-file outputs (diff --output, edit --out) replace only a previous output of the same kind, atomically."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mechaudit.errors import InputError
from mechaudit.output_file import check_output_file, is_edit_page, is_edit_weights


@pytest.fixture
def findings(tmp_path: Path) -> tuple[Path, Path]:
    data = {"schema_version": "1.0", "verdict": "pass", "findings": [
        {"rule_id": "D101", "component": "fc1", "metric": "dead_fraction", "status": "pass", "severity": "warning",
         "value": 0.0, "threshold": 0.25, "waived": False}]}
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(data))
    new.write_text(json.dumps(data))
    return old, new


@pytest.mark.parametrize("fmt", ["text", "json", "html"])
def test_diff_output_replaces_a_previous_diff_of_any_format(cli, findings, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "diff.out"
    for first in ("text", "json", "html"):
        assert cli("diff", *findings, "--format", first, "--output", out).code == 0
        result = cli("diff", *findings, "--format", fmt, "--output", out)
        assert result.code == 0, result.err
    assert cli("diff", *findings, "--format", fmt).out == out.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_diff_output_refuses_a_foreign_file(cli, findings, tmp_path: Path) -> None:
    for name, content in (("notes.txt", "my notes\n"), ("other.json", '{"findings": []}'),
                          ("page.html", "<!DOCTYPE html><title>mine</title>")):
        target = tmp_path / name
        target.write_text(content)
        result = cli("diff", *findings, "--output", target)
        assert result.code == 2 and "Traceback" not in result.err
        assert result.err.strip() == (f"mechaudit: error: --output {target}: exists and is not a previous mechaudit diff; "
                                      "give a new file, or remove it yourself")
        assert target.read_text() == content
    folder = tmp_path / "folder"
    folder.mkdir()
    assert cli("diff", *findings, "--output", folder).code == 2
    empty = tmp_path / "empty.txt"
    empty.touch()
    assert cli("diff", *findings, "--output", empty).code == 0 and empty.read_text().startswith("mechaudit diff: ")


def test_diff_output_refuses_a_symbolic_link(cli, findings, tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    assert cli("diff", *findings, "--output", target).code == 0
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    result = cli("diff", *findings, "--output", link)
    assert result.code == 2 and "symbolic link" in result.err and link.is_symlink()


def test_edit_out_refuses_a_foreign_file_before_editing(cli, tmp_path: Path) -> None:
    foreign = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    before = foreign.read_bytes()
    result = cli("edit", "--example", "digits", "--suppress", "classifier.0:u1", "--out", foreign)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert "exists and is not a previous mechaudit edit (edited weights)" in result.err
    assert foreign.read_bytes() == before


def test_edit_outputs_are_recognised(tmp_path: Path) -> None:
    edited, plain, text = tmp_path / "e.safetensors", tmp_path / "p.safetensors", tmp_path / "t.safetensors"
    save_file({"w": torch.zeros(2)}, str(edited), metadata={"mechaudit_edit": "SIMULATION"})
    save_file({"w": torch.zeros(2)}, str(plain))
    text.write_text("not weights")
    assert is_edit_weights(edited) and not is_edit_weights(plain) and not is_edit_weights(text)
    check_output_file(edited, "--out", "edit", is_edit_weights)
    with pytest.raises(InputError, match="not a previous mechaudit edit"):
        check_output_file(plain, "--out", "edit", is_edit_weights)
    page, other = tmp_path / "e.html", tmp_path / "o.html"
    page.write_text("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>mechaudit edit: m</title>")
    other.write_text("<!DOCTYPE html><title>mine</title>")
    assert is_edit_page(page) and not is_edit_page(other)
