"""The embedded `induction` example: head ranking by ablation and by attribution patching finds the planted
previous-token and induction heads, the circuit rules recover them, and the control has no induction head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from mechaudit.activations import unit_statistics
from mechaudit.examples import EXAMPLES
from mechaudit.examples.induction.model import PLANTED_HEADS, build
from mechaudit.examples.induction.train import pattern_scores
from mechaudit.model_view import ModelView
from mechaudit.techniques.ablation import ablation_outputs
from mechaudit.techniques.circuits import at_position, edge_attribution, target_logit

FOLDER = EXAMPLES["induction"].spec.parent
CPU = torch.device("cpu")
PLANTED = set(PLANTED_HEADS.values())


def _load(name: str) -> tuple[torch.nn.Module, ModelView, dict[str, torch.Tensor]]:
    model = build()
    model.load_state_dict(load_file(str(FOLDER / f"{name}.safetensors")))
    data = {k: torch.from_numpy(v) for k, v in np.load(FOLDER / "audit_data.npz").items()}
    view = ModelView.discover(model.eval(), data["inputs"][:2], only=("blocks.0.attn", "blocks.1.attn"))
    return model, view, data


def _ablation_effects(model, view, data) -> dict[str, float]:
    """Mean drop of the correct-token logit at the last position when each head alone is mean-ablated."""
    inputs, labels = data["inputs"], data["labels"]
    means = unit_statistics(view, view.layers, inputs, 256, CPU)
    with torch.no_grad():
        base = target_logit(model(inputs)[:, -1], labels)
    effects = {}
    for layer in view.layers:
        outputs = ablation_outputs(model, view.site(layer), layer, inputs, list(range(layer.size)),
                                   means[layer.name].mean_map.float(), 256, CPU)
        last = outputs.reshape(layer.size, len(inputs), inputs.shape[1], -1)[:, :, -1]
        for head in range(layer.size):
            effects[layer.address(head)] = float((base - target_logit(last[head], labels)).mean())
    return effects


def _auroc(scores: dict[str, float]) -> float:
    heads = sorted(scores)
    return roc_auc_score([h in PLANTED for h in heads], [scores[h] for h in heads])


def test_head_ablation_ranks_the_planted_heads_first() -> None:
    effects = _ablation_effects(*_load("induction"))
    assert _auroc(effects) == 1.0
    assert min(effects[h] for h in PLANTED) > 5.0       # each planted head carries most of the logit (about 11)


def test_attribution_patching_ranks_the_planted_heads_first() -> None:
    model, view, data = _load("induction")
    scores = edge_attribution(view, data["clean"], data["labels"], at_position(target_logit, -1),
                              reference=data["corrupted"])
    assert _auroc(scores.nodes) == 1.0
    (top_edge, _), *_ = sorted(scores.edges.items(), key=lambda item: -item[1])
    assert top_edge == (PLANTED_HEADS["previous_token"], PLANTED_HEADS["induction"])  # K-composition


def test_control_has_no_induction_head() -> None:
    trained, control = _load("induction"), _load("induction-control")
    data = trained[2]
    patterns = {name: {row["head"]: row for row in pattern_scores(model, data["inputs"], data["periods"])}
                for name, (model, _, _) in (("induction", trained), ("control", control))}
    assert patterns["induction"][PLANTED_HEADS["induction"]]["induction"] > 0.3
    assert patterns["induction"][PLANTED_HEADS["previous_token"]]["previous_token"] > 0.8
    assert max(row["induction"] for row in patterns["control"].values()) < 0.1
    assert max(row["previous_token"] for row in patterns["control"].values()) < 0.2
    assert max(abs(v) for v in _ablation_effects(*control).values()) < 1e-4
    with torch.no_grad():
        accuracy = (control[0](data["inputs"])[:, -1].argmax(-1) == data["labels"]).float().mean()
    assert accuracy < 0.1                                 # chance is 1/32


@pytest.fixture(scope="module")
def audits(example_audit) -> dict[str, tuple[int, dict]]:
    """``mechaudit audit --example NAME --format json`` of both (shared with the other tests of the examples)."""
    return {name: example_audit(name) for name in ("induction", "induction-control")}


def test_circuit_rules_recover_the_planted_heads(audits) -> None:
    code, data = audits["induction"]
    assert code == 0                                      # only warnings fail: R304 (single points of failure)
    by_rule = {}
    for finding in data["findings"]:
        by_rule.setdefault(finding["rule_id"], []).append(finding)
    (r301,) = by_rule["R301"]
    assert {row["component"] for row in r301["evidence"]["top_nodes"][:2]} == PLANTED
    (r302,) = by_rule["R302"]
    assert r302["status"] == "pass" and r302["evidence"]["faithfulness"] >= 0.8
    assert set(r302["evidence"]["circuit"]) == PLANTED
    assert {f["location"]["component"] for f in by_rule["R304"] if f["status"] == "fail"} == PLANTED


def test_head_ablation_rule_flags_exactly_the_planted_heads(audits) -> None:
    """L202 on a next-token model: accuracy of the next token at the behaviour's position, per head."""
    _, data = audits["induction"]
    l202 = [f for f in data["findings"] if f["rule_id"] == "L202"]
    assert {f["location"]["component"] for f in l202 if f["status"] == "fail"} == PLANTED
    assert all(f["value"] > 0.8 for f in l202 if f["status"] == "fail")      # each alone breaks the copying
    _, control = audits["induction-control"]
    assert {f["status"] for f in control["findings"] if f["rule_id"] == "L202"} == {"pass"}


