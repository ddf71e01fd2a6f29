"""L205: concept and protected-attribute probes, layer by layer.

For every declared concept (``[data.concepts]``) and protected attribute (``[data.protected]``), a linear probe per
audited layer and on the model's output gives the profile of where the attribute is decodable. Concepts are
reported; a protected attribute fails when it is decodable from the output, the layer every decision is read
from: decodable in a hidden layer it may still be discarded downstream (a protected input column passes through
the first layer of any network), decodable from the output it shapes the decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, forwards
from ..findings import Location, Measurement
from ..techniques.probes import as_classes, paired_difference, probe, reduce_features
from .registry import RuleDefinition, RuleDocs, param, register
from .representation_common import OUTPUT, sampled_activations

DOCS = RuleDocs(
    summary="A protected attribute can be read from the model's output (and where concepts live, layer by layer).",
    what="""
For every declared concept (`[data.concepts]`) and protected attribute (`[data.protected]`), a linear probe per
audited layer and on the model's output: a scikit-learn logistic regression on the standardised per-sample
activations (each unit averaged over its positions; wide layers reduced to 256 principal components), its classes
weighted by their inverse frequency, cross-fitted: every sample is predicted by a probe trained on the other
`folds` - 1 stratified folds, on `seeds` seeded fold splits, and the score is the balanced accuracy of those
held-out predictions (mean over the splits); chance-corrected with the same probe trained on shuffled labels
(`shuffles` seeded permutations, each on a fold split of its own): decodability = (score - shuffled) / (1 -
shuffled), 0 at the shuffled-label chance level, 1 perfect; the evidence holds both scores and the spread of the
shuffled ones. A classifier's output is read as the decision reads it: its logits centred per sample (softmax
ignores a shift common to every class). An attribute with more than `max_levels` values is cut into quartiles. The
evidence holds the profile across layers. Concepts are reported, each at the first layer not told apart from the
one where it is most decodable (where the concept becomes decodable): the first layer whose paired bootstrap
interval of the difference (largest decodability minus its own, both rescored on the same resampled samples)
holds 0; the value is that layer's decodability, the largest and the intervals tested are in the evidence
(`location_rule`). A protected attribute fails when its decodability from the output, the layer that feeds every
decision, exceeds `max_decodability`. The value carries a percentile-bootstrap interval over the samples,
nominally 95%: each resample rescores the held-out predictions already made (no refit), those of the shuffles
too, which are themselves drawn with replacement; measured, it holds the mean over independent audit sets in 80%
to 87% of them (below), which its method string says.
""",
    why="""
A protected attribute (sex, age, ethnicity) that the decision can be decoded from shapes the decision, directly or
through proxies, whatever the inputs say. Decodable in a hidden layer only, it may still be discarded downstream:
a protected input column passes through the first layer of any network, used or not. The profile also says
where a concept is represented, which is where to look for it (L206) or to intervene.
""",
    how="""
