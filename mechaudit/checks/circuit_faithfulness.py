"""R302: does the circuit alone reproduce the behaviour? Faithfulness, completeness, minimality."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import AuditContext
from ..findings import Finding
from ..techniques.node_ablation import behaviour_under_ablation, curve_area, distance, faithfulness
from .circuit_common import carries_behaviour, circuit_problem, circuit_scores, hidden_nodes, mean_values, not_carried
from .registry import param, register

SIZES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class CircuitFaithfulnessParams:
    samples: int = param(512, low=1, doc="samples (or pairs) the behaviour is measured on")
    circuit_fraction: float = param(0.3, low=0.0, high=1.0, doc="circuit size: share of hidden units kept")
    min_faithfulness: float = param(0.8, low=0.0, high=1.0, doc="fail below this faithfulness at that size")
    ablation: str = param("mean", choices=("mean", "zero"), doc="what replaces the units outside the circuit")
    random_circuits: int = param(3, low=0, doc="random circuits of the same size, for comparison")
    minimality_nodes: int = param(12, low=0, doc="circuit nodes whose minimality contribution is measured")


@register("circuit_faithfulness", CircuitFaithfulnessParams, needs=("layers", "behaviour", "logits"))
def circuit_faithfulness(context: AuditContext, rule) -> list[Finding]:
    params: CircuitFaithfulnessParams = rule.params
    problem = circuit_problem(context, params.samples)
    scores = circuit_scores(context, params.samples)
    nodes = hidden_nodes(context)
    values = mean_values(context)
    if params.ablation == "zero":
        values = {name: torch.zeros_like(v) for name, v in values.items()}
    ranked = sorted(nodes, key=lambda n: -abs(scores.nodes.get(n, 0.0)))

    def m(ablate: list[str]) -> torch.Tensor:
        return behaviour_under_ablation(context.view, problem.inputs, problem.targets, problem.behaviour, ablate,
                                        values, context.batch_size, context.device)

    def f(keep: set[str]) -> float:
        return faithfulness(m([n for n in nodes if n not in keep]), m_model, m_empty)

    m_model, m_empty = m([]), m(nodes)
    span = distance(m_empty, m_model)
    if not carries_behaviour(span, m_model):
        return [not_carried(rule, problem, span, "unfaithfulness", 1.0 - params.min_faithfulness)]
    size = max(1, round(params.circuit_fraction * len(nodes)))
    circuit = set(ranked[:size])
    f_circuit = f(circuit)
    completeness = faithfulness(m(sorted(circuit)), m_model, m_empty)  # f(M \ C): the model without the circuit
    curve = [(fraction, f(set(ranked[:round(fraction * len(nodes))]))) for fraction in SIZES]
    generator = torch.Generator().manual_seed(context.seed)
    random_f = [f({nodes[i] for i in torch.randperm(len(nodes), generator=generator)[:size].tolist()})
                for _ in range(params.random_circuits)]
    minimality = [{"component": node, "contribution": f_circuit - f(circuit - {node})}
                  for node in ranked[:min(size, params.minimality_nodes)]]
    if f_circuit != f_circuit:  # nan: the behaviour does not change when everything is ablated
        raise ValueError("the behaviour is the same with every unit ablated: nothing for a circuit to explain")
    gap = 1.0 - f_circuit
    failed = gap > 1.0 - params.min_faithfulness
    return [Finding(
        rule.id, rule.severity, "fail" if failed else "pass",
        f"the top {size} of {len(nodes)} units ({params.circuit_fraction:.0%}) reproduce {f_circuit:.0%} of the "
        f"{problem.description} (random circuits of that size: "
        f"{sum(random_f) / len(random_f) if random_f else float('nan'):.0%}); at least "
        f"{params.min_faithfulness:.0%} required",
        metric="unfaithfulness", value=gap, threshold=1.0 - params.min_faithfulness,
        evidence={"faithfulness": f_circuit, "completeness": completeness, "circuit_size": size,
                  "candidate_units": len(nodes), "m_model": float(m_model.mean()), "m_empty": float(m_empty.mean()),
                  "random_faithfulness": random_f, "circuit": sorted(circuit, key=ranked.index),
                  "curve": [{"size": s, "faithfulness": v} for s, v in curve],
                  "curve_area": curve_area(list(SIZES), [v for _, v in curve]),
                  "minimality": minimality, "ablation": params.ablation},
    )]
