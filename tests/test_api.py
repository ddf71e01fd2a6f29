"""The Python API for a project's own tests: mechaudit.audit(...) and mechaudit.testing.assert_audit_passes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_arrays
from fixtures.compliance import write_waivers
from fixtures.toy_models import signal_mlp

import mechaudit
from mechaudit.errors import InputError
from mechaudit.testing import assert_audit_passes, gate_failures


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return toy_arrays(200)


MASK = np.array([1, 0, 0, 0], np.float32)  # over x0, the feature the toy model reads


def test_audit_returns_the_result_and_the_assertion_lists_failing_findings(data) -> None:
    model = signal_mlp(spread=1).train()
    result = mechaudit.audit(model, torch.from_numpy(data["inputs"]), labels=data["labels"],
                             masks={"watermark": MASK}, max_samples=200, seed=3)
    assert isinstance(result, mechaudit.AuditResult)
    assert model.training  # the caller's mode is restored
    assert {f.rule_id for f in result.findings} >= {"D101", "L201", "L202"}
    assert result.metadata["command"] == "mechaudit.audit()" and result.metadata["seed"] == 3
    assert list(result.metadata["model"]["sha256"]) == ["<state_dict>"]
    assert set(result.metadata["data"]["sha256"]) == {"<inputs>", "<labels>", "<mask:watermark>"}
    with pytest.raises(AssertionError) as failure:
        assert_audit_passes(result)
    message = str(failure.value)
    assert message.startswith("mechaudit gate failed (fail on error): 2 failing findings")
    assert "L201 fail [error] input:watermark" in message and "(flip_rate 0.28 > 0.05)" in message
    assert "L202" not in message  # a warning: below the gate
    with pytest.raises(AssertionError, match="3 failing findings"):
        assert_audit_passes(result, fail_on="warning")
    assert [f.rule_id for f in gate_failures(result, "warning")] == ["L201", "L201", "L202"]


def test_a_good_model_passes_and_results_are_deterministic(data) -> None:
    redundant = {"spread": 16, "hidden": 16}  # the signal spread over 16 units: none is critical
    first = mechaudit.audit(signal_mlp(**redundant), data["inputs"], labels=data["labels"], rulebook="compliance",
                            select=["D101", "L202"])
    assert_audit_passes(first)
    assert first.metadata["rulebook"]["name"] == "compliance"
    second = mechaudit.audit(signal_mlp(**redundant), data["inputs"], labels=data["labels"], rulebook="compliance",
                             select=("D101", "L202"))
    assert [f.to_dict() for f in first.findings] == [f.to_dict() for f in second.findings]
    assert first.metadata["model"]["sha256"] == second.metadata["model"]["sha256"]
    assert mechaudit.audit(signal_mlp(spread=2), data["inputs"], select=["D101"]).metadata["model"]["sha256"] \
        != first.metadata["model"]["sha256"]


def test_options_overrides_waivers_and_baseline(data, tmp_path: Path) -> None:
    inputs, labels = data["inputs"], data["labels"]
    strict = mechaudit.audit(signal_mlp(spread=4), inputs, labels=labels, select=["L202"],
                             rules={"L202": {"max_accuracy_drop": 0.01, "severity": "error"}})
    assert next(f.threshold for f in strict.findings if f.status == "fail") == 0.01
    assert strict.metadata["rulebook"]["overrides"] == {"L202": {"max_accuracy_drop": 0.01, "severity": "error"}}
    waivers = write_waivers(tmp_path / "w.toml", {"rule": "L202", "justification": "accepted", "approver": "QA",
                                                  "expires": "2026-02-01"})
    import datetime as dt

    waived = mechaudit.audit(signal_mlp(spread=4), inputs, labels=labels, select=["L202"], waivers=waivers,
                             rules={"L202": {"max_accuracy_drop": 0.01, "severity": "error"}},
                             today=dt.date(2026, 1, 1))
    assert_audit_passes(waived)
    from mechaudit.report.json_report import result_to_dict

    compared = mechaudit.audit(signal_mlp(spread=1), inputs, labels=labels, select=["L202"],
                               baseline=result_to_dict(strict))
    assert compared.baseline["verdict"] == "fail"  # fc1:u0's accuracy drop rose from 0.08 to 0.28
    assert [(e["component"], e["delta"]) for e in compared.baseline["regressions"]] == [("fc1:u0", 0.2)]


@pytest.mark.parametrize("call, fragment", [
    (lambda d: mechaudit.audit(object(), d["inputs"]), "must be a torch.nn.Module"),
    (lambda d: mechaudit.audit(signal_mlp(), d["inputs"], labels=d["labels"][:5]), "one value per sample"),
    (lambda d: mechaudit.audit(signal_mlp(), np.full((4, 4), np.nan, np.float32)), "NaN"),
    (lambda d: mechaudit.audit(signal_mlp(), d["inputs"], masks={"m": np.ones(3)}), "mask 'm'"),
    (lambda d: mechaudit.audit(signal_mlp(), d["inputs"], fail_on="sometimes"), "fail-on"),
    (lambda d: mechaudit.audit(signal_mlp(), d["inputs"], turbo=True), "unknown key 'turbo'"),
    (lambda d: mechaudit.audit(signal_mlp(), d["inputs"], rules={"L202": {"max_accuracy_drop": "x"}}),
     "max_accuracy_drop"),
    (lambda d: mechaudit.audit(signal_mlp(), d["inputs"], task="poetry"), "not one of"),
    (lambda d: mechaudit.audit(signal_mlp(), np.ones((4, 9), np.float32)), "do the inputs fit the model"),
])
def test_bad_input_raises_input_error(data, call, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        call(data)


def test_import_mechaudit_stays_light() -> None:
    code = "import sys, mechaudit; assert 'torch' not in sys.modules; print(mechaudit.__all__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "audit" in done.stdout


def test_a_result_saves_its_bundle_and_sarif_through_public_methods(data, tmp_path: Path, cli) -> None:
    import json

    result = mechaudit.audit(signal_mlp(spread=1), data["inputs"], labels=data["labels"], masks={"watermark": MASK},
                             max_samples=200)
    out = result.save(tmp_path / "bundle", formats=("json", "sarif"))
    assert json.loads((out / "findings.json").read_text()) == json.loads(result.to_json())
    assert (out / "findings.sarif").read_text() == result.to_sarif()
    sarif_rules = [r["ruleId"] for r in json.loads(result.to_sarif())["runs"][0]["results"]]
    assert sarif_rules == [f.rule_id for f in result.findings if f.status in ("fail", "error")] and "L201" in sarif_rules
    verified = cli("verify", out)  # in-memory inputs cannot be re-hashed: noted, not a mismatch
    assert verified.code == 0 and "input held in memory by the audit, not re-hashed: <inputs>" in verified.out
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        result.save(tmp_path / "other", formats=("xml",))


def test_the_api_takes_the_behaviour_the_circuit_rules_explain() -> None:
    """``behaviour`` is the spec's ``[behaviour]`` table: without it the circuit rules are skipped."""
    from fixtures.planted_circuit import planted, planted_data

    model, inputs = planted().eval(), planted_data(128)
    labels = model(inputs).argmax(1)
    without = mechaudit.audit(model, inputs, labels=labels, select=["R301"])
    declared = mechaudit.audit(model, inputs, labels=labels, select=["R301"],
                               behaviour={"kind": "class_logit", "target": "0"})
    assert [f.status for f in without.findings] == ["skipped"]
    assert [f.status for f in declared.findings] == ["pass"]
    with pytest.raises(InputError, match="behaviour.kind"):
        mechaudit.audit(model, inputs, labels=labels, select=["R301"], behaviour={"kind": "nonsense"})
    for wrong in ("class_logit", ["kind", "class_logit"]):  # not a mapping: dict() would raise ValueError
        with pytest.raises(InputError, match="behaviour: must be a mapping"):
            mechaudit.audit(model, inputs, labels=labels, select=["R301"], behaviour=wrong)


def test_a_per_sample_mask_is_refused_by_the_circuit_rules_with_a_clear_message() -> None:
    """Circuit input regions are one mask for every sample: a mask that differs per sample is named, not a crash;
    the same region declared once over the input's shape runs (the control)."""
    from fixtures.planted_circuit import planted, planted_data

    model, inputs = planted().eval(), planted_data(128)
    labels, behaviour = model(inputs).argmax(1), {"kind": "class_logit", "target": "0"}
    region = torch.zeros(inputs.shape[1])
    region[0] = 1.0
    per_sample = mechaudit.audit(model, inputs, labels=labels, select=["R301"], behaviour=behaviour,
                                 masks={"first": region.expand(len(inputs), -1).clone()})
    shared = mechaudit.audit(model, inputs, labels=labels, select=["R301"], behaviour=behaviour,
                             masks={"first": region})
    (refused,) = per_sample.findings
    assert refused.status == "error" and "'first' differs per sample" in refused.message, refused.message
    assert [f.status for f in shared.findings] == ["pass"]
