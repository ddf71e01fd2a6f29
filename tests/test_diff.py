"""Baseline diffs: identical runs pass, injected regressions and new failures fail, audit --baseline reports."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from conftest import read_findings
from fixtures.compliance import FINDINGS_SCHEMA, audit_dict, failing_project

from mechaudit.diff import diff_results, load_result
from mechaudit.errors import InputError


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """Two audits of the same project (a baseline and a rerun) and one of a model without a critical unit."""
    from mechaudit.cli import main

    base = tmp_path_factory.mktemp("diff")
    critical = failing_project(base / "critical", local_model=False, spread=1)
    spread = failing_project(base / "spread", local_model=False, spread=4)
    out = {}
    for name, project in (("old", critical), ("again", critical), ("spread", spread)):
        out[name] = base / f"out-{name}"
        assert main(["audit", str(project.spec), "--out", str(out[name]), "-q"]) == 1
    return out


def _set_value(data: dict, metric: str, value: float, status: str | None = None) -> dict:
    data = copy.deepcopy(data)
    finding = next(f for f in data["findings"] if f["metric"] == metric)
    finding["value"] = value
    if status:
        finding["status"] = status
    return data


def test_identical_runs_pass(cli, bundles) -> None:
    result = cli("diff", bundles["old"], bundles["again"])
    assert result.code == 0, result.out
    assert result.out.splitlines()[-1].startswith("PASS: no new failing finding, no metric regression")
    data = json.loads(cli("diff", bundles["old"], bundles["again"], "--format", "json").out)
    assert data["verdict"] == "pass" and data["summary"]["changed"] == 0 and data["summary"]["new"] == 0
    assert data["summary"]["unchanged"] == len(read_findings(bundles["old"])["findings"])


def test_an_injected_regression_fails_unless_tolerated(cli, bundles, tmp_path: Path) -> None:
    old = read_findings(bundles["old"])
    dead = next(f for f in old["findings"] if f["metric"] == "dead_fraction")
    worse = _set_value(old, "dead_fraction", dead["value"] + 0.125)  # one more dead unit of 8, still passing
    (tmp_path / "new.json").write_text(json.dumps(worse))
    result = cli("diff", bundles["old"], tmp_path / "new.json")
    assert result.code == 1
    assert "REGRESSION   D101 fc1 dead_fraction: 0 -> 0.125 (+0.125, tolerance 0)" in result.out
    assert cli("diff", bundles["old"], tmp_path / "new.json", "--tolerance", "0.2").code == 0
    assert cli("diff", bundles["old"], tmp_path / "new.json", "--tolerance", "dead_fraction=0.2").code == 0
    assert cli("diff", bundles["old"], tmp_path / "new.json", "--tolerance", "flip_rate=0.2").code == 1
    # a tolerance from [tool.mechaudit] in the configuration
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.mechaudit.tolerance]\ndead_fraction = 0.5\n")
    assert cli("diff", bundles["old"], tmp_path / "new.json", "--config", config).code == 0
    # an improvement is no regression
    better = _set_value(old, "flip_rate", 0.01)
    (tmp_path / "better.json").write_text(json.dumps(better))
    assert cli("diff", bundles["old"], tmp_path / "better.json").code == 0


def test_new_failing_findings_and_resolved_ones(bundles) -> None:
    spread, critical = read_findings(bundles["spread"]), read_findings(bundles["old"])
    forward = diff_results(spread, critical)  # the critical unit appears
    assert [(e["rule_id"], e["component"]) for e in forward["new"]] == [("L202", "fc1:u0")]
    assert forward["new"][0]["new"]["status"] == "fail"
    assert [(e["rule_id"], e["component"]) for e in forward["removed"]] == [("L202", "fc1")]  # the layer pass
    assert not forward["new_failures"] and forward["verdict"] == "pass"  # L202 is a warning; the gate is error
    strict = diff_results(spread, critical, fail_on="warning")
    assert strict["new_failures"][0]["component"] == "fc1:u0" and strict["verdict"] == "fail"
    backward = diff_results(critical, spread)  # ... and goes away again
    assert [(e["rule_id"], e["component"]) for e in backward["resolved"]] == [("L202", "fc1:u0")]
    assert backward["verdict"] == "pass"
    # a finding that newly fails the gate
    passing = _set_value(critical, "attribution_ratio", 1.0, "pass")
    gate = diff_results(passing, critical)
    assert [e["metric"] for e in gate["new_failures"]] == ["attribution_ratio"] and gate["verdict"] == "fail"
    assert [e["metric"] for e in gate["changed"]] == ["attribution_ratio"]


def test_html_and_audit_with_baseline(cli, bundles, tmp_path: Path) -> None:
    html = cli("diff", bundles["spread"], bundles["old"], "--format", "html").out
    assert "Changes since the baseline" in html and "fc1:u0" in html and "<script" not in html
    project = failing_project(tmp_path / "p", local_model=False, spread=1)
    out = tmp_path / "out"
    result = cli("audit", project.spec, "--baseline", bundles["spread"], "--out", out, "--format", "json,sarif")
    assert result.code == 1 and "since the baseline:" in result.out
    data = read_findings(out)
    jsonschema.validate(data, FINDINGS_SCHEMA)
    assert data["baseline"]["summary"]["new"] == 1 and data["baseline"]["new"][0]["component"] == "fc1:u0"
    sarif = json.loads((out / "findings.sarif").read_text())
    states = {r["properties"]["component"]: r["baselineState"] for r in sarif["runs"][0]["results"]}
    assert states == {"fc1:u0": "new", "input:watermark": "unchanged"}


def test_audit_baseline_section_in_the_html_report(bundles, tmp_path: Path) -> None:
    from fixtures.compliance import audit_result

    from mechaudit.report.html_report import render_html

    project = failing_project(tmp_path / "p", local_model=False, spread=1)
    result = audit_result(project.spec)
    result.baseline = diff_results(read_findings(bundles["spread"]), audit_dict(project.spec), old_label="main")
    html = render_html(result)
    assert 'id="baseline"' in html and "Changes since the baseline" in html and "New findings" in html


def test_bad_inputs(cli, bundles, tmp_path: Path) -> None:
    (tmp_path / "junk.json").write_text("{not json")
    result = cli("diff", tmp_path / "junk.json", bundles["old"])
    assert result.code == 2 and "not valid JSON" in result.err and len(result.error_lines) == 1
    (tmp_path / "other.json").write_text(json.dumps({"schema_version": "9.0", "findings": []}))
    assert "schema_version '9.0'" in cli("diff", tmp_path / "other.json", bundles["old"]).err
    assert cli("diff", tmp_path / "missing", bundles["old"]).code == 2
    assert "not a number" in cli("diff", bundles["old"], bundles["again"], "--tolerance", "x=y").err
    # a bundle whose findings.json no longer matches its manifest
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in ("findings.json", "manifest.json"):
        (tampered / name).write_bytes((bundles["old"] / name).read_bytes())
    (tampered / "findings.json").write_text((tampered / "findings.json").read_text().replace('"fail"', '"pass"'))
    with pytest.raises(InputError, match="bundle was altered"):
        load_result(tampered)