Linear probes (Alain and Bengio 2016; Belinkov 2022) with a chance level from shuffled labels in the spirit of
control tasks (Hewitt and Liang 2019); decodability of protected attributes from representations as in Elazar and
Goldberg (2018). The interval resamples samples, the independent unit; the former one resampled the 15 fold
scores of 3 seeded 5-fold splits, which share their training samples, and was about a third as wide as the spread
of the decodability over independent audit sets (`python benchmarks/bias_calibration.py --intervals`: per model 15
independent audit sets of 600 rows; the decodability's standard deviation 0.036 to 0.063, the former interval's
width 0.04 to 0.08, 95% of it would need 0.14 to 0.25). The new one is 0.11 to 0.18 wide and holds the mean over
the sets in 80% to 87% of them: still narrower than a 95% interval, since the probe is not refitted per resample
(a refit per resample costs `seeds + shuffles` cross-validations each, minutes on a real model's output); a
Nadeau-Bengio corrected t interval over the fold scores measured about as wide (0.10 to 0.19; coverage 73% to 87%).
It is labelled nominal rather than widened by the measured ratio (about 1.3): the ratio was measured on one toy
and a probe's refit noise differs with the layer and the sample size, so a scale taken from it would claim a
coverage nobody measured on the audited model. The compliance rulebook gates L205 on the point estimate (its note:
this interval reaches above 0.12 on 53% of control audits).
Location of a concept: on `digits` `loop` reads 0.54 in `classifier.0` and 0.50 to 0.53 in `classifier.2`, and
which of the two was higher changed with the seed. The noise of the difference between two layers on the same
samples is the paired bootstrap's: `classifier.2` minus `classifier.0` 0.001 (interval -0.078 to 0.058, seed 2),
a standard deviation of about 0.035, near the 0.036 to 0.063 over independent audit sets of the tabular toy; the
earlier layers are told apart (`features.2` 0.14 to 0.17 below, intervals from 0.024 up; `features.0` 0.27 to
0.37 below). `loop` is located at `classifier.0` for seeds 0 to 2 in `digits` and in `digits-control`
(`tests/test_localization_probes.py`).
Classes are weighted because the score is balanced: unweighted, the probe of a group that is 20% of the rows
predicted the majority and scored chance (leak 0.5: 0.000, leak 1: 0.018; weighted 0.131 and 0.249).
Threshold, from the same planted toy as R303 (`benchmarks/bias_calibration.py`, `tests/test_protected_leak.py`:
the tabular MLP whose label leaks `sex` with a swept strength), on 15 independent audit sets of 600 rows per
trained model: no leak (training seeds 0 to 3): mean decodability 0.037 to 0.045, above 0.07 in 20% to 40% of the
sets, above 0.1 in 0% to 20%, above 0.12 in 0% to 7% (3 of 60); leak 0.5 (flips 11% of the exposed predictions;
seeds 0 to 2): mean 0.161 to 0.164, above 0.12 in 73% of the sets; leak 1.5 (35%): mean 0.389, above 0.12 in every
set. `max_decodability = 0.12` fails about one control audit in twenty and catches a leak that flips 11% of
predictions in about three audits of four at 600 rows (the spread falls with more samples, as 1/sqrt(n)); a
straddling interval marks the close calls. The former limit, 0.07, was set on one audit set and fails 28% of the
control audits. In the sweep on the fixed audit set (`python benchmarks/bias_calibration.py`): controls 0.000 to
0.011 (upper bounds at most 0.108), leak 0.25: 0.071 and 0.100, leak 0.5: 0.112 to 0.134, leak 1: 0.217 and 0.249,
leak 1.5: 0.312 and 0.365, at 50% and 20% of the rows with sex = 1 alike. Before the chance correction, the
output's raw logits were probed with two shuffles and 0.3 as the limit: a control reached 0.16 (its logits' sum,
which no decision reads, carried `sex`) and leaks up to strength 1 (27% of predictions flipped) passed. In the
strongest leak `sex` is decodable at 1.00 and 0.99 in the hidden layers; in its control too in the first layer
(1.00), an input column passing through, and partly in the second (0.66), which is why only the output is judged.
On the embedded examples, the concept `watermark` is decodable at 0.97 from the output of `digits`, which relies
on it, and 0.16 from its control's (1.00 in both first layers); `loop` at 0.50 and 0.57.
For token models `position` chooses what a unit contributes per sample: the mean over tokens (default), or
its activation at the `first` token (a [CLS] summary) or the `last` one (where a next-token model reads); residual
streams are audited by naming their blocks in `[audit] layers` (layer kind `stream`, units `block:dN`). On a toy
where only the first token carries the concept, the stream's decodability is 1.00 at `first`, 0.01 at `last` and
0.19 for `mean` (`tests/test_language_streams.py`).
""",
    fix="""
