"""R301: the circuit of the declared behaviour, by edge attribution patching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, edge_scores, forwards
from ..findings import Measurement
from ..techniques.circuits import circuit_graph, graph_to_json
from .circuit_common import MLP_NEURON_SITE, circuit_problem, circuit_scores, not_carried, semantic_labels
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="The circuit that carries the declared behaviour: scored nodes and edges, as a graph.",
    what="""
For the behaviour declared in the spec's `[behaviour]` (a class logit, a logit difference on counterfactual
pairs, the predicted logit, or the loss), every unit of every audited layer (a node) and every connection
from a unit to a unit of the next layer that reads it (an edge) is scored by how much the behaviour changes
when it is patched to its reference value: the corrupted input of a counterfactual pair, or the mean over
the audit data when no pairs are declared. The strongest `max_edges` edges form the circuit graph (a
networkx DiGraph, written as `circuit.graphml` and `circuit.json` into the output directory), labelled with
semantic labels from network dissection when a rule produced them. This rule describes; R302-R304 judge.
""",
    why="""
A list of important units is not an explanation; a circuit says how they work together, which is what a
reviewer needs to check that a behaviour is computed for the right reasons and what a fix must target.
""",
    how="""
Edge attribution patching (Syed, Rager and Conmy 2023): one clean forward pass with a backward pass and one
reference forward pass score every node (`(z_ref - z) . dm/dz`) and every edge (`(W_vu (x_u,ref - x_u)) .
dm/dz_v`, where `x_u` is the part of unit `v`'s input that unit `u` produced). Scores are summed absolute
per-sample effects, so that effects of opposite sign on different samples do not cancel. Measured against
exact activation patching of every edge (`benchmarks/circuit_speed.py`): rank correlation 0.995 on
`digits` (976 edges) at 188 times the speed; on the planted test network the planted edges score highest
and the distractors exactly 0. Edges join consecutive audited layers. When only elementwise functions,
pooling and flattening sit between them (MLPs, CNNs), `W_vu` is read off the weights; otherwise (attention
heads, LayerNorm, residual streams: BERT, GPT-2) the edge is `(J (z_u,ref - z_u)) . dm/dz_v` with `J` the
Jacobian of `v`'s activation with respect to `u`'s on the clean run (LayerNorm and attention linearised at
the clean point), one autograd pass per unit on the smaller side; it matches finite differences to 1e-5 on
a pre-LayerNorm transformer (`tests/test_gradient_edges.py`). An autograd pair with more than 128 units on
both sides is screened: the edges into its 128 units with the highest node scores are scored, from every unit
of the earlier layer (edges into the other units stay unscored, 0); a pair whose later layer does not read the
earlier one is listed as unconnected. The evidence's `edge_choice` says, per layer pair, how many edges were
scored and how they were chosen. Edge scores are tensors (one matrix product per Linear pair with one feature
per unit; a batched per-sample weight gradient per Conv2d pair), computed once per audit and shared by
R301-R304 (and R303 when no pairs are declared), in chunks of bounded memory: on an MLP of three hidden
layers, 256 samples, 0.31 s at width 1,024 (2.1 million edges; the dict-based scoring it replaced: 67 s) and
1.4 s at 2,048, where the old one needed 4 GiB tensors (`benchmarks/circuit_speed.py`).
Time budget: the samples are scored batch by batch, then the screened wide pairs one by one, in chunks that stop
before the rule's time-out would be reached (`mechaudit/deadline.py`), so that a loaded machine gives a reduced
result instead of an `error`: the scores of the first batches' samples (`samples` says how many), a wide pair cut
partway with the edges into its best-scored units only (its units run in chunks, highest node score first; its
`edge_choice` method says "k of the planned m units ... (cut by the time budget)"), and wide pairs left unscored
listed in `edge_choice` ("not scored: the rule's time budget ran out"). Every finding of R301, and of
R302-R304 that read the same scores, says what was cut (`time_budget_cut`). When R302-R304 compute the shared
scores themselves (R301 not selected, or at another sample count), the scoring runs within
`circuit_common.SCORING_SHARE` (0.5) of their budget (about 43% of it after the scoring's reserve), so that their
exact checks keep the rest. Raise `--rule-timeout` (0: none) to score everything.

Which tensor an address such as `fc1:u7` means: a node's score patches what the next audited layer reads from
the unit (its activation after the nonlinearity, pooling and flattening that follow it: the tensor its outgoing
edges patch, so that a unit whose whole effect runs through one edge scores that edge's score), referenced to
the mean of that tensor (or its value on the corrupted input); the last audited layer, attention heads,
residual streams and a unit that also reaches the output past the next layer (a skip connection) are scored on
the layer's own output (what the output projection or the next block reads). R302 and R304 ablate the same tensor.
""" + MLP_NEURON_SITE + """\
Edges from such a neuron into a next audited layer that is not its reader (the next block's attention) are
scored by autograd on the neuron's own output, the Linear output before the GELU (the change there carried through
the GELU, the down projection and the residual stream to that layer's units, to first order).

No interval: this rule judges nothing, and its value, the number of edges in the graph, is a structural fact (the
`max_edges` strongest of the edges with a score, or 0 when no audited unit changes the behaviour at all), not an
estimate with a sampling distribution (the scores are sums over the samples, but the graph keeps the strongest
edges without a threshold: no verdict to straddle). The verdicts built on the circuit carry their intervals in R302 (the
circuit's faithfulness) and R304 (each node's behaviour lost); the recovered fraction of a single component, in
L207.
""",
    fix="""
Nothing to fix by itself: read the circuit. If it routes through components that should not matter (a
watermark detector, a protected attribute), see R303 and the localization rules.
""",
    references=(
        "Syed, Rager, Conmy (2023). Attribution Patching Outperforms Automated Circuit Discovery. arXiv:2310.10348",
        "Conmy et al. (2023). Towards Automated Circuit Discovery for Mechanistic Interpretability. NeurIPS.",
        "Nanda (2023). Attribution Patching: Activation Patching At Industrial Scale.",
    ),
)
RULE = RuleDefinition("R301", "circuit-discovery", "info", DOCS)


@dataclass(frozen=True)
class CircuitDiscoveryParams:
    samples: int = param(512, low=1, doc="samples (or pairs) the behaviour is measured on")
    max_edges: int = param(40, low=1, doc="strongest edges kept in the circuit graph")
    top_nodes: int = param(10, low=1, doc="nodes listed in the evidence table")


class CircuitDiscoveryEvidence(TypedDict, total=False):
    """The evidence of R301's findings (each finding holds some of these keys)."""

    behaviour: str
    behaviour_change_when_all_ablated: float
    carried: bool
    circuit: dict
    edge_choice: list
    edges_scored: bool
    reference: str
    samples: int
    top_nodes: list
    unconnected_layers: list


def _cost(sizes: Sizes, params: CircuitDiscoveryParams) -> Cost:
    """The shared edge scores of ``samples`` samples (and the problem's outputs)."""
    n = sizes.n(params.samples)
    return forwards(sizes, n) + edge_scores(sizes, n)


COST = RuleCost(_cost, reduce="samples")


@register("circuit_discovery", CircuitDiscoveryParams, needs=("layers", "behaviour", "logits"), rule=RULE,
          evidence=CircuitDiscoveryEvidence, cost=COST)
def circuit_discovery(context: AuditContext, rule) -> list[Measurement]:
    params: CircuitDiscoveryParams = rule.params
    problem = circuit_problem(context, params.samples)
    scores = circuit_scores(context, params.samples, share=1.0)  # the scores are this rule's result: all its time
    if not scores.edges.any_scored() and not any(scores.nodes.values()):
        return [not_carried(rule, problem, 0.0, "circuit_edges", None)]  # e.g. a control without the mechanism
    labels = semantic_labels(context)
    graph = circuit_graph(scores, params.max_edges, labels)
    hidden = {layer.name for layer in context.view.hidden_layers}
    ranked = scores.top_nodes(params.top_nodes, exclude_layers=tuple(set(scores.node_layer.values()) - hidden))
    if not scores.edges.any_scored():  # e.g. every layer pair unconnected: nodes are still scored
        depth = {layer.name: index + 1 for index, layer in enumerate(scores.layers)}
        for node in ranked:
            graph.add_node(node, layer=scores.node_layer[node], depth=depth[scores.node_layer[node]],
                           score=scores.nodes[node], label=labels.get(node, ""))
    table = [{"component": node, "layer": scores.node_layer[node], "score": scores.nodes[node] / scores.samples,
              "label": labels.get(node, "")} for node in ranked]
    return [Measurement(
        f"circuit of the {problem.description}: {graph.number_of_nodes()} nodes, {graph.number_of_edges()} "
        f"strongest edges of {len(scores.edges)}; top node {ranked[0] if ranked else 'none'}",
        metric="circuit_edges", value=float(graph.number_of_edges()),
        evidence={"behaviour": problem.description, "samples": scores.samples,
                  "reference": "counterfactual pairs" if problem.reference is not None else "mean activations",
                  "circuit": graph_to_json(graph), "top_nodes": table,
                  "unconnected_layers": [list(pair) for pair in scores.unconnected],
                  "edges_scored": scores.edges.any_scored(), "edge_choice": scores.edge_choice()},
    )]
