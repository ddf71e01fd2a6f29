"""Waivers: parsing, matching, expiry against an injected today, unused waivers, and their display everywhere."""

import datetime as dt
import json
from pathlib import Path

import jsonschema
import pytest
from conftest import read_findings
from fixtures.compliance import FINDINGS_SCHEMA, TODAY, audit_result, failing_project, write_waivers
from hypothesis import given, settings
from hypothesis import strategies as st

from mechaudit.errors import InputError
from mechaudit.findings import AuditResult, Finding, Location
from mechaudit.report.console import summary_lines
from mechaudit.report.github import annotation_lines
from mechaudit.report.json_report import result_to_dict
from mechaudit.testing import assert_audit_passes
from mechaudit.waivers import WaiverFile, apply_waivers, load_waivers, parse_waivers

GOOD = '''
[[waiver]]
id = "SHORTCUT-1"
rule = "L201"
component = "input:watermark"
metric = "flip_rate"
justification = "Accepted for the demo; retraining tracked in #12."
approver = "Jane Doe <jane@example.com>"
expires = 2026-06-30

[[waiver]]
rule = "L202"
justification = "  critical unit by design  "
approver = "QA"
expires = "2026-01-15"
'''


def _result(*findings: Finding) -> AuditResult:
    return AuditResult(list(findings), [], {})


def _fail(rule: str, component: str | None, metric: str = "m", severity: str = "error") -> Finding:
    location = None
    if component:
        layer, _, unit = component.partition(":")
        location = Location(component, layer, unit or None)
    return Finding(rule, severity, "fail", "bad", location, metric, 1.0, 0.5)


def _file(text: str) -> WaiverFile:
    return WaiverFile("w.toml", "0" * 64, parse_waivers(text))


def test_parse_a_valid_file() -> None:
    first, second = parse_waivers(GOOD)
    assert first.id == "SHORTCUT-1" and first.metric == "flip_rate" and first.expires == dt.date(2026, 6, 30)
    assert second.id == "W2" and second.component == "*" and second.justification == "critical unit by design"
    assert second.expires == dt.date(2026, 1, 15)
    assert parse_waivers("") == ()


@pytest.mark.parametrize("text, fragment", [
    ("[[waiver]]\nrule = 'L201'\napprover = 'a'\nexpires = 2026-01-01", "missing key 'justification'"),
    ("[[waiver]]\nrule = 'L201'\njustification = 'j'\napprover = 'a'\nexpires = 'soon'", "must be a date"),
    ("[[waiver]]\nrule = 'L201'\njustification = 'j'\napprover = 'a'\nexpires = 2026-01-01T10:00:00",
     "must be a date"),
    ("[[waiver]]\nrule = 'X1'\njustification = 'j'\napprover = 'a'\nexpires = 2026-01-01", "not a rule id"),
    ("[[waiver]]\nrule = 'L201'\njustification = ''\napprover = 'a'\nexpires = 2026-01-01", "non-empty string"),
    ("[[waiver]]\nrule = 'L201'\njustification = 'j'\napprover = 'a'\nexpires = 2026-01-01\nowner = 'me'",
     "unknown key 'owner'"),
    ("waiver = 3", "array of tables"),
    ("[waiver]\nrule = 'L201'", "array of tables"),
    ("waivers = []", "unknown key 'waivers'"),
    ("[[waiver]\n", "not valid TOML"),
    (("[[waiver]]\nid = 'A'\nrule = 'L201'\njustification = 'j'\napprover = 'a'\nexpires = 2026-01-01\n"
      "[[waiver]]\nid = 'A'\nrule = 'L202'\njustification = 'j'\napprover = 'a'\nexpires = 2026-01-01"),
     "duplicate"),
])
def test_bad_files_are_input_errors(text: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        parse_waivers(text, "w.toml")


_VALUES = st.sampled_from(['"L201"', '"x"', "''", "2026-01-01", "2026-01-01T00:00:00", "1", "-3.5", "true",
                           "[]", '["a", 1]', "{a = 1}", '"2026-13-45"', '"*"', '"L20"', "nan"])
_KEYS = st.sampled_from(["id", "rule", "component", "metric", "justification", "approver", "expires", "other"])


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_waivers_or_an_input_error(text: str) -> None:
    try:
        parse_waivers(text)
    except InputError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(_KEYS, _VALUES), max_size=8), max_size=4),
       st.sampled_from(["[[waiver]]", "[waiver]", "[[other]]", "[[waiver.x]]"]))
