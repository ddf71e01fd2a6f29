"""D104: representation dimensionality per layer (PCA spectrum, effective rank); collapsed layers."""

from __future__ import annotations

from dataclasses import dataclass

from ..context import AuditContext
from ..findings import Finding, Location
from ..techniques.dimensionality import spectrum
from ..techniques.layer_map import layer_map
from .decomposition_common import pooled_activations
from .registry import param, register


@dataclass(frozen=True)
class DimensionalityParams:
    max_collapse: float = param(0.9, low=0.0, high=1.0, doc="flag a layer whose collapse (1 - effective rank / live "
                                                            "units) exceeds this: it uses few of its dimensions")
    samples: int = param(2048, low=4, doc="samples read (seeded subset)")
    max_components: int = param(64, low=1, doc="spectrum values listed in the evidence")
    map_points: int = param(300, low=0, doc="samples drawn in the 2-D map of each layer (PCA and t-SNE); 0: none")


@register("dimensionality", DimensionalityParams, needs=("layers",))
def dimensionality(context: AuditContext, rule) -> list[Finding]:
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
        findings.append(Finding(
            rule.id, rule.severity, "fail" if collapsed else "pass", message, location=Location.of_layer(layer.name),
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