def test_control_audit_reports_the_absent_behaviour_and_no_ratio(audits) -> None:
    """The control never learned to copy (accuracy < 0.1, clean and corrupted prompts give the same logit): every
    rule that divides by the behaviour (L207 patching, R302 faithfulness, R304 behaviour lost) reports that it is
    absent, once, with its gap and noise, and no fraction; the others pass, and so does the gate (those rules are
    info / warning)."""
    code, data = audits["induction-control"]
    assert code == 0 and data["verdict"] == "pass"
    statuses = {r["id"]: r["status"] for r in data["rules"]}
    dividing = {"L207", "R302", "R304"}
    assert {rule: statuses[rule] for rule in dividing} == dict.fromkeys(dividing, "fail"), statuses
    assert {s for rule, s in statuses.items() if rule not in dividing} <= {"pass", "skipped"}, statuses
    assert all(r["reason"] for r in data["rules"] if r["status"] == "skipped")
    for rule in dividing:
        (finding,) = [f for f in data["findings"] if f["rule_id"] == rule]
        assert finding["metric"] == "behaviour_absent" and "absent or too weak" in finding["message"]
        presence = finding["evidence"]["presence"]
        assert presence["present"] is False and abs(presence["gap"]) <= 3 * presence["standard_error"]
        assert not any(key in finding["evidence"] for key in ("faithfulness", "units", "components"))
    (r301,) = [f for f in data["findings"] if f["rule_id"] == "R301"]
    assert r301["value"] == 0.0


def test_trained_model_passes_the_presence_check_and_keeps_its_ratios(audits) -> None:
    """The control of the test above: the trained model's gap stands far out of its noise."""
    _, data = audits["induction"]
    for rule in ("L207", "R302", "R304"):
        findings = [f for f in data["findings"] if f["rule_id"] == rule]
        assert findings and all(f["metric"] != "behaviour_absent" for f in findings)
    (l207,) = [f for f in data["findings"] if f["rule_id"] == "L207"]
    assert l207["metric"] == "top_recovered_fraction" and l207["value"] > 0.9


def test_training_sequences_repeat_at_a_varying_period() -> None:
    from mechaudit.examples.induction.model import repeated_sequences

    generator = torch.Generator().manual_seed(0)
    tokens, periods, mask = repeated_sequences(64, generator)
    rows = torch.arange(64)
    last = tokens.shape[1] - 1
    assert torch.equal(tokens[rows, last], tokens[rows, last - periods])   # the last token repeats one period back
    assert mask[:, last - 1].all() and not mask[:, 0].any()
    assert len(set(periods.tolist())) > 4                                   # the period varies