def test_any_waiver_like_toml_gives_waivers_or_an_input_error(tables, header) -> None:
    text = "\n".join(header + "\n" + "\n".join(f"{k} = {v}" for k, v in dict(pairs).items()) for pairs in tables)
    try:
        waivers = parse_waivers(text)
    except InputError:
        return
    for waiver in waivers:
        assert waiver.rule[0] in "DLR" and isinstance(waiver.expires, dt.date)


def test_matching_component_layer_metric_and_all() -> None:
    unit, other_metric, other_layer = _fail("L201", "input:watermark", "flip_rate"), \
        _fail("L201", "input:watermark", "attribution_ratio"), _fail("L202", "fc2:u1")
    result = _result(unit, other_metric, other_layer, _fail("L202", "fc1:u3"))
    apply_waivers(result, _file(GOOD.replace('rule = "L202"', 'rule = "L202"\ncomponent = "fc1"')), TODAY)
    assert unit.waived and not other_metric.waived and not other_layer.waived  # metric, then layer restriction
    assert result.findings[3].waived  # a layer waiver covers its units
    assert result.waivers["waived"] == 2


def test_expiry_uses_the_injected_today(tmp_path: Path) -> None:
    text = GOOD.replace("expires = 2026-06-30", "expires = 2026-01-14")  # the day before TODAY
    finding = _fail("L201", "input:watermark", "flip_rate")
    result = apply_waivers(_result(finding), _file(text), today=TODAY)
    assert finding.waiver["state"] == "expired" and not finding.waived and result.gate_failed
    entry = result.waivers["entries"][0]
    assert entry["expired"] and entry["used"] and entry["matches"] == ["input:watermark"]
    with pytest.raises(AssertionError, match="waiver SHORTCUT-1 expired on 2026-01-14"):
        assert_audit_passes(result)
    # valid through the expiry day itself
    same_day = _fail("L201", "input:watermark", "flip_rate")
    assert apply_waivers(_result(same_day), _file(text), today=dt.date(2026, 1, 14)).findings[0].waived


def test_an_active_waiver_is_preferred_and_passes_never_consume_waivers() -> None:
    text = GOOD + '\n[[waiver]]\nrule = "L201"\njustification = "newer"\napprover = "B"\nexpires = 2030-01-01\n'
    text = text.replace("expires = 2026-06-30", "expires = 2020-01-01")
    finding = _fail("L201", "input:watermark", "flip_rate")
    passing = Finding("L202", "warning", "pass", "fine", Location.of_layer("fc1"), "accuracy_drop", 0.0, 0.1)
    result = apply_waivers(_result(finding, passing), _file(text), TODAY)
    assert finding.waiver["id"] == "W3" and finding.waived and not result.gate_failed
    assert passing.waiver is None
    used = {e["id"]: e["used"] for e in result.waivers["entries"]}
    assert used == {"SHORTCUT-1": True, "W2": False, "W3": True}


def test_waived_findings_keep_their_status_and_do_not_fail_the_gate(tmp_path: Path) -> None:
    project = failing_project(tmp_path / "p", local_model=False)
    assert audit_result(project.spec).gate_failed
    waivers = write_waivers(tmp_path / "w.toml",
                            {"rule": "L201", "component": "input:watermark", "justification": "accepted",
                             "approver": "QA", "expires": dt.date(2026, 3, 1)},
                            {"rule": "D101", "justification": "stale", "approver": "QA",
                             "expires": dt.date(2026, 3, 1)})
    result = audit_result(project.spec, waivers=str(waivers))
    assert not result.gate_failed
    flip = next(f for f in result.findings if f.metric == "flip_rate")
    assert flip.status == "fail" and flip.waived
    data = result_to_dict(result)
    jsonschema.validate(data, FINDINGS_SCHEMA)
    assert data["verdict"] == "pass" and data["counts"]["fail"] == 3
    assert data["waivers"]["waived"] == 2 and data["waivers"]["today"] == "2026-01-15"
    assert [e["used"] for e in data["waivers"]["entries"]] == [True, False]
    lines = summary_lines(result)
    assert any("L201" in line and "WAIVED" in line for line in lines)
    assert any("waiver W2 (D101 *) is unused" in line for line in lines)
    github = annotation_lines(data)
    assert any(line.startswith("::notice ") and "(waived)" in line for line in github)
    assert any("W2 unused" in line for line in github)


