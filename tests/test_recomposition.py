"""Circuit rules R301-R304 against a planted circuit, with controls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_project
from fixtures.exactness import assert_equal_up_to_rounding
from fixtures.planted_circuit import PLANTED_EDGES, PLANTED_NODES, planted, planted_data
from sklearn.metrics import roc_auc_score

from mechaudit.engine import run_audit
from mechaudit.model_view import ModelView
from mechaudit.spec import load_spec
from mechaudit.techniques.circuits import edge_attribution, target_logit
from mechaudit.techniques.edge_patching import exact_edge_effects

BEHAVIOUR = '[behaviour]\nkind = "class_logit"\ntarget = "0"\n'


def _planted_project(tmp_path: Path, mask_columns: tuple[int, ...] = (), factory: str = "planted",
                     args: str = "") -> Path:
    x = planted_data().numpy()
    model = planted().eval()
    labels = model(torch.from_numpy(x)).argmax(1).numpy()
    arrays = {"inputs": x, "labels": labels}
    table = 'labels = "labels"\n'
    if mask_columns:
        mask = np.zeros(6, np.float32)
        mask[list(mask_columns)] = 1
        arrays["region"] = mask
        table += '[data.masks]\nregion = "region"\n'
    project = write_project(tmp_path, arrays=arrays, data_table=table,
                            model_table=f'factory = "fixtures.planted_circuit:{factory}"{args}',
                            extra=BEHAVIOUR + '[audit]\nselect = ["R"]\n')
    return project.spec


def _by_rule(result) -> dict:
    grouped: dict = {}
    for finding in result.findings:
        grouped.setdefault(finding.rule_id, []).append(finding)
    return grouped


def test_eap_recovers_the_planted_circuit() -> None:
    model = planted().eval()
    x = planted_data()
    view = ModelView.discover(model, x[:2])
    scores = edge_attribution(view, x, torch.zeros(len(x), dtype=torch.long), target_logit)
    hidden = [n for n in scores.nodes if not n.startswith("out:")]
    node_truth = [n in PLANTED_NODES for n in hidden]
    assert roc_auc_score(node_truth, [scores.nodes[n] for n in hidden]) >= 0.95
    edge_truth = [e in PLANTED_EDGES for e in scores.edges]
    assert roc_auc_score(edge_truth, [scores.edges[e] for e in scores.edges]) >= 0.95
    distractors = [scores.nodes[n] for n in hidden if n not in PLANTED_NODES]
    assert max(distractors) == pytest.approx(0.0, abs=1e-6)


def test_eap_agrees_with_exact_edge_patching() -> None:
    model = planted().eval()
    x = planted_data(128)
    view = ModelView.discover(model, x[:2])
    targets = torch.zeros(len(x), dtype=torch.long)
    scores = edge_attribution(view, x, targets, target_logit)
    exact = exact_edge_effects(view, list(scores.edges), x, targets, target_logit)
    approx, truth = np.array([scores.edges[e] for e in scores.edges]), np.array([exact[e] for e in scores.edges])
    assert np.abs(approx - truth).max() < 1e-3 * np.abs(truth).max()  # piecewise-linear: exact up to kinks


def test_r301_r302_r304_on_the_planted_circuit(tmp_path: Path) -> None:
    result = run_audit(load_spec(_planted_project(tmp_path)))
    rules = _by_rule(result)
    (discovery,) = rules["R301"]
    circuit = discovery.evidence["circuit"]
    assert {n["id"] for n in circuit["nodes"]} >= PLANTED_NODES
    assert {row["component"] for row in discovery.evidence["top_nodes"][:3]} == PLANTED_NODES
    (faithful,) = rules["R302"]
    assert faithful.status == "pass" and faithful.evidence["faithfulness"] >= 0.95
    assert set(faithful.evidence["circuit"]) == PLANTED_NODES  # the sparse path, found as a connected circuit
    assert faithful.evidence["construction"] == "edges on input-to-output paths"
    assert faithful.evidence["smallest_faithful_units"] <= 3
    assert max(faithful.evidence["random_faithfulness"]) < 0.5
    assert faithful.evidence["completeness"] < 0.05
    spof = {f.location.component: f.value for f in rules["R304"] if f.status == "fail"}
    assert set(spof) == PLANTED_NODES and spof["fc2:u0"] == pytest.approx(1.0)  # distractors are never flagged
    assert rules["R303"][0].status == "skipped"  # no region declared


def test_r302_control_random_circuit_is_unfaithful(tmp_path: Path) -> None:
    """The same network with the circuit chosen at random instead of by score fails R302."""
    from mechaudit.techniques.node_ablation import behaviour_under_ablation, faithfulness

    model = planted().eval()
    x = planted_data()
    view = ModelView.discover(model, x[:2])
    targets = torch.zeros(len(x), dtype=torch.long)
    hidden = [l.address(u) for l in view.hidden_layers for u in range(l.size)]
    means = {l.name: torch.zeros(l.size, 1) for l in view.layers}
    m = lambda ablate: behaviour_under_ablation(view, x, targets, target_logit, ablate, means, 256,  # noqa: E731
                                                torch.device("cpu"))
    random_circuit = {"fc1:u3", "fc1:u4", "fc2:u2"}
    f = faithfulness(m([n for n in hidden if n not in random_circuit]), m([]), m(hidden))
    assert f < 0.2


def test_r303_flags_a_region_on_the_pathway_and_passes_a_distractor_region(tmp_path: Path) -> None:
    on_path = _by_rule(run_audit(load_spec(_planted_project(tmp_path / "a", (0, 1)))))["R303"]
    assert on_path[0].status == "fail" and on_path[0].metric == "protected_pathway_effect"
    assert on_path[0].value > 0.8 and on_path[0].evidence["protected_flow_share"] > 0.9  # measured 0.88 and 1.00
    what_if = on_path[0].evidence["what_if_units"]
    assert what_if["after"]["flip_rate"] < what_if["before"]["flip_rate"]
    direction = on_path[0].evidence["what_if_direction"]
    best = next(row for row in direction["layers"] if row["layer"] == direction["best"])
    assert best["after"]["flip_rate"] <= direction["before"]["flip_rate"]
    off_path = _by_rule(run_audit(load_spec(_planted_project(tmp_path / "b", (4, 5)))))["R303"]
    assert off_path[0].status == "pass" and off_path[0].value < 0.01
    assert off_path[0].evidence["protected_flow_share"] < 0.01


def test_r304_control_with_a_spread_signal_has_no_single_point(tmp_path: Path) -> None:
    from conftest import toy_arrays
    project = write_project(tmp_path, factory_args={"spread": 8}, data_table='labels = "labels"',
                            arrays=toy_arrays(256),
                            extra=BEHAVIOUR + '[audit]\nselect = ["R304"]\n')
    (finding,) = run_audit(load_spec(project.spec)).findings
    assert finding.status == "pass" and finding.value < 0.2


def test_r304_flags_every_unit_over_the_bound_not_only_the_candidates() -> None:
    """Two units each lose more than half the behaviour alone (fc1:u0 twice it, fc1:u1 all of it, as the output
    subtracts u1's copy of the signal): with one pair candidate both still fail, both ablated exactly."""
    from conftest import toy_arrays
    from fixtures.toy_models import signal_mlp

    import mechaudit

    model = signal_mlp(hidden=8)
    with torch.no_grad():
        model.fc1.weight[1].zero_()
        model.fc1.weight[1, 0] = 1.0
        model.fc2.weight[0, 0], model.fc2.weight[0, 1] = 2.0, -1.0
    data = toy_arrays(256)
    result = mechaudit.audit(model, data["inputs"], labels=data["labels"], select=["R304"],
                             behaviour={"kind": "class_logit", "target": "0"}, rules={"R304": {"candidates": 1}})
    failing = {f.location.component: f.value for f in result.findings if f.status == "fail"}
    assert set(failing) == {"fc1:u0", "fc1:u1"} and failing["fc1:u0"] > failing["fc1:u1"] > 0.5


def test_circuit_rules_skip_without_a_declared_behaviour(tmp_path: Path) -> None:
    # R305 is left out: it attacks the model's critical units, which needs no behaviour
    project = write_project(tmp_path, data_table='labels = "labels"',
                            extra='[audit]\nselect = ["R"]\nignore = ["R305"]\n')
    result = run_audit(load_spec(project.spec))
    assert {r.status for r in result.rules} == {"skipped"}
    assert "declares no [behaviour]" in result.rules[0].reason


def test_circuit_is_exported_as_graphml_and_json(cli, tmp_path: Path) -> None:
    import networkx as nx

    spec = _planted_project(tmp_path)
    out = tmp_path / "out"
    assert cli("audit", spec, "--out", out, "--select", "R301", "-q").code == 0
    graph = nx.read_graphml(out / "circuit.graphml")
    assert set(graph.nodes) >= PLANTED_NODES and graph.number_of_edges() > 0
    data = __import__("json").loads((out / "circuit.json").read_text())
    assert {(e["source"], e["target"]) for e in data["edges"]} >= PLANTED_EDGES
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert {"circuit.graphml", "circuit.json"} <= set(manifest["files"])


def test_edit_writes_labelled_weights_and_reports_before_after(cli, tmp_path: Path) -> None:
    from safetensors import safe_open

    spec = _planted_project(tmp_path, (0, 1))
    out = tmp_path / "edited.safetensors"
    result = cli("edit", spec, "--suppress", "fc1:u0", "--out", out)
    assert result.code == 0, result.err
    assert "SIMULATION" in result.out and "accuracy: 1.0000 ->" in result.out
    with safe_open(str(out), "pt") as handle:
        assert "SIMULATION" in handle.metadata()["mechaudit_edit"]
        assert float(handle.get_tensor("fc1.weight")[0].abs().sum()) == 0.0
    edited = planted()
    from safetensors.torch import load_file
    edited.load_state_dict(load_file(str(out)))
    x = planted_data()
    assert_equal_up_to_rounding(edited.fc1(x)[:, 0], torch.full((len(x),), float(x[:, 0].mean())),
                                scale=float(x[:, 0].abs().max()))  # a mean: rounding scales with its terms
    bad = cli("edit", spec, "--suppress", "fc1:u99", "--out", out)
    assert bad.code == 2 and "fc1:u99" in bad.err


def _spread_project(tmp_path: Path) -> Path:
    x = torch.rand(256, 4, generator=torch.Generator().manual_seed(0)).numpy()
    project = write_project(tmp_path, arrays={"inputs": x}, data_table="",
                            model_table='factory = "fixtures.planted_circuit:spread"',
                            extra=BEHAVIOUR + '[audit]\nselect = ["R302"]\n'
                                  '[audit.rules.R302]\ncircuit_fraction = 0.2\nrandom_circuits = 2\n')
    return project.spec


def test_r302_distributed_mechanism_gets_a_connected_circuit_and_its_size(tmp_path: Path) -> None:
    """Importance spread over every unit: the top 4 nodes by score are the 4 units of fc1 and none of fc2 (a
    circuit that recovers nothing); the connected circuit holds units of both layers, each on an input-to-output
    path, recovers part of the behaviour, and the curve says how many units the behaviour needs."""
    from fixtures.planted_circuit import spread

    x = torch.rand(256, 4, generator=torch.Generator().manual_seed(0))
    view = ModelView.discover(spread().eval(), x[:2])
    scores = edge_attribution(view, x, torch.zeros(len(x), dtype=torch.long), target_logit)
    hidden = [l.address(u) for l in view.hidden_layers for u in range(l.size)]
    assert {n.split(":")[0] for n in sorted(hidden, key=lambda n: -scores.nodes[n])[:4]} == {"fc1"}  # the old pick
    (finding,) = run_audit(load_spec(_spread_project(tmp_path))).findings
    evidence = finding.evidence
    circuit = evidence["circuit"]
    assert {n.split(":")[0] for n in circuit} == {"fc1", "fc2"}
    assert evidence["construction"] == "edges on input-to-output paths"
    assert evidence["faithfulness"] > 0.02 and len(evidence["random_faithfulness"]) == 2
    assert finding.status == "fail"                                    # 20% of the units cannot carry it
    assert evidence["smallest_faithful_units"] is not None and evidence["smallest_faithful_units"] > 4
    assert "the smallest circuit reaching it has" in finding.message
    faithfulness = [p["faithfulness"] for p in evidence["curve"]]
    assert faithfulness[-1] == pytest.approx(1.0) and faithfulness[0] == pytest.approx(0.0, abs=1e-6)
    assert all(set(p) >= {"size", "units", "faithfulness", "random"} for p in evidence["curve"])
