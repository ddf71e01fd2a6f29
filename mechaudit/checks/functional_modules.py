"""D105: functional modules, units that activate together, and what each module responds to."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import AuditContext
from ..findings import Finding, Location
from ..techniques.coactivation import functional_modules as find_modules
from .decomposition_common import CLASSES, pooled_activations, reading_labels
from .registry import param, register


@dataclass(frozen=True)
class FunctionalModulesParams:
    min_modularity: float = param(0.1, low=-0.5, high=1.0, doc="warn when a layer's best modularity is below this: "
                                                               "its units form no groups")
    min_correlation: float = param(0.3, low=0.0, high=1.0, doc="co-activation graph edge: correlation above this")
    max_modules: int = param(8, low=2, doc="largest number of modules tried")
    min_units: int = param(4, low=2, doc="layers with fewer live units are not judged")
    samples: int = param(2048, low=4, doc="samples read (seeded subset)")


@register("functional_modules", FunctionalModulesParams, needs=("layers",))
def functional_modules(context: AuditContext, rule) -> list[Finding]:
    params: FunctionalModulesParams = rule.params
    indices, activations = pooled_activations(context, params.samples)
    labelled = context.data.labels is not None
    labels, names = reading_labels(context, CLASSES) if labelled else (None, [])
    findings = []
    for layer in context.view.hidden_layers:
        values = activations[layer.name]
        found = find_modules(values, params.min_correlation, params.max_modules)
        judged = len(found.live_units) >= params.min_units
        unstructured = judged and found.modularity < params.min_modularity
        modules = [{"units": [layer.address(u) for u in module], "size": len(module),
                    **(_responds_to(values[:, module], labels[indices], names) if labelled else {})}
                   for module in found.modules]
        message = (f"{layer.name}: {len(found.modules)} module(s) of co-activating units, modularity "
                   f"{found.modularity:.2f}" + ("; the units form no groups" if unstructured else ""))
        if not judged:
            message = f"{layer.name}: {len(found.live_units)} live unit(s), too few to group"
        findings.append(Finding(
            rule.id, rule.severity, "fail" if unstructured else "pass", message,
            location=Location.of_layer(layer.name), metric="unstructured", value=1.0 - found.modularity,
            threshold=1.0 - params.min_modularity,
            evidence={"samples": len(indices), "modularity": found.modularity, "live_units": len(found.live_units),
                      "edges": found.graph.number_of_edges(), "min_correlation": params.min_correlation,
                      "modules": modules,
                      "method": "agglomerative clustering on 1 - correlation, scored by modularity of the "
                                "co-activation graph"},
        ))
    return findings


def _responds_to(values: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict:
    """The class on which a module's mean activation is highest, and by how many standard deviations."""
    mean = values.double().mean(1)
    per_class = torch.stack([mean[labels == c].mean() if (labels == c).any() else torch.tensor(float("-inf"),
                             dtype=torch.float64) for c in range(len(names))])
    best = int(per_class.argmax())
    z = float((per_class[best] - mean.mean()) / mean.std().clamp_min(1e-12))
    return {"responds_to": names[best], "z_score": round(z, 3)}