def test_cli_waivers_from_flag_spec_and_pyproject(cli, tmp_path: Path, monkeypatch) -> None:
    project = failing_project(tmp_path / "p", local_model=False)
    write_waivers(project.dir / "waivers.toml",
                  {"rule": "L201", "justification": "accepted", "approver": "QA", "expires": "2999-12-31"})
    out = project.out()
    assert cli("audit", project.spec, "--out", out, "-q").code == 1
    monkeypatch.chdir(project.dir)
    assert cli("audit", project.spec, "--waivers", "waivers.toml", "--out", out, "-q").code == 0
    assert read_findings(out)["waivers"]["file"] == str(project.dir / "waivers.toml")
    # from [tool.mechaudit] (relative to the pyproject.toml), then from the spec's [audit] (relative to the spec)
    (project.dir / "pyproject.toml").write_text('[tool.mechaudit]\nwaivers = "waivers.toml"\n')
    monkeypatch.chdir(tmp_path)
    assert cli("audit", project.spec, "-q").code == 0  # the pyproject above the spec, wherever we run from
    assert cli("audit", project.spec, "-q", "--isolated").code == 1  # no pyproject at all
    monkeypatch.chdir(project.dir)
    assert cli("audit", project.spec, "-q").code == 0
    (project.dir / "pyproject.toml").write_text("")
    sub = project.dir / "sub"
    sub.mkdir()
    (project.dir / "waivers.toml").rename(sub / "w.toml")
    project.spec.write_text(project.spec.read_text().replace("[audit]\n", '[audit]\nwaivers = "sub/w.toml"\n'))
    result = cli("audit", project.spec, "-q", "-v")
    assert result.code == 0, result.err


def test_cli_bad_or_missing_waiver_file_is_one_line_and_writes_nothing(cli, tmp_path: Path) -> None:
    project = failing_project(tmp_path / "p", local_model=False)
    out = project.out()
    missing = cli("audit", project.spec, "--waivers", tmp_path / "nope.toml", "--out", out)
    assert missing.code == 2 and "waiver file not found" in missing.err and not out.exists()
    (tmp_path / "bad.toml").write_text('[[waiver]]\nrule = "L201"\n')
    bad = cli("audit", project.spec, "--waivers", tmp_path / "bad.toml", "--out", out)
    assert bad.code == 2 and len(bad.error_lines) == 1 and "missing key 'justification'" in bad.err
    assert not out.exists()


def test_load_waivers_hashes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text(GOOD)
    loaded = load_waivers(path)
    import hashlib

    assert loaded.sha256 == hashlib.sha256(GOOD.encode()).hexdigest() and len(loaded.waivers) == 2
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match="not UTF-8"):
        load_waivers(path)
    json.dumps([w.to_dict() for w in loaded.waivers])


def test_the_html_report_section_lists_waived_findings_and_stale_waivers(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from mechaudit.report.html_report import environment

    project = failing_project(tmp_path / "p", local_model=False)
    waivers = write_waivers(tmp_path / "w.toml",
                            {"rule": "L201", "justification": "accepted <for now>", "approver": "QA",
                             "expires": "2026-12-01"},
                            {"rule": "D101", "justification": "stale", "approver": "QA", "expires": "2020-01-01"})
    data = result_to_dict(audit_result(project.spec, waivers=str(waivers)))
    html = environment().get_template("partials/compliance.html.j2").render(doc=SimpleNamespace(result=data))
    assert 'id="waivers"' in html and "fail, WAIVED" in html and "accepted &lt;for now&gt;" in html
    assert "expired on 2020-01-01, it no longer waives" in html and "unused: it matches no failing finding" in html
    assert 'id="baseline"' not in html
