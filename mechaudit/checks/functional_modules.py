"""D105: functional modules, units that activate together, and what each module responds to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch

from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, forwards, unit_products
from ..findings import Location, Measurement
from ..techniques.coactivation import best_modularity
from ..techniques.coactivation import functional_modules as find_modules
from ..techniques.uncertainty import Interval, bootstrap_within, resample_budget
from .decomposition_common import CLASSES, pooled_activations, reading_labels
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="A layer's units form no groups that activate together.",
    what="""
For every hidden layer, units are clustered by co-activation (agglomerative clustering with scikit-learn on one
minus the Pearson correlation of their per-sample activations) and each clustering of 2 to `max_modules` modules
is scored by its modularity on the co-activation graph (networkx; an edge where the correlation exceeds
`min_correlation`). The best clustering's modules are listed with the class each responds to most. The finding
is evidence (pass) when the modularity reaches `min_modularity`, and a warning when it does not: the layer has no
functional structure.
""",
    why="""
Modules are the middle level of a decomposition: groups of units that work together are easier to label, to
ablate and to place in a circuit than single units. A layer without any grouping gives a reviewer no handle
between single units and the whole layer.
""",
    how="""
Modularity (Newman 2006) of co-activation graphs, as applied to neural networks by Watanabe et al. (2018) and
Filan et al. (2021). Measured: two planted groups of six co-varying units give modularity 0.5 and are recovered
exactly; twelve independent units give 0 (no edge above the correlation floor). On `digits` the modularity is
0.13, 0.21 and 0.38 (`features.0`, `features.2`, `classifier.0`).

The warning's value, 1 - modularity, carries a 95% bootstrap interval over the audit samples (seeded): each
resample reruns the whole search (correlations, clustering at every size, modularity) on the drawn samples; 200
resamples (percentile interval) while (samples + 200) x live units² stays under 5 x 10^6 (2,048 samples of 47
units), fewer above (normal interval: the value +- 1.96 standard deviations of the resamples), never under 20
(25 for MiniLM's 384-wide layers on 64 samples); a layer where 20 would exceed 2 x 10^11 operations (over
about 2,100 live units on 2,048 samples, 6,000 on 64) has no interval. Measured
(`tests/test_decomposition_intervals.py`, 300 samples): two groups of six units sharing a source under noise 1.2
times its size have modularity 0.49 (1 - modularity 0.51, interval 0.50 to 0.57: certain); under noise 1.6,
modularity 0.28 but an interval of 0.45 to 1.0 (uncertain: in some resamples no correlation clears
`min_correlation` and no module is found). The correlation floor makes modularity jump between resamples, so a
wide interval is common near it.
""",
    fix="""
Informative rather than a defect: without modules, read the layer through dictionary features (D103) or single
units.
""",
    references=(
        "Newman (2006). Modularity and community structure in networks. PNAS 103(23).",
        "Filan, Casper, Hod, Wild, Critch, Russell (2021). Clusterability in Neural Networks. arXiv:2103.03386",
        "Watanabe, Hiramatsu, Kashino (2018). Modular representation of layered neural networks. Neural Networks 97.",
    ),
)
RULE = RuleDefinition("D105", "functional-modules", "warning", DOCS, opt_in=True)


@dataclass(frozen=True)
class FunctionalModulesParams:
    min_modularity: float = param(0.1, low=-0.5, high=1.0, doc="warn when a layer's best modularity is below this: "
                                                               "its units form no groups")
    min_correlation: float = param(0.3, low=0.0, high=1.0, doc="co-activation graph edge: correlation above this")
    max_modules: int = param(8, low=2, doc="largest number of modules tried")
    min_units: int = param(4, low=2, doc="layers with fewer live units are not judged")
    samples: int = param(2048, low=4, doc="samples read (seeded subset)")


class FunctionalModulesEvidence(TypedDict, total=False):
    """The evidence of D105's findings (each finding holds some of these keys)."""

    edges: int
    live_units: int
    method: str
    min_correlation: float
    modularity: float
    modules: list
    samples: int


def _cost(sizes: Sizes, params: FunctionalModulesParams) -> Cost:
    """Activations of ``samples`` samples (one forward pass) and each layer's unit correlations, once and per
    bootstrap resample."""
    n = sizes.n(params.samples)
    resampled = sum(resample_cost(n, layer.units) * resamples_for(n, layer.units) for layer in sizes.hidden)
    return forwards(sizes, n) + Cost(flops=unit_products(sizes, n) + resampled)


COST = RuleCost(_cost, reduce="samples")


@register("functional_modules", FunctionalModulesParams, needs=("layers",), rule=RULE,
          evidence=FunctionalModulesEvidence, cost=COST)
def functional_modules(context: AuditContext, rule) -> list[Measurement]:
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
        findings.append(Measurement(
            message,
            location=Location.of_layer(layer.name), metric="unstructured", value=1.0 - found.modularity,
            threshold=1.0 - params.min_modularity, judged=judged,
            interval=_interval(values, params, 1.0 - found.modularity, context.seed) if judged else None,
            evidence={"samples": len(indices), "modularity": found.modularity, "live_units": len(found.live_units),
                      "edges": found.graph.number_of_edges(), "min_correlation": params.min_correlation,
                      "modules": modules,
                      "method": "agglomerative clustering on 1 - correlation, scored by modularity of the "
                                "co-activation graph"},
        ))
    return findings


#: One layer's bootstrap gets 200 resamples within ``RESAMPLE_OPERATIONS`` (:func:`resample_cost` each), fewer for
#: wider layers, never under 20; a layer where 20 would exceed 2 x 10^11 operations gets no interval.
RESAMPLE_OPERATIONS = 1e9


def resample_cost(samples: int, units: int) -> float:
    """Operations of one resample: about ``(samples + 200) x units²`` (the correlations, then the clustering tree,
    its cuts and their modularity, each about 50 passes over the units x units matrix at most)."""
    return float(samples + 200) * units * units


def resamples_for(samples: int, units: int) -> int:
    """Bootstrap resamples of a layer of ``units`` live units over ``samples`` samples (0: none)."""
    return resample_budget(resample_cost(samples, units), RESAMPLE_OPERATIONS)


def _interval(values: torch.Tensor, params: FunctionalModulesParams, estimate: float, seed: int) -> Interval | None:
    """Bootstrap interval of ``1 - modularity`` (``estimate``) over the samples: each resample reruns the whole
    search (the correlations, the clustering at every size, the modularity of each) on the drawn samples."""
    values = values.double()
    resamples = resamples_for(len(values), int((values.std(0) > 1e-9).sum()))
    if not resamples:
        return None

    def statistic(index: np.ndarray) -> float:
        return 1.0 - best_modularity(values[torch.from_numpy(index)], params.min_correlation, params.max_modules)

    return bootstrap_within(statistic, len(values), estimate, seed=seed, resamples=resamples)


def _responds_to(values: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict:
    """The class on which a module's mean activation is highest, and by how many standard deviations."""
    mean = values.double().mean(1)
    per_class = torch.stack([mean[labels == c].mean() if (labels == c).any() else torch.tensor(float("-inf"),
                             dtype=torch.float64) for c in range(len(names))])
    best = int(per_class.argmax())
    z = float((per_class[best] - mean.mean()) / mean.std().clamp_min(1e-12))
    return {"responds_to": names[best], "z_score": round(z, 3)}
