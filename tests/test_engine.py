from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import rulebook_with, write_project

from mechaudit.checks.registry import CHECKS, register
from mechaudit.engine import run_audit
from mechaudit.errors import InputError
from mechaudit.findings import Finding, Location, Measurement
from mechaudit.report.json_report import result_to_dict
from mechaudit.spec import load_spec


@dataclass(frozen=True)
class _NoParams:
    pass


@pytest.fixture(scope="module", autouse=True)
def raising_check():
    @register("test_raises", _NoParams)
    def _raise(context, rule):
        raise RuntimeError("boom")
    yield
    CHECKS.pop("test_raises")


def test_a_check_that_raises_becomes_an_error_finding_and_the_audit_goes_on(tmp_path: Path) -> None:
    project = write_project(tmp_path, data_table='labels = "labels"')
    result = run_audit(load_spec(project.spec), rulebook_with(tmp_path, {"D900": "test_raises"}))
    by_rule = {run.rule_id: run for run in result.rules}
    assert by_rule["D900"].status == "error" and "boom" in by_rule["D900"].findings[0].message
    assert by_rule["D101"].status == "pass" and by_rule["L202"].status == "fail"
    assert result.gate_failed and not result.complete


def test_missing_needs_skip_with_reason(tmp_path: Path) -> None:
    project = write_project(tmp_path)
    result = run_audit(load_spec(project.spec))
    l201 = next(run for run in result.rules if run.rule_id == "L201")
    assert l201.status == "skipped" and "no input masks" in l201.reason


def test_fail_on_levels(tmp_path: Path) -> None:
    project = write_project(tmp_path, factory_args={"dead": 5})
    spec = load_spec(project.spec)
    warning_fail = run_audit(replace(spec, options=replace(spec.options, fail_on="warning")))
    assert any(f.status == "fail" and f.severity == "warning" for f in warning_fail.findings)
    assert warning_fail.gate_failed
    assert not run_audit(spec).gate_failed  # default: only errors fail the gate
    assert not run_audit(replace(spec, options=replace(spec.options, fail_on="never"))).gate_failed


def test_results_are_deterministic_apart_from_times(tmp_path: Path) -> None:
    project = write_project(tmp_path)
    runs = [result_to_dict(run_audit(load_spec(project.spec))) for _ in range(2)]
    for run in runs:
        for key in ("started_at", "finished_at", "plan"):  # the plan holds this machine's timings
            run["metadata"].pop(key)
        for rule in run["rules"]:
            rule.pop("seconds")
    assert runs[0] == runs[1]


@pytest.mark.parametrize("arrays_labels, message", [(5, "values must lie in 0..1"), (-1, "values must lie in 0..1")])
def test_labels_out_of_range(tmp_path: Path, arrays_labels: int, message: str) -> None:
    from conftest import toy_arrays
    arrays = toy_arrays(20)
    arrays["labels"][3] = arrays_labels
    project = write_project(tmp_path, arrays=arrays)
    with pytest.raises(InputError, match=message):
        run_audit(load_spec(project.spec))


def test_inputs_that_do_not_fit_the_model(tmp_path: Path) -> None:
    import numpy as np
    project = write_project(tmp_path, arrays={"inputs": np.ones((5, 7), np.float32)})
    with pytest.raises(InputError, match=r"audit inputs of shape \(7,\) per sample; do the inputs fit the model"):
        run_audit(load_spec(project.spec))


def test_forward_that_raises_is_an_input_error(tmp_path: Path) -> None:
    project = write_project(tmp_path, factory="fixtures.toy_models:exploding")
    with pytest.raises(InputError, match="forward exploded"):
        run_audit(load_spec(project.spec))


def test_finding_to_dict_is_json_ready() -> None:
    import numpy as np
    finding = Finding("D101", "warning", "pass", "m", value=np.float32(0.5), evidence={"a": np.arange(3)})
    data = finding.to_dict()
    assert data["value"] == 0.5 and data["evidence"] == {"a": [0, 1, 2]}


@pytest.mark.parametrize("value, threshold, judged, status", [
    (0.6, 0.5, True, "fail"),
    (0.5, 0.5, True, "pass"),  # at the threshold passes, for every metric (D103's purity_gap once failed at 0)
    (0.0, 0.0, True, "pass"),
    (-0.1, 0.0, True, "pass"),
    (3.0, None, True, "pass"),  # descriptive: no threshold
    (0.9, 0.5, False, "pass"),  # not judged (e.g. too few units)
    (None, 0.5, True, "pass"),
])
def test_the_engine_judges_every_measurement_by_one_rule(value, threshold, judged, status) -> None:
    measured = Measurement("m", Location.of_layer("fc1"), "metric", value, threshold, {"k": 1}, judged=judged)
    finding = measured.finding("D101", "warning")
    assert (finding.rule_id, finding.severity, finding.status) == ("D101", "warning", status)
    assert (finding.metric, finding.value, finding.threshold, finding.evidence) == ("metric", value, threshold, {"k": 1})


def test_nested_time_budgets_keep_the_outer_bound() -> None:
    """An inner budget (the engine's isolated calibration calls inside a bounded step) neither switches the outer
    one off nor outlives it: the outer one fires at its own time, inside the inner one and after it."""
    import signal
    import time

    from mechaudit.engine import RuleTimeout, _time_budget

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    started = time.monotonic()
    with pytest.raises(RuleTimeout, match="budget of 1 s"):
        with _time_budget(1), _time_budget(60):
            spin(3)
    assert time.monotonic() - started < 2
    started = time.monotonic()
    with pytest.raises(RuleTimeout, match="budget of 1 s"):
        with _time_budget(1):
            with _time_budget(60):
                spin(0.2)
            spin(3)  # the inner budget has ended: the outer one still runs
    assert time.monotonic() - started < 2
    with pytest.raises(RuleTimeout, match="budget of 1 s"):
        with _time_budget(60), _time_budget(1):
            spin(3)  # the inner, shorter budget fires with its own message
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
