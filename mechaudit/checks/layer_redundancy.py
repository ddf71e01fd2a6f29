"""D106: layer redundancy by linear CKA between every pair of audited layers."""

from __future__ import annotations

from dataclasses import dataclass

from ..context import AuditContext
from ..findings import Finding, Location
from ..techniques.cka import cka_matrix
from .decomposition_common import pooled_activations
from .registry import param, register


@dataclass(frozen=True)
class LayerRedundancyParams:
    max_cka: float = param(0.95, low=0.0, high=1.0, doc="flag consecutive layers whose linear CKA exceeds this")
    samples: int = param(2048, low=4, doc="samples read (seeded subset)")


@register("layer_redundancy", LayerRedundancyParams, needs=("layers", "layer_pairs"))
def layer_redundancy(context: AuditContext, rule) -> list[Finding]:
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
        findings.append(Finding(
            rule.id, rule.severity, "fail" if redundant else "pass",
            f"{names[i]} and {names[i + 1]} have linear CKA {value:.2f}"
            + ("; the second adds little to the first: a candidate for pruning or a sign of a skipped update"
               if redundant else ""),
            location=Location.of_layer(names[i + 1]), metric="cka_with_previous", value=value,
            threshold=params.max_cka, evidence={**evidence, "previous_layer": names[i]},
        ))
    return findings
