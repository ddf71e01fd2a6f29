"""The evidence bundle: reports, figures/ and manifest.json; `mechaudit verify` checks a bundle against it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import write_project
from report_cases import audit_project

from mechaudit.report import build_bundle
from mechaudit.report.document import build_document


@pytest.fixture
def bundle(cli, tmp_path: Path) -> tuple[Path, Path]:
    """A project and its bundle (json + html), from the command line: (project dir, bundle dir)."""
    project = write_project(tmp_path / "p", factory_args={"dead": 5}, data_table='labels = "labels"')
    assert cli("audit", project.spec, "--out", project.out(), "--format", "json,html", "-q").code == 0
    return project.dir, project.out()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_lists_every_file_and_input(bundle) -> None:
    project, out = bundle
    manifest = json.loads((out / "manifest.json").read_text())
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json",
                                                                                         "statement.intoto.json"}
    assert set(manifest["files"]) == written and any(name.startswith("figures/") for name in written)
    assert all(_sha(out / name) == digest for name, digest in manifest["files"].items())
    # inputs relative to the project root, which is found from the bundle by inputs.root
    assert manifest["inputs"]["data"] == {"data.npz": _sha(project / "data.npz")} and manifest["inputs"]["root"] == ".."
    html = (out / "report.html").read_text(encoding="utf-8")
    for name in (n for n in written if n.startswith("figures/")):  # the same SVG, inline and as a file
        svg = (out / name).read_text(encoding="utf-8")
        assert svg.startswith("<?xml") and svg[svg.index("<svg"):] in html


def test_verify_passes_on_an_intact_bundle_and_names_every_mismatch(cli, bundle) -> None:
    _, out = bundle
    intact = cli("verify", out)
    assert intact.code == 0 and intact.out.startswith("OK: ") and "1 inputs re-hashed" in intact.out
    figure = next((out / "figures").iterdir())
    figure.write_text(figure.read_text() + " ")
    (out / "report.html").unlink()
    (out / "notes.txt").write_text("added later")
    tampered = cli("verify", out)
    assert tampered.code == 1
    assert f"changed: figures/{figure.name}" in tampered.out and "missing: report.html" in tampered.out
    assert "not in the manifest: notes.txt" in tampered.out and "FAILED: 3 mismatches" in tampered.out


def test_verify_rehashes_reachable_inputs(cli, bundle) -> None:
    project, out = bundle
    (project / "data.npz").write_bytes(b"changed")
    changed = cli("verify", out)
    assert changed.code == 1 and "input changed since the audit: data.npz" in changed.out
    assert cli("verify", out, "--no-inputs").code == 0
    (project / "data.npz").unlink()
    gone = cli("verify", out)
    assert gone.code == 1 and "input not reachable (moved or deleted?): data.npz" in gone.out
    assert cli("verify", out, "--no-inputs").code == 0


def test_a_moved_project_verifies_and_a_moved_input_is_unreachable(cli, bundle, tmp_path: Path) -> None:
    project, out = bundle
    moved = tmp_path / "elsewhere" / "p"
    moved.parent.mkdir()
    project.rename(moved)  # the repository moved with its bundle: every input is still found
    intact = cli("verify", moved / "out")
    assert intact.code == 0 and "1 inputs re-hashed and unchanged" in intact.out
    (moved / "data.npz").rename(moved / "data-moved.npz")
    result = cli("verify", moved / "out")
    assert result.code == 1 and "input not reachable (moved or deleted?): data.npz" in result.out
    assert cli("verify", moved / "out", "--no-inputs").code == 0


def test_the_in_toto_statement_covers_every_file_and_validates(cli, bundle) -> None:
    import jsonschema

    from mechaudit.report.attestation import PREDICATE_TYPE

    _, out = bundle
    statement = json.loads((out / "statement.intoto.json").read_text())
    schema = json.loads((Path(__file__).parent / "schemas" / "in-toto-statement-v1.schema.json").read_text())
    jsonschema.validate(statement, schema, format_checker=jsonschema.FormatChecker())
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"statement.intoto.json"}
    assert {s["name"]: s["digest"]["sha256"] for s in statement["subject"]} == {n: _sha(out / n) for n in files}
    assert statement["_type"] == "https://in-toto.io/Statement/v1" and statement["predicateType"] == PREDICATE_TYPE
    assert statement["predicate"]["verdict"] == "pass" and statement["predicate"]["inputs"]["data"]
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"1.1"', '"1.0"'))
    result = cli("verify", out)  # the statement no longer matches the manifest it signed
    assert result.code == 1 and "statement.intoto.json: subject manifest.json does not match" in result.out
    for bad in ("{", json.dumps({"subject": "x"})):
        (out / "statement.intoto.json").write_text(bad)
        assert "not an in-toto statement" in cli("verify", out).out


@pytest.mark.parametrize("manifest, problem", [
    (None, "not found"),
    ("{not json", "not valid JSON"),
    (json.dumps({"files": []}), "no 'files' table"),
    (json.dumps({"files": {"../outside.txt": "0" * 64}}), "outside the bundle"),
    (json.dumps({"files": {"/etc/passwd": "0" * 64}}), "outside the bundle"),
    (json.dumps({"files": {"findings.json": "abc"}}), "not a SHA-256"),
])
def test_verify_without_a_valid_manifest_exits_2(cli, tmp_path: Path, manifest, problem) -> None:
    (tmp_path / "findings.json").write_text("{}")
    if manifest is not None:
        (tmp_path / "manifest.json").write_text(manifest)
    result = cli("verify", tmp_path)
    assert result.code == 2 and len(result.error_lines) == 1 and problem in result.err


def test_verify_a_missing_directory_exits_2(cli, tmp_path: Path) -> None:
    result = cli("verify", tmp_path / "nowhere")
    assert result.code == 2 and "not a directory" in result.err


def test_figures_are_deterministic_and_small(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", factory_args={"dead": 5}, data_table='labels = "labels"')
    first, second = audit_project(project), audit_project(project)
    figures = {k: v for k, v in build_bundle(first, ("html",)).items() if k.startswith("figures/")}
    assert figures and figures == {k: v for k, v in build_bundle(second, ("html",)).items() if k.startswith("figures/")}
    for svg in figures.values():
        assert "<dc:date>" not in svg and "<metadata>" not in svg  # no date, no creator block
        assert "<text" in svg and "font-face" not in svg and len(svg) < 100_000  # text stays text: no glyph paths
    assert build_document(first) is build_document(first)  # built once, shared by html, pdf and figures/
    first.fail_on = "never"
    assert build_document(first).result["fail_on"] == "never"  # a changed result is not served from the cache
