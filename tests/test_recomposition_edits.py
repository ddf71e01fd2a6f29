"""What-if edits on the embedded `digits` shortcut and its control: directional ablation of the watermark's trace
removes the shortcut where unit suppression does not, the circuit routes through what L201 flags, and
`mechaudit edit --erase` writes the edit into weights that behave like the simulation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from fixtures.exactness import assert_equal_up_to_rounding
from safetensors import safe_open
from safetensors.torch import load_file

from mechaudit.engine import prepare, run_audit
from mechaudit.examples import example_spec
from mechaudit.spec import BehaviourSpec, load_spec
from mechaudit.techniques.direction_edit import projected, projected_linear_state, region_direction
from mechaudit.techniques.edits import what_if_erased

SEVEN = BehaviourSpec(kind="class_logit", target="7")


def _spec(name: str, select: tuple[str, ...], behaviour: BehaviourSpec | None = None):
    spec = load_spec(example_spec(name))
    options = dataclasses.replace(spec.options, select=select)
    return dataclasses.replace(spec, options=options, behaviour=behaviour or spec.behaviour)


def _by_metric(result, rule: str) -> dict:
    return {f.metric: f for f in result.findings if f.rule_id == rule}


@pytest.fixture(scope="module")
def digits_audit():
    return run_audit(_spec("digits", ("L201", "R301", "R303"), SEVEN))


def test_erasing_the_watermark_direction_removes_the_shortcut(digits_audit) -> None:
    flip = _by_metric(digits_audit, "L201")["flip_rate"]
    assert flip.status == "fail"
    what_if = flip.evidence["what_if"]
    best = next(row for row in what_if["layers"] if row["layer"] == what_if["best"])
    before, after = what_if["before"], best["after"]
    assert what_if["evaluated_samples"] == 180 and before["flip_rate"] > 0.15   # measured on held-out samples
    assert after["flip_rate"] < 0.25 * before["flip_rate"]                       # most of the shortcut is gone
    assert before["accuracy_region_removed"] - after["accuracy_region_removed"] <= 0.01  # at no cost on clean
    assert "erasing its direction at" in flip.message


def test_control_has_no_shortcut_to_erase_and_the_edit_costs_it_little() -> None:
    result = run_audit(_spec("digits-control", ("L201",)))
    flip = _by_metric(result, "L201")["flip_rate"]
    assert flip.status == "pass" and "what_if" not in flip.evidence
    context, _ = prepare(_spec("digits-control", ("L201",)))
    data = context.data
    what_if = what_if_erased(context.view, context.view.hidden_layers, data.inputs, data.labels,
                             data.masks["watermark"], 256, context.device)
    for row in what_if["layers"]:  # erasing a direction the model does not use leaves it as it was
        assert abs(row["after"]["accuracy_region_removed"] - what_if["before"]["accuracy_region_removed"]) <= 0.02


def test_digits_circuit_for_the_watermarked_class_routes_through_what_l201_flags(digits_audit) -> None:
    what_if = _by_metric(digits_audit, "L201")["flip_rate"].evidence["what_if"]
    flagged = [unit["component"] for row in what_if["layers"] if row["layer"] == what_if["best"]
               for unit in row["units"][:3]]
    (circuit,) = [f for f in digits_audit.findings if f.rule_id == "R301"]
    nodes = {node["id"] for node in circuit.evidence["circuit"]["nodes"]}
    assert set(flagged) <= nodes
    assert circuit.evidence["top_nodes"][0]["component"] == flagged[0]


def test_r303_unit_suppression_leaves_the_shortcut_and_the_direction_edit_removes_it(digits_audit) -> None:
    (pathway,) = [f for f in digits_audit.findings if f.rule_id == "R303"]
    assert pathway.status == "fail" and pathway.value > 0.15  # measured 0.18 of the predictions carried
    assert pathway.evidence["protected_flow_share"] > 0.4     # on the audit inputs, not on the stamped pairs
    units, direction = pathway.evidence["what_if_units"], pathway.evidence["what_if_direction"]
    assert units["after"]["flip_rate"] > 0.8 * units["before"]["flip_rate"]
    best = next(row for row in direction["layers"] if row["layer"] == direction["best"])
    assert best["after"]["flip_rate"] < 0.25 * direction["before"]["flip_rate"]


def test_r303_passes_the_control_whose_flow_share_alone_failed_it() -> None:
    """The control's watermark draws 22% of the flow (35% on its 7s, which failed the compliance gate while R303 was
    gated on the flow share), but cutting its pathway stops under 2% of the predictions from flipping."""
    (pathway,) = run_audit(_spec("digits-control", ("R303",), SEVEN)).findings
    assert pathway.status == "pass" and pathway.value < 0.02 and pathway.confidence == "certain"
    assert pathway.evidence["protected_flow_share"] > 0.15  # measured 0.22 (its pathway effect 0.011)


def test_direction_folded_into_linear_weights_matches_the_simulation() -> None:
    context, _ = prepare(_spec("digits", ("L201",)))
    view, data = context.view, context.data
    layer = view.layer("classifier.0")
    edit = region_direction(view, layer, data.inputs, data.masks["watermark"], 256, context.device)
    assert edit is not None and abs(float(edit.direction.norm()) - 1) < 1e-5
    assert float(edit.unit_shares().sum()) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad(), projected(view, [edit]):
        simulated = context.model(data.inputs)
    original = {k: v.clone() for k, v in context.model.state_dict().items()}
    context.model.load_state_dict(projected_linear_state(view, edit))
    with torch.no_grad():
        folded = context.model(data.inputs)
    context.model.load_state_dict(original)
    assert_equal_up_to_rounding(folded, simulated)
    with pytest.raises(ValueError, match="only simulated"):
        projected_linear_state(view, region_direction(view, view.layer("features.0"), data.inputs,
                                                      data.masks["watermark"], 256, context.device))


def test_edit_erase_writes_labelled_weights(cli, tmp_path: Path) -> None:
    out = tmp_path / "erased.safetensors"
    result = cli("edit", "--example", "digits", "--erase", "watermark", "--layer", "classifier.0", "--out", out)
    assert result.code == 0, result.err
    lines = {line.split(":")[0]: line for line in result.out.splitlines()}
    before, after = (float(x) for x in lines["flip_rate"].split(":")[1].split("(")[0].split("->"))
    assert after < 0.5 * before
    with safe_open(str(out), "pt") as handle:
        assert "SIMULATION" in handle.metadata()["mechaudit_edit"]
        assert handle.metadata()["edit"] == "direction of region 'watermark' erased at classifier.0"
    assert set(load_file(str(out))) == set(prepare(_spec("digits", ("L201",)))[0].model.state_dict())
    for bad in (["--erase", "nowhere", "--layer", "classifier.0"], ["--erase", "watermark", "--layer", "features.0"],
                ["--erase", "watermark"], ["--erase", "watermark", "--suppress", "classifier.0:u1"]):
        failed = cli("edit", "--example", "digits", *bad, "--out", tmp_path / "bad.safetensors")
        assert failed.code == 2 and len(failed.error_lines) == 1 and "Traceback" not in failed.err
    assert not (tmp_path / "bad.safetensors").exists()
