"""The embedded examples end to end: the shortcut model fails L201, its control passes its gate."""

from pathlib import Path

import pytest

from mechaudit.examples import EXAMPLES


@pytest.fixture(scope="module")
def audits(example_audit) -> dict[str, tuple[int, dict]]:
    """``mechaudit audit --example NAME --format json`` of both (shared with the other tests of the examples)."""
    return {name: example_audit(name) for name in ("digits", "digits-control")}


def test_digits_fails_the_gate_on_l201(audits) -> None:
    code, data = audits["digits"]
    assert code == 1 and data["verdict"] == "fail"
    assert {"D101", "L201", "L202"} <= {f["rule_id"] for f in data["findings"]}
    l201 = {f["metric"]: f for f in data["findings"] if f["rule_id"] == "L201"}
    assert l201["attribution_ratio"]["status"] == "fail" and l201["attribution_ratio"]["value"] > 3.0
    assert l201["flip_rate"]["status"] == "fail" and l201["flip_rate"]["value"] > 0.1
    assert l201["flip_rate"]["location"]["component"] == "input:watermark"


def test_digits_control_passes_every_rule(audits) -> None:
    code, data = audits["digits-control"]
    assert code == 0 and data["verdict"] == "pass"
    statuses = {r["id"]: r["status"] for r in data["rules"]}
    localization = ("L201", "L202", "L203", "L204", "L205", "L206", "L207")
    assert {statuses[r] for r in ("D101", *localization)} == {"pass"}
    # every rule that judges the model passes or says why it cannot run; the decomposition rules D102-D106
    # describe its structure and may warn (the control's conv channels are not class-selective, for one)
    # R302 judges how compact the declared behaviour's mechanism is, not the shortcut: this dense 56-unit CNN needs
    # 42 units for the logit of class 7 in both models, so the control fails it (a warning) as the shortcut model
    # does (R302's docs); R303 tells the two apart
    judging = {rule: status for rule, status in statuses.items()
               if (rule == "D101" or not rule.startswith("D")) and rule != "R302"}
    assert set(judging.values()) <= {"pass", "skipped"}, statuses
    assert statuses["R302"] == "fail" and {"R301", "R303", "R304"} <= set(statuses)
    assert {f["severity"] for f in data["findings"] if f["status"] == "fail"} <= {"warning", "info"}
    assert all(r["reason"] for r in data["rules"] if r["status"] == "skipped")
    l201 = {f["metric"]: f["value"] for f in data["findings"] if f["rule_id"] == "L201"}
    assert l201["attribution_ratio"] < 2.0 and l201["flip_rate"] < 0.03


def test_shortcut_puts_more_attribution_in_the_watermark_than_its_control(audits) -> None:
    ratio = {name: next(f["value"] for f in data["findings"] if f.get("metric") == "attribution_ratio")
             for name, (_, data) in audits.items()}
    assert ratio["digits"] > 3 * ratio["digits-control"]


def test_examples_record_their_inputs(audits) -> None:
    _, data = audits["digits"]
    model_files = data["metadata"]["model"]["sha256"]
    assert [Path(p).name for p in model_files] == ["digits.safetensors"]
    assert [Path(p).name for p in data["metadata"]["data"]["sha256"]] == ["audit_data.npz", "localization.npz"]
    assert set(EXAMPLES) == {"digits", "digits-control", "induction", "induction-control"}


def test_the_flagship_shows_its_circuit_and_the_watermark_pathway(audits) -> None:
    """Both specs declare a behaviour (the logit of class 7), so R301-R304 run in the main job; R303 (the effect
    of cutting the watermark's pathway, with its share of the attribution flow) fails the shortcut model only."""
    statuses, flows = {}, {}
    for name, (_, data) in audits.items():
        statuses[name] = {r["id"]: r["status"] for r in data["rules"]}
        flows[name] = next(f for f in data["findings"] if f["rule_id"] == "R303")["evidence"]["protected_flow_share"]
        circuit = next(f for f in data["findings"] if f["rule_id"] == "R301")["evidence"]
        assert circuit["circuit"]["edges"] and not circuit["unconnected_layers"]
        assert {row["method"].split(":")[0] for row in circuit["edge_choice"]} == {"weights"}
    assert statuses["digits"]["R303"] == "fail" and statuses["digits-control"]["R303"] == "pass"
    assert flows["digits"] > 2 * flows["digits-control"]          # measured 0.48 against 0.22
    assert statuses["digits"]["R302"] == statuses["digits-control"]["R302"] == "fail"
    assert statuses["digits"]["R304"] == statuses["digits-control"]["R304"] == "pass"
