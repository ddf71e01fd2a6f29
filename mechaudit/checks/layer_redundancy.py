"""D106: layer redundancy by linear CKA between every pair of audited layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, forwards
from ..findings import Location, Measurement
from ..techniques.cka import cka_matrix
from .decomposition_common import pooled_activations
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="Two consecutive layers represent the data almost identically.",
    what="""
Linear CKA between the per-sample activations (mean over positions) of every pair of hidden layers; the matrix is
the evidence. A finding per consecutive pair fails when their CKA exceeds `max_cka`.
""",
    why="""
A layer that repeats the previous one adds depth without adding computation: it can often be pruned, and a
reviewer reading the model should not count it as a separate step. In residual networks it also shows blocks
whose updates are negligible.
""",
    how="""
Linear centered kernel alignment (Kornblith et al. 2019). Measured: a planted layer that rotates its input has
CKA 1.00 with it; one that reads a single unit of sixteen has 0.35. On `digits` the two conv layers
(`features.0`, `features.2`) have CKA 0.985 (0.967 in `digits-control`), above the 0.95 limit: the second conv
layer's channels, averaged over positions, are nearly a linear re-mixing of the first's; `classifier.0` against
`features.2`: 0.12.
""",
    fix="""
Try removing or narrowing the redundant layer and compare accuracy; in a residual network, look for blocks whose
update is near zero.
""",
    references=(
        "Kornblith, Norouzi, Lee, Hinton (2019). Similarity of Neural Network Representations Revisited. ICML.",
    ),
)
RULE = RuleDefinition("D106", "layer-redundancy", "warning", DOCS, opt_in=True)


@dataclass(frozen=True)
class LayerRedundancyParams:
    max_cka: float = param(0.95, low=0.0, high=1.0, doc="flag consecutive layers whose linear CKA exceeds this")
    samples: int = param(2048, low=4, doc="samples read (seeded subset)")


class LayerRedundancyEvidence(TypedDict, total=False):
    """The evidence of D106's findings (each finding holds some of these keys)."""

    cka: list
    layers: list
    pooling: str
    previous_layer: str
    samples: int


def _cost(sizes: Sizes, params: LayerRedundancyParams) -> Cost:
    """Activations of ``samples`` samples (one forward pass) and linear CKA of every pair of layers (Gram
    matrices: samples² x values per layer)."""
    n = sizes.n(params.samples)
    return forwards(sizes, n) + Cost(flops=sum(2.0 * n * n * layer.values for layer in sizes.layers))


COST = RuleCost(_cost, reduce="samples")


@register("layer_redundancy", LayerRedundancyParams, needs=("layers", "layer_pairs"), rule=RULE,
          evidence=LayerRedundancyEvidence, cost=COST)
def layer_redundancy(context: AuditContext, rule) -> list[Measurement]:
    params: LayerRedundancyParams = rule.params
    layers = context.view.hidden_layers
    indices, activations = pooled_activations(context, params.samples)
    names, matrix = cka_matrix({layer.name: activations[layer.name] for layer in layers})
    evidence = {"samples": len(indices), "layers": names, "cka": [[round(v, 4) for v in row] for row in matrix],
                "pooling": "mean over positions"}
    findings = []
    for i in range(len(names) - 1):
        value = matrix[i][i + 1]
        redundant = value > params.max_cka
        findings.append(Measurement(
            f"{names[i]} and {names[i + 1]} have linear CKA {value:.2f}"
            + ("; the second adds little to the first: a candidate for pruning or a sign of a skipped update"
               if redundant else ""),
            location=Location.of_layer(names[i + 1]), metric="cka_with_previous", value=value,
            threshold=params.max_cka, evidence={**evidence, "previous_layer": names[i]},
        ))
    return findings
