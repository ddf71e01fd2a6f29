"""SARIF 2.1.0: valid against the official schema, rules documented, results located, fingerprints stable."""

from pathlib import Path

import jsonschema
import pytest
from fixtures.compliance import SARIF_SCHEMA, audit_dict, failing_project, write_waivers
from report_cases import example_result

from mechaudit.examples import EXAMPLES, example_spec
from mechaudit.report.json_report import result_to_dict
from mechaudit.report.sarif import FINGERPRINT, fingerprint, sarif_log


def _results(log: dict) -> dict[tuple, dict]:
    return {(r["ruleId"], r["properties"]["component"], r["properties"]["metric"]): r for r in log["runs"][0]["results"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return failing_project(tmp_path_factory.mktemp("sarif") / "proj")


@pytest.fixture(scope="module")
def log(project) -> dict:
    return sarif_log(audit_dict(project.spec))


@pytest.fixture(scope="module")
def example_logs() -> dict[str, dict]:
    return {name: sarif_log(result_to_dict(example_result(name))) for name in EXAMPLES}  # audited once per session


def test_every_example_validates_against_the_sarif_schema(example_logs, log) -> None:
    jsonschema.validate(log, SARIF_SCHEMA)
    for example in example_logs.values():
        jsonschema.validate(example, SARIF_SCHEMA)
        assert example["version"] == "2.1.0" and example["runs"][0]["tool"]["driver"]["name"] == "mechaudit"
    assert example_logs["digits"]["runs"][0]["properties"]["verdict"] == "fail"
    # only R302's warning (a dense CNN's class logit is not compact, in the control as in the shortcut model)
    assert {r["ruleId"] for r in example_logs["digits-control"]["runs"][0]["results"]} == {"R302"}


def test_example_results_point_at_the_spec_and_model_source_in_the_repository(example_logs) -> None:
    results = example_logs["digits"]["runs"][0]["results"]
    flip = next(r for r in results if r["ruleId"] == "L201" and r["properties"]["metric"] == "flip_rate")
    physical = flip["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"] == {"uri": "mechaudit/examples/digits/digits.toml", "uriBaseId": "%SRCROOT%"}
    spec_lines = example_spec("digits").read_text().splitlines()
    assert spec_lines[physical["region"]["startLine"] - 1].startswith("watermark =")
    assert flip["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == "input:watermark"


def test_rules_carry_descriptions_help_and_default_level(log) -> None:
    rules = {r["id"]: r for r in log["runs"][0]["tool"]["driver"]["rules"]}
    assert {"D101", "L201", "L202"} <= set(rules)
    l201 = rules["L201"]
    assert l201["name"] == "ForbiddenInputReliance"
    assert l201["shortDescription"]["text"].startswith("The model relies on an input region")
    assert "declared input mask" in l201["fullDescription"]["text"]
    for section in ("## What it checks", "## Why it matters", "## How it is measured", "## How to fix it",
                    "## References", "`max_flip_rate`"):
        assert section in l201["help"]["markdown"]
    assert l201["defaultConfiguration"]["level"] == "error"
    assert rules["L202"]["defaultConfiguration"]["level"] == "warning"
    for result in log["runs"][0]["results"]:
        assert log["runs"][0]["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == result["ruleId"]


def test_results_have_messages_locations_and_logical_components(log, project) -> None:
    results = _results(log)
    assert set(results) == {("L201", "input:watermark", "flip_rate"), ("L201", "input:watermark", "attribution_ratio"),
                            ("L202", "fc1:u0", "accuracy_drop")}
    unit = results[("L202", "fc1:u0", "accuracy_drop")]
    assert unit["level"] == "warning" and unit["kind"] == "fail"
    assert "accuracy_drop 0.28 > threshold 0.1" in unit["message"]["text"]
    physical = unit["locations"][0]["physicalLocation"]
    module = next(project.dir.glob("usermodel_*.py"))
    assert physical["artifactLocation"]["uri"] == module.name  # relative to the repository root
    line = module.read_text().splitlines()[physical["region"]["startLine"] - 1]
    assert line.strip().startswith("self.fc1 = nn.Linear")  # the line in the class that defines the layer
    assert unit["locations"][0]["logicalLocations"] == [{"name": "fc1:u0", "fullyQualifiedName": "fc1:u0",
                                                         "kind": "member"}]
    mask = results[("L201", "input:watermark", "flip_rate")]["locations"][0]["physicalLocation"]
    assert project.spec.read_text().splitlines()[mask["region"]["startLine"] - 1].startswith("watermark =")


def test_a_rule_enabled_by_the_spec_points_at_that_line(tmp_path: Path) -> None:
    project = failing_project(tmp_path / "p", local_model=False,
                              audit='select = ["L202"]\n[audit.rules.L202]\nmax_accuracy_drop = 0.2\n')
    result = _results(sarif_log(audit_dict(project.spec)))[("L202", "fc1:u0", "accuracy_drop")]
    line = result["locations"][0]["physicalLocation"]["region"]["startLine"]
    assert project.spec.read_text().splitlines()[line - 1] == "[audit.rules.L202]"
    assert "threshold 0.2" in result["message"]["text"]


def test_fingerprints_are_stable_across_runs_and_lines_but_follow_the_component(tmp_path: Path, log, project) -> None:
    again = sarif_log(audit_dict(project.spec))
    first = {k: r["partialFingerprints"] for k, r in _results(log).items()}
    assert first == {k: r["partialFingerprints"] for k, r in _results(again).items()}
    # moving the declaration down the spec moves the line, not the fingerprint
    moved = failing_project(tmp_path / "moved")
    moved.spec.write_text("# a comment\n# another\n" + moved.spec.read_text())
    moved_results = _results(sarif_log(audit_dict(moved.spec)))
    key = ("L201", "input:watermark", "flip_rate")
    assert moved_results[key]["partialFingerprints"] == first[key]
    assert (moved_results[key]["locations"][0]["physicalLocation"]["region"]["startLine"]
            == _results(log)[key]["locations"][0]["physicalLocation"]["region"]["startLine"] + 2)
    # the same rule and metric on another component is another alert
    renamed = _results(sarif_log(audit_dict(failing_project(tmp_path / "renamed", mask="corner").spec)))
    other = renamed[("L201", "input:corner", "flip_rate")]["partialFingerprints"][FINGERPRINT]
    assert other != first[key][FINGERPRINT]
    assert other == fingerprint("L201", "input:corner", "flip_rate")
    assert len({fingerprint("L202", f"fc1:u{i}", "accuracy_drop") for i in range(8)}) == 8


def test_waived_results_are_left_out_by_default_or_kept_suppressed(tmp_path: Path) -> None:
    project = failing_project(tmp_path / "p", local_model=False)
    waivers = write_waivers(tmp_path / "w.toml",
                            {"rule": "L202", "component": "fc1", "justification": "one unit by design",
                             "approver": "QA lead", "expires": "2026-12-31"},
                            {"rule": "L201", "justification": "old", "approver": "QA", "expires": "2025-01-01"})
    data = audit_dict(project.spec, waivers=str(waivers))
    default = sarif_log(data)
    jsonschema.validate(default, SARIF_SCHEMA)
    assert ("L202", "fc1:u0", "accuracy_drop") not in _results(default)  # GitHub would open an alert for it
    assert ("L201", "input:watermark", "flip_rate") in _results(default)  # an expired waiver waives nothing
    assert default["runs"][0]["properties"]["waivedOmitted"] == 1
    assert not any("suppressions" in r for r in default["runs"][0]["results"])
    log = sarif_log(data, keep_waived=True)
    jsonschema.validate(log, SARIF_SCHEMA)
    assert log["runs"][0]["properties"]["waivedOmitted"] == 0
    results = _results(log)
    waived = results[("L202", "fc1:u0", "accuracy_drop")]
    assert waived["suppressions"] == [{"kind": "external", "status": "accepted", "justification": "one unit by design",
                                       "properties": {"waiver": "W1", "approver": "QA lead",
                                                      "expires": "2026-12-31"}}]
    expired = results[("L201", "input:watermark", "flip_rate")]
    assert "suppressions" not in expired and "expired on 2025-01-01" in expired["message"]["text"]
    notes = [n["message"]["text"] for n in log["runs"][0]["invocations"][0]["toolExecutionNotifications"]]
    assert any("W2" in n and "expired" in n for n in notes)


def test_cli_writes_findings_sarif(cli, tmp_path: Path) -> None:
    project = failing_project(tmp_path / "p", local_model=False)
    out = tmp_path / "out"
    assert cli("audit", project.spec, "--out", out, "--format", "sarif", "-q").code == 1
    import json

    log = json.loads((out / "findings.sarif").read_text(encoding="utf-8"))
    jsonschema.validate(log, SARIF_SCHEMA)
    assert json.loads((out / "manifest.json").read_text())["files"]["findings.sarif"]


def _identities(log: dict) -> list[tuple]:
    """(rule, file, line, fingerprint) of each result: what GitHub code scanning tells alerts apart by."""
    keys = []
    for result in log["runs"][0]["results"]:
        physical = result["locations"][0]["physicalLocation"]  # every result has one (GitHub needs it)
        keys.append((result["ruleId"], physical["artifactLocation"]["uri"], physical["region"]["startLine"],
                     result["partialFingerprints"]["primaryLocationLineHash"]))
    return keys


def test_every_result_is_its_own_alert_with_a_physical_location(example_logs, log) -> None:
    for name in ("digits", "induction"):
        keys = _identities(example_logs[name])
        assert keys and len(set(keys)) == len(keys), name
        # several results share a (rule, line) — e.g. heads of different blocks at `class Attention(` — so GitHub's
        # own line hash would merge them; the per-result hash keeps them apart
        assert len({k[:3] for k in keys}) < len(keys) or name == "digits"
    keys = _identities(log)
    assert len(set(keys)) == len(keys) == 3
    hashes = [r["partialFingerprints"] for r in log["runs"][0]["results"]]
    assert all(h["primaryLocationLineHash"] == h[FINGERPRINT][:16] + ":1" for h in hashes)


def test_a_quick_run_points_at_the_model_file(cli, tmp_path: Path, monkeypatch) -> None:
    import json

    import numpy as np
    import torch
    from conftest import toy_arrays
    from fixtures.toy_models import signal_mlp

    (tmp_path / "pyproject.toml").write_text("")
    torch.jit.script(signal_mlp(spread=1)).save(str(tmp_path / "model.pt"))
    arrays = toy_arrays(200)
    np.savez(tmp_path / "data.npz", **arrays, mask=np.array([1, 0, 0, 0], np.float32))
    monkeypatch.chdir(tmp_path)
    result = cli("audit", "--model", "model.pt", "--data", "data.npz", "--mask", "watermark=mask",
                 "--format", "sarif", "--out", "out", "-q")
    assert result.code == 1, result.err
    log = json.loads((tmp_path / "out" / "findings.sarif").read_text(encoding="utf-8"))
    jsonschema.validate(log, SARIF_SCHEMA)
    keys = _identities(log)
    assert keys and len(set(keys)) == len(keys)
    assert {k[1:3] for k in keys} == {("model.pt", 1)}


def test_rule_descriptions_fit_githubs_limit() -> None:
    from mechaudit.report.sarif import MAX_DESCRIPTION, _descriptor
    from mechaudit.resources import builtin_rulebooks
    from mechaudit.rulebook import load_rulebook

    lengths = []
    for name in builtin_rulebooks():
        for rule in load_rulebook(name).rules.values():
            text = _descriptor(rule.id, rule.describe(), rule.severity)["fullDescription"]["text"]
            lengths.append(len(text))
            assert text == rule.docs.what or text.endswith("\u2026")
    assert max(lengths) <= MAX_DESCRIPTION