Remove the attribute's information from what the decision is computed from: drop it and its proxies from the
inputs, re-balance the training data, or train adversarially against the probe (adversarial removal, Elazar and
Goldberg 2018; iterative nullspace projection, Ravfogel et al. 2020); then re-audit. If the dependence is
legitimate (a medical risk that depends on age), document it and waive the finding with a justification.
""",
    references=(
        "Alain, Bengio (2016). Understanding intermediate layers using linear classifier probes. arXiv:1610.01644",
        "Belinkov (2022). Probing Classifiers: Promises, Shortcomings, and Advances. Computational Linguistics 48(1).",
        "Hewitt, Liang (2019). Designing and Interpreting Probes with Control Tasks. EMNLP.",
        "Elazar, Goldberg (2018). Adversarial Removal of Demographic Attributes from Text Data. EMNLP.",
        "Ravfogel, Elazar, Gonen, Twiton, Goldberg (2020). Null It Out: Guarding Protected Attributes by "
        "Iterative Nullspace Projection. ACL.",
    ),
)
RULE = RuleDefinition("L205", "concept-probes", "warning", DOCS)


@dataclass(frozen=True)
class ProbesParams:
    max_decodability: float = param(0.12, low=0.0, high=1.0, doc="fail when a protected attribute's chance-"
                                                                "corrected decodability from the output exceeds")
    folds: int = param(5, low=2, doc="cross-validation folds (fewer when a class is rarer)")
    shuffles: int = param(5, low=1, doc="probes on shuffled labels (seeded permutations), for the chance level")
    seeds: int = param(3, low=1, doc="seeded fold splits the probe is cross-fitted on (the score is the mean "
                                     "over them)")
    samples: int = param(2048, low=4, doc="samples probed (seeded subset)")
    max_levels: int = param(10, low=2, doc="an attribute with more distinct values is cut into quartiles")
    position: str = param("mean", choices=("mean", "first", "last"),
                          doc="what a unit contributes per sample: its mean over positions (tokens), or its "
                              "activation at the first (e.g. [CLS]) or last token")


def _decision_read(context: AuditContext, layer: str, values):
    """What the decision reads of a layer: a classifier's (or next-token model's) logits centred per sample, since
    softmax ignores a shift common to every class (a trace of the attribute there reaches no decision); any other
    layer as it is."""
    if layer == OUTPUT and context.task in ("classification", "next-token") and values.shape[1] > 1:
        return values - values.mean(1, keepdim=True)
    return values


_READ = {"mean": "mean over positions", "first": "at the first position", "last": "at the last position"}


class ProbesEvidence(TypedDict, total=False):
    """The evidence of L205's findings (each finding holds some of these keys)."""

    attribute: str
    chance: dict
    classes: int
    folds: int
    kind: str
    location_rule: dict
    position: str
    probe: str
    profile: list
    samples: int


def _cost(sizes: Sizes, params: ProbesParams) -> Cost:
    """Activations of ``samples`` samples (one forward pass) and linear probes per layer and attribute: ``folds``
    x (``seeds`` + ``shuffles``) fits of about 100 iterations (each seeded split and each shuffle, at least one
    shuffle: :func:`mechaudit.techniques.probes.probe`)."""
    n = sizes.n(params.samples)
    fits = params.folds * (max(params.seeds, 1) + max(params.shuffles, 1)) * 100
    return forwards(sizes, n) + Cost(flops=sum(2.0 * fits * n * layer.units * params.max_levels
                                               for layer in sizes.layers))


COST = RuleCost(_cost, reduce="samples")


@register("probes", ProbesParams, needs=("attributes",), rule=RULE,
          evidence=ProbesEvidence, cost=COST)
