"""JUnit XML and GitHub annotations: parse with junitparser, right counts, messages with value vs threshold."""

from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import rulebook_with
from fixtures.compliance import TODAY, audit_dict, failing_project, write_waivers
from junitparser import Error, Failure, JUnitXml, Skipped

from mechaudit.checks.registry import CHECKS, register
from mechaudit.engine import run_audit
from mechaudit.report.github import annotation_lines
from mechaudit.report.json_report import result_to_dict
from mechaudit.report.junit import junit_xml
from mechaudit.spec import load_spec


def _suite(xml: str):
    parsed = JUnitXml.fromstring(xml)
    suites = list(parsed)
    assert len(suites) == 1
    return parsed, suites[0]


def _outcomes(suite) -> dict[str, str]:
    outcomes = {}
    for case in suite:
        kinds = {type(r).__name__ for r in case.result}
        outcomes[case.name] = kinds.pop() if kinds else "pass"
    return outcomes


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return audit_dict(failing_project(tmp_path_factory.mktemp("junit") / "p", local_model=False).spec)


def test_one_case_per_finding_with_the_right_counts(data) -> None:
    parsed, suite = _suite(junit_xml(data))
    statuses = [f["status"] for f in data["findings"]]
    assert suite.tests == len(data["findings"]) == parsed.tests
    assert suite.failures == statuses.count("fail") == 3
    assert suite.errors == 0 and suite.skipped == statuses.count("skipped")
    outcomes = _outcomes(suite)
    assert outcomes["L202 critical-units [fc1:u0] accuracy_drop"] == "Failure"
    assert outcomes["L201 forbidden-input-reliance [input:watermark] flip_rate"] == "Failure"
    assert outcomes["L201 forbidden-input-reliance [input:watermark] attribution_ratio"] == "Failure"
    assert outcomes["D101 dead-units [fc1] dead_fraction"] == "pass"
    props = {p.name: p.value for p in suite.properties()}
    assert props["verdict"] == "fail" and props["fail_on"] == "error" and props["rulebook"] == "default"


def test_failures_carry_message_and_value_against_threshold(data) -> None:
    _, suite = _suite(junit_xml(data))
    case = next(c for c in suite if c.name.startswith("L202"))
    failure = next(r for r in case.result if isinstance(r, Failure))
    assert failure.message.startswith("mean ablation of fc1:u0 alone drops accuracy")
    assert failure.type == "warning"
    assert "accuracy_drop = 0.28 > threshold 0.1" in failure.text
    assert "how to fix:" in failure.text
    assert case.classname == "mechaudit.localization.L202"


@dataclass(frozen=True)
class _NoParams:
    pass


@pytest.fixture
def raising_check():
    @register("test_junit_raises", _NoParams)
    def _raises(context, rule):
        raise RuntimeError("kaboom")
    yield
    CHECKS.pop("test_junit_raises")


def test_errors_and_waivers(tmp_path: Path, raising_check) -> None:
    project = failing_project(tmp_path / "p", local_model=False)
    waivers = write_waivers(tmp_path / "w.toml",
                            {"rule": "L202", "justification": "accepted", "approver": "QA", "expires": "2026-06-30"},
                            {"rule": "D101", "justification": "nothing to waive", "approver": "QA",
                             "expires": "2026-06-30"})
    spec = load_spec(project.spec)
    from dataclasses import replace

    spec = replace(spec, options=replace(spec.options, waivers=str(waivers)))
    result = run_audit(spec, rulebook_with(tmp_path, {"D900": "test_junit_raises"}), today=TODAY)
    _, suite = _suite(junit_xml(result_to_dict(result)))
    outcomes = _outcomes(suite)
    assert outcomes["D900 test-test_junit_raises"] == "Error"
    error = next(r for c in suite if c.name.startswith("D900") for r in c.result)
    assert isinstance(error, Error) and "kaboom" in error.message
    waived = next(c for c in suite if c.name.startswith("L202"))
    skipped = next(r for r in waived.result if isinstance(r, Skipped))
    assert skipped.message.startswith("waived by W1 (QA, until 2026-06-30): accepted")
    assert suite.errors == 1 and suite.failures == 2  # L201 (both metrics) still fails; L202 is waived
    props = {p.name: p.value for p in suite.properties()}
    assert props["waiver.W1"].startswith("active") and props["waiver.W2"].startswith("unused")
    assert "waiver W2 (D101 *) is unused" in suite._elem.find("system-out").text


def test_hostile_names_still_parse(data) -> None:
    hostile = {**data, "metadata": {**data["metadata"],
                                    "model": {**data["metadata"]["model"], "name": 'x<y>&"\x00\x1b[31m'}}}
    _, suite = _suite(junit_xml(hostile))
    assert suite.name.startswith("mechaudit: x<y>&")


def test_github_annotations(data, cli, tmp_path: Path) -> None:
    lines = annotation_lines(data)
    assert len(lines) == 3
    error = next(line for line in lines if "L201" in line)
    assert error.startswith("::error file=audit.toml,line=")
    assert "title=L201 fail at input%3Awatermark::" in error
    assert "%25" in error  # '%' escaped as GitHub requires
    assert next(line for line in lines if "L202" in line).startswith("::warning ")
    project = failing_project(tmp_path / "p", local_model=False)
    out = tmp_path / "out"
    result = cli("audit", project.spec, "--out", out, "--format", "github,junit", "-q")
    assert result.code == 1
    printed = [line for line in result.out.splitlines() if line.startswith("::")]
    assert printed == (out / "annotations.txt").read_text().splitlines() and len(printed) == 3
    JUnitXml.fromfile(str(out / "junit.xml"))
    # without --out, github annotations only go to stdout
    assert cli("audit", project.spec, "--format", "github", "-q").out.count("::error") == 2
