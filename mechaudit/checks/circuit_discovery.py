"""R301: the circuit of the declared behaviour, by edge attribution patching."""

from __future__ import annotations

from dataclasses import dataclass

from ..context import AuditContext
from ..findings import Finding
from ..techniques.circuits import circuit_graph, graph_to_json
from .circuit_common import circuit_problem, circuit_scores, not_carried, semantic_labels
from .registry import param, register


@dataclass(frozen=True)
class CircuitDiscoveryParams:
    samples: int = param(512, low=1, doc="samples (or pairs) the behaviour is measured on")
    max_edges: int = param(40, low=1, doc="strongest edges kept in the circuit graph")
    top_nodes: int = param(10, low=1, doc="nodes listed in the evidence table")


@register("circuit_discovery", CircuitDiscoveryParams, needs=("layers", "behaviour", "logits"))
def circuit_discovery(context: AuditContext, rule) -> list[Finding]:
    params: CircuitDiscoveryParams = rule.params
    problem = circuit_problem(context, params.samples)
    scores = circuit_scores(context, params.samples)
    if not any(scores.edges.values()) and not any(scores.nodes.values()):
        return [not_carried(rule, problem, 0.0, "circuit_edges", None)]  # e.g. a control without the mechanism
    labels = semantic_labels(context)
    graph = circuit_graph(scores, params.max_edges, labels)
    hidden = {layer.name for layer in context.view.hidden_layers}
    ranked = scores.top_nodes(params.top_nodes, exclude_layers=tuple(set(scores.node_layer.values()) - hidden))
    if not any(scores.edges.values()):  # e.g. every layer pair unconnected: nodes are still scored
        depth = {layer.name: index + 1 for index, layer in enumerate(scores.layers)}
        for node in ranked:
            graph.add_node(node, layer=scores.node_layer[node], depth=depth[scores.node_layer[node]],
                           score=scores.nodes[node], label=labels.get(node, ""))
    table = [{"component": node, "layer": scores.node_layer[node], "score": scores.nodes[node] / scores.samples,
              "label": labels.get(node, "")} for node in ranked]
    return [Finding(
        rule.id, rule.severity, "pass",
        f"circuit of the {problem.description}: {graph.number_of_nodes()} nodes, {graph.number_of_edges()} "
        f"strongest edges of {len(scores.edges)}; top node {ranked[0] if ranked else 'none'}",
        metric="circuit_edges", value=float(graph.number_of_edges()),
        evidence={"behaviour": problem.description, "samples": scores.samples,
                  "reference": "counterfactual pairs" if problem.reference is not None else "mean activations",
                  "circuit": graph_to_json(graph), "top_nodes": table,
                  "unconnected_layers": [list(pair) for pair in scores.unconnected],
                  "edges_scored": any(scores.edges.values())},
    )]
