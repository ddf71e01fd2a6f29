"""A planted MLP path (R301 nodes and edges, R302) and its control, a distributed mechanism with no compact path.

Planted: ``tests/fixtures/planted_circuit.Planted``, where logit 0 = relu(relu(x0) + relu(x1)) and six distractor
units compute from the other inputs but write nothing into logit 0. The truth is read from the weights: a unit is
on the path when a chain of non-zero weights joins it to logit 0 and an input; an edge is on it when both ends are
and its weight is non-zero. Control: ``Spread``, where each of the 20 units carries an equal share of logit 0, so
no circuit of a fifth of the units can reproduce it (R302 must fail) while the planted path is faithful at 3 units.
"""

from __future__ import annotations

import torch
from fixtures.planted_circuit import planted, planted_data, spread

from mechaudit.api import audit

from .table import Row, Verdict, auroc, findings, rule_status

BEHAVIOUR = {"kind": "class_logit", "target": "0"}
TARGET = 0


def true_circuit(model: torch.nn.Module) -> tuple[set[str], set[tuple[str, str]]]:
    """Nodes and edges joined to logit ``TARGET`` by non-zero weights (fc1 -> fc2 -> out, each after a ReLU)."""
    fc1, fc2, out = model.fc1.weight.detach(), model.fc2.weight.detach(), model.out.weight.detach()
    live2 = {v for v in range(fc2.shape[0]) if out[TARGET, v] != 0}
    live1 = {u for u in range(fc1.shape[0]) if fc1[u].abs().sum() > 0 and any(fc2[v, u] != 0 for v in live2)}
    nodes = {f"fc1:u{u}" for u in live1} | {f"fc2:u{v}" for v in live2}
    edges = {("input", f"fc1:u{u}") for u in live1} | {(f"fc2:u{v}", f"out:u{TARGET}") for v in live2}
    edges |= {(f"fc1:u{u}", f"fc2:u{v}") for u in live1 for v in live2 if fc2[v, u] != 0}
    return nodes, edges


def all_edges(model: torch.nn.Module) -> list[tuple[str, str]]:
    """Every edge the circuit rules score: input -> fc1, fc1 -> fc2, fc2 -> out."""
    sizes = {"fc1": model.fc1.out_features, "fc2": model.fc2.out_features, "out": model.out.out_features}
    edges = [("input", f"fc1:u{u}") for u in range(sizes["fc1"])]
    edges += [(f"fc1:u{u}", f"fc2:u{v}") for u in range(sizes["fc1"]) for v in range(sizes["fc2"])]
    return edges + [(f"fc2:u{v}", f"out:u{o}") for v in range(sizes["fc2"]) for o in range(sizes["out"])]


def _audit(model: torch.nn.Module, inputs: torch.Tensor, seed: int):
    labels = model(inputs).argmax(1)
    return audit(model, inputs, labels=labels, behaviour=BEHAVIOUR, select=["R301", "R302"], seed=seed,
                 rules={"R301": {"max_edges": 1000, "top_nodes": 1000}})


def rows(quick: bool = False, seed: int = 0) -> list[Row]:
    model = planted().eval()
    planted_result = _audit(model, planted_data(), seed)
    control_result = _audit(spread().eval(), torch.rand(256, 4, generator=torch.Generator().manual_seed(0)), seed)
    nodes, edges = true_circuit(model)
    (discovery,) = findings(planted_result, "R301")
    node_scores = {row["component"]: row["score"] for row in discovery.evidence["top_nodes"]}
    hidden = [f"fc1:u{u}" for u in range(6)] + [f"fc2:u{v}" for v in range(4)]
    edge_scores = {(e["source"], e["target"]): e["score"] for e in discovery.evidence["circuit"]["edges"]}
    scored = all_edges(model)
    (faithful,) = findings(planted_result, "R302")
    kept = set(faithful.evidence.get("circuit") or [])
    r301 = Verdict(rule_status(planted_result, "R301"), None)
    return [
        Row("MLP path", "planted_circuit", "R301", "node AUROC", auroc([n in nodes for n in hidden],
            [abs(node_scores.get(n, 0.0)) for n in hidden]), Verdict(rule_status(control_result, "R301"), None), r301),
        Row("MLP path", "planted_circuit", "R301", "edge AUROC", auroc([e in edges for e in scored],
            [abs(edge_scores.get(e, 0.0)) for e in scored]), None, r301),
        Row("MLP path", "planted_circuit", "R302", "circuit = true path (Jaccard)",
            len(kept & nodes) / len(kept | nodes) if kept | nodes else None,
            Verdict(rule_status(control_result, "R302"), "fail"), Verdict(rule_status(planted_result, "R302"), "pass")),
    ]