def probes(context: AuditContext, rule) -> list[Measurement]:
    params: ProbesParams = rule.params
    indices, activations = sampled_activations(context, params.samples, params.position)
    output_layer = next((layer.name for layer in context.view.layers if layer.is_output), None)
    attributes = [(name, values, "concept") for name, values in context.data.concepts.items()]
    attributes += [(name, values, "protected") for name, values in context.data.protected.items()]
    features = {layer: reduce_features(_decision_read(context, layer, values)) for layer, values in activations.items()}
    findings = []
    for name, values, kind in attributes:
        labels = as_classes(values[indices], params.max_levels)
        profile, results = [], {}
        for layer, matrix in features.items():
            result = results[layer] = probe(matrix, labels, params.folds, params.shuffles, context.seed,
                                            seeds=params.seeds)
            profile.append({"layer": output_layer or OUTPUT if layer == OUTPUT else layer,
                            "decodability": result.decodability, "balanced_accuracy": result.balanced_accuracy,
                            "shuffled_balanced_accuracy": result.shuffled_balanced_accuracy,
                            "shuffled_spread": result.chance_spread, "features": int(matrix.shape[1])})
        evidence = {"attribute": name, "kind": kind, "samples": len(indices), "classes": result.classes,
                    "folds": result.folds, "profile": profile,
                    "chance": {"shuffles": params.shuffles, "seeds": params.seeds,
                               "decodability": "(balanced accuracy - shuffled-label balanced accuracy) / "
                                               "(1 - shuffled-label balanced accuracy), clipped at 0"},
                    "position": params.position,
                    "probe": f"logistic regression on standardised activations ({_READ[params.position]}), "
                             "balanced accuracy, chance-corrected with shuffled labels"}
        at_output = profile[-1]
        best = max(profile, key=lambda row: row["decodability"])
        if kind == "concept":
            first, tie = _located(profile, results, context.seed)
            evidence["location_rule"] = tie
            location = Location.of_layer(first["layer"]) if first["layer"] != OUTPUT else Location(component=OUTPUT)
            findings.append(Measurement(
                f"concept '{name}' is decodable from {first['layer']} on (decodability {first['decodability']:.2f}; "
                f"at most {best['decodability']:.2f}, in {best['layer']}, within the probe's noise of it; "
                f"{at_output['decodability']:.2f} from the output)",
                location=location, metric="concept_decodability", value=first["decodability"], evidence=evidence,
            ))
            continue
        value = at_output["decodability"]
        failed = value > params.max_decodability
        findings.append(Measurement(
            f"protected attribute '{name}' is {'decodable' if failed else 'not decodable'} from the model's output "
            f"(decodability above chance {value:.2f}, chance {at_output['shuffled_balanced_accuracy']:.2f} "
            f"balanced accuracy); most decodable in {best['layer']} ({best['decodability']:.2f})",
            location=Location.of_layer(at_output["layer"]) if at_output["layer"] != OUTPUT
            else Location(component=OUTPUT),
            metric="protected_decodability", value=value, threshold=params.max_decodability, evidence=evidence,
            interval=results[OUTPUT].interval(context.seed),
        ))
    return findings


def _located(profile: list[dict], results: dict, seed: int) -> tuple[dict, dict]:
    """The first layer whose decodability is not told apart from the largest: the paired bootstrap interval of the
    difference (largest minus this layer's, the same resampled samples for both) holds 0. With the rule that led to
    it (the best layer, and the interval of each layer tested before the one chosen)."""
    layers = list(results)
    best = max(range(len(profile)), key=lambda i: profile[i]["decodability"])
    tested = []
    for index, row in enumerate(profile):
        gap = None if index == best else paired_difference(results[layers[best]], results[layers[index]], seed)
        tested.append({"layer": row["layer"], "difference": profile[best]["decodability"] - row["decodability"],
                       "interval": gap.to_dict() if gap is not None else None})
        if index == best or (gap is not None and gap.low <= 0.0):
            break
    rule = {"rule": "the first layer whose paired bootstrap interval of (largest decodability - its decodability) "
                    "holds 0", "best": {"layer": profile[best]["layer"], "decodability": profile[best]["decodability"]},
            "tested": tested}
    return profile[index], rule
