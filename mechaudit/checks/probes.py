"""L205: concept and protected-attribute probes, layer by layer.

For every declared concept (``[data.concepts]``) and protected attribute (``[data.protected]``), a linear probe per
audited layer and on the model's output gives the profile of where the attribute is decodable. Concepts are
reported; a protected attribute fails when it is decodable from the output, the layer every decision is read
from: decodable in a hidden layer it may still be discarded downstream (a protected input column passes through
the first layer of any network), decodable from the output it shapes the decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..context import AuditContext
from ..findings import Finding, Location
from ..techniques.probes import as_classes, probe, reduce_features
from .registry import param, register
from .representation_common import OUTPUT, sampled_activations


@dataclass(frozen=True)
class ProbesParams:
    max_decodability: float = param(0.3, low=0.0, high=1.0, doc="fail when a protected attribute's chance-"
                                                                "corrected decodability from the output exceeds")
    folds: int = param(5, low=2, doc="cross-validation folds (fewer when a class is rarer)")
    shuffles: int = param(2, low=1, doc="probes on shuffled labels, for the chance level")
    samples: int = param(2048, low=4, doc="samples probed (seeded subset)")
    max_levels: int = param(10, low=2, doc="an attribute with more distinct values is cut into quartiles")
    position: str = param("mean", choices=("mean", "first", "last"),
                          doc="what a unit contributes per sample: its mean over positions (tokens), or its "
                              "activation at the first (e.g. [CLS]) or last token")


_READ = {"mean": "mean over positions", "first": "at the first position", "last": "at the last position"}


@register("probes", ProbesParams, needs=("attributes",))
def probes(context: AuditContext, rule) -> list[Finding]:
    params: ProbesParams = rule.params
    indices, activations = sampled_activations(context, params.samples, params.position)
    output_layer = next((layer.name for layer in context.view.layers if layer.is_output), None)
    attributes = [(name, values, "concept") for name, values in context.data.concepts.items()]
    attributes += [(name, values, "protected") for name, values in context.data.protected.items()]
    features = {layer: reduce_features(values) for layer, values in activations.items()}
    findings = []
    for name, values, kind in attributes:
        labels = as_classes(values[indices], params.max_levels)
        profile = []
        for layer, matrix in features.items():
            result = probe(matrix, labels, params.folds, params.shuffles, context.seed)
            profile.append({"layer": output_layer or OUTPUT if layer == OUTPUT else layer,
                            "decodability": result.decodability, "balanced_accuracy": result.balanced_accuracy,
                            "shuffled_balanced_accuracy": result.shuffled_balanced_accuracy,
                            "features": int(matrix.shape[1])})
        evidence = {"attribute": name, "kind": kind, "samples": len(indices), "classes": result.classes,
                    "folds": result.folds, "profile": profile,
                    "position": params.position,
                    "probe": f"logistic regression on standardised activations ({_READ[params.position]}), "
                             "balanced accuracy, chance-corrected with shuffled labels"}
        at_output = profile[-1]
        best = max(profile, key=lambda row: row["decodability"])
        location = Location.of_layer(best["layer"]) if best["layer"] != OUTPUT else Location(component=OUTPUT)
        if kind == "concept":
            findings.append(Finding(
                rule.id, rule.severity, "pass",
                f"concept '{name}' is most decodable in {best['layer']} (decodability {best['decodability']:.2f}; "
                f"{at_output['decodability']:.2f} from the output)",
                location=location, metric="concept_decodability", value=best["decodability"], evidence=evidence,
            ))
            continue
        value = at_output["decodability"]
        failed = value > params.max_decodability
        findings.append(Finding(
            rule.id, rule.severity, "fail" if failed else "pass",
            f"protected attribute '{name}' is {'decodable' if failed else 'not decodable'} from the model's output "
            f"(decodability {value:.2f}); most decodable in {best['layer']} ({best['decodability']:.2f})",
            location=Location.of_layer(at_output["layer"]) if at_output["layer"] != OUTPUT
            else Location(component=OUTPUT),
            metric="protected_decodability", value=value, threshold=params.max_decodability, evidence=evidence,
        ))
    return findings
