"""D104: representation dimensionality per layer (PCA spectrum, effective rank); collapsed layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, forwards, unit_products
from ..findings import Location, Measurement
from ..techniques.dimensionality import spectrum
from ..techniques.layer_map import layer_map
from .decomposition_common import pooled_activations
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="A layer's representation has collapsed onto a few directions.",
    what="""
For every hidden layer, the PCA spectrum of its per-sample activations (the mean over positions), the number of
components holding 90% and 99% of the variance, and the effective rank. The finding fails when the collapse,
one minus the effective rank over the number of live (varying) units, exceeds `max_collapse`.
""",
    why="""
A collapsed layer carries far fewer independent directions than it has units: capacity is wasted, and
decompositions of it (units, dictionary features) describe a handful of directions many times over. Collapse
also follows from over-regularisation or a bottleneck that was not intended.
""",
    how="""
Effective rank as in Roy and Vetterli (2007): the exponential of the entropy of the normalised PCA spectrum.
Measured: a planted rank-one layer has collapse 0.94 (one component holds 99% of the variance), a random
full-rank layer on Gaussian inputs 0.39. On `digits` the collapse is 0.82 (`features.0`), 0.89
(`features.2`) and 0.76 (`classifier.0`), below the limit of 0.9, which flags only layers that use about one
direction in ten.
""",
    fix="""
Check for an unintended bottleneck or an over-strong weight decay; a layer that really needs few dimensions can
be narrowed.
""",
    references=(
        "Roy, Vetterli (2007). The effective rank: A measure of effective dimensionality. EUSIPCO.",
        "Jing, Vincent, LeCun, Tian (2022). Understanding Dimensional Collapse in Contrastive "
        "Self-supervised Learning. ICLR.",
    ),
)
RULE = RuleDefinition("D104", "representation-dimensionality", "warning", DOCS, opt_in=True)


@dataclass(frozen=True)
class DimensionalityParams:
    max_collapse: float = param(0.9, low=0.0, high=1.0, doc="flag a layer whose collapse (1 - effective rank / live "
                                                            "units) exceeds this: it uses few of its dimensions")
    samples: int = param(2048, low=4, doc="samples read (seeded subset)")
    max_components: int = param(64, low=1, doc="spectrum values listed in the evidence")
    map_points: int = param(300, low=0, doc="samples drawn in the 2-D map of each layer (PCA and t-SNE); 0: none")


class DimensionalityEvidence(TypedDict, total=False):
    """The evidence of D104's findings (each finding holds some of these keys)."""

    components_90: int
    components_99: int
    effective_rank: float
    effective_rank_share: float
    explained_variance: list
    layer_map: dict
    live_units: int
    pooling: str
    samples: int
    units: int


def _cost(sizes: Sizes, params: DimensionalityParams) -> Cost:
    """Activations of ``samples`` samples (one forward pass) and each layer's covariance spectrum."""
    n = sizes.n(params.samples)
    return forwards(sizes, n) + Cost(flops=unit_products(sizes, n))


COST = RuleCost(_cost, reduce="samples")


@register("dimensionality", DimensionalityParams, needs=("layers",), rule=RULE,
          evidence=DimensionalityEvidence, cost=COST)
def dimensionality(context: AuditContext, rule) -> list[Measurement]:
    params: DimensionalityParams = rule.params
    indices, activations = pooled_activations(context, params.samples)
    findings = []
    for layer in context.view.hidden_layers:
        result = spectrum(activations[layer.name])
        rank, live = result.effective_rank, result.live_units
        share = rank / live if live else 0.0
        collapse = 1.0 - share
        collapsed = collapse > params.max_collapse
        c90, c99 = result.components_for(0.9), result.components_for(0.99)
        message = (f"{layer.name}: effective rank {rank:.1f} of {live} live units ({share:.0%}); {c90} principal "
                   f"components hold 90% of the variance, {c99} hold 99%"
                   + ("; the layer has collapsed onto a few directions" if collapsed else ""))
        findings.append(Measurement(
            message, location=Location.of_layer(layer.name),
            metric="collapse", value=collapse, threshold=params.max_collapse,
            evidence={"samples": len(indices), "units": layer.size, "live_units": live, "effective_rank": rank,
                      "effective_rank_share": share,
                      "components_90": c90, "components_99": c99,
                      "explained_variance": [round(float(v), 5) for v in result.explained[:params.max_components]],
                      "pooling": "mean over positions",
                      **({"layer_map": {"layer": layer.name, **_map(context, indices, activations[layer.name],
                                                                      params.map_points)}}
                         if params.map_points else {})},
        ))
    return findings


def _map(context: AuditContext, indices, values, points: int) -> dict:
    labels = context.data.labels[indices] if context.data.labels is not None else None
    return layer_map(values, labels, list(context.class_names) or None, max_points=points, seed=context.seed)
