"""D101: units that never activate on the audit data (dead), and units that never switch off (dense).

Judged only in layers whose output reaches a rectifying nonlinearity (:mod:`..techniques.nonlinearity`); residual
streams, attention heads and layers read by sums or normalisations are listed as not judged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..context import Artifact, AuditContext
from ..cost import Cost, RuleCost, Sizes, stats_pass
from ..findings import Location, Measurement
from ..techniques.nonlinearity import Following, following_activations
from ..techniques.uncertainty import bootstrap_mean
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="A layer has many units that never activate on the audit data.",
    what="""
For every hidden Linear or Conv layer, the share of units (channels for Conv) whose output never exceeds
`activation_threshold` on any audit sample or position. The finding fails when that share exceeds
`max_dead_fraction`.
A second finding per layer reports its dense units: units above 0 at every position on more than
`dense_share` of the samples (always on, so their nonlinearity never acts); it fails when more than
`max_dense_fraction` of the layer is dense.
Only layers whose output reaches a rectifying nonlinearity (ReLU, ReLU6, GELU, SiLU, Hardswish, Mish), through
dropout, pooling or reshaping alone, are judged: elsewhere (a residual stream, attention heads, a layer added to
a residual or normalised) no unit can be dead, and one finding lists those layers as not judged. When the model
cannot be traced and no activation module runs right after a layer, it is judged, and the evidence says that
"dead" then means never above `activation_threshold` at the layer's output.
""",
    why="""
A dead unit contributes nothing to the computation on the audited distribution: it wastes capacity, and a
large dead share often means a training problem (too high a learning rate, a bad initialisation, a dying
ReLU) or an audit set that does not exercise the model. Dead units also distort per-unit statistics that
other rules rely on.
""",
    how="""
Each share carries a 95% percentile-bootstrap interval over the layer's units (200-500 resamples, seeded): the
per-unit statistics come from one streaming pass that keeps no per-sample maxima, so the interval says how much
the share rests on a few units, not how it would move with other audit samples.
One streaming pass over the audit data with forward hooks records each unit's maximum output over all
samples and positions (the outputs of Linear/Conv modules, i.e. before the nonlinearity, so "never above 0"
means "never passes a ReLU"). Following Lu et al. (2019) on dying ReLU. Threshold, from measurement: the
embedded models have no dead units in their conv layers, and 25% (`digits-control`) and 37.5% (`digits`) of
`classifier.0` dead; across the training settings we tried for them (learning rates 3e-4 to 3e-3), 22% to
53% of that layer died while the control still reached 97-99% accuracy, and 19-38% were dead at
initialisation already. A dead minority is therefore normal for ReLU networks; the rule flags a layer that
is *mostly* dead (more than half its units), where capacity is clearly lost.
Dense units, measured: `classifier.0` has 9% (`digits`) and 22% (`digits-control`) dense units and the conv
layers none; a planted layer with a positive bias on positive inputs is 100% dense. A mostly dense layer
(more than half) computes a nearly linear function: the limit is 0.5, as for dead units.
""",
    fix="""
Check that the audit data covers the model's intended inputs. If it does, retrain with a lower learning
rate, a leaky activation or better initialisation, or prune the dead units.
""",
    references=(
        "Lu, Shin, Su, Karniadakis (2019). Dying ReLU and Initialization: Theory and Numerical Examples. "
        "arXiv:1903.06733",
    ),
)
RULE = RuleDefinition("D101", "dead-units", "warning", DOCS)


def _following(context: AuditContext) -> dict[str, Following]:
    return following_activations(context.view, context.view.hidden_layers, context.data.inputs[:2].to(context.device))


#: What each hidden layer's output reaches (a rectifier or not), found once per audit.
FOLLOWING: Artifact[dict[str, Following]] = Artifact("following_activations", _following)


@dataclass(frozen=True)
class DeadUnitsParams:
    activation_threshold: float = param(0.0, doc="a unit is active on a sample when its output exceeds this")
    max_dead_fraction: float = param(0.5, low=0.0, high=1.0, doc="fail a layer whose dead share exceeds this")
    max_listed: int = param(32, low=0, doc="dead (and dense) units listed in the evidence, per layer")
    dense_share: float = param(0.99, low=0.0, high=1.0, doc="a unit above 0 at every position of more than this "
                                                            "share of the samples is dense (always on)")
    max_dense_fraction: float = param(0.5, low=0.0, high=1.0, doc="fail a layer whose dense share exceeds this")


class DeadUnitsEvidence(TypedDict, total=False):
    """The evidence of D101's findings (each finding holds some of these keys)."""

    active_fraction_per_unit: list
    always_on_fraction_per_unit: list
    dead_count: int
    dead_units: list
    dense_count: int
    dense_units: list
    samples: int
    units: int
    activation: str
    not_judged: dict


def _cost(sizes: Sizes, params: DeadUnitsParams) -> Cost:
    """The shared unit statistics only (one forward pass over the audit data)."""
    return stats_pass(sizes)


COST = RuleCost(_cost)


@register("dead_units", DeadUnitsParams, needs=("layers",), rule=RULE,
          evidence=DeadUnitsEvidence, cost=COST)
def dead_units(context: AuditContext, rule) -> list[Measurement]:
    params: DeadUnitsParams = rule.params
    findings = []
    following = context.shared(FOLLOWING)
    not_judged = {name: f.what for name, f in following.items() if f.kind == "other"}
    if not_judged:
        findings.append(Measurement(
            f"dead and dense units not judged in {len(not_judged)} layer(s) not followed by a rectifying "
            f"nonlinearity (ReLU, GELU, SiLU, ...): {', '.join(list(not_judged)[:5])}"
            + (", ..." if len(not_judged) > 5 else ""),
            evidence={"not_judged": not_judged}, judged=False))
    for layer in context.view.hidden_layers:
        if layer.name in not_judged:
            continue
        stats = context.unit_stats[layer.name]
        activation = following[layer.name].what if following[layer.name].rectified else (
            f"unknown ({following[layer.name].what}): dead means never above activation_threshold at the layer's "
            "output")
        dead = (stats.max <= params.activation_threshold).nonzero().flatten().tolist()
        fraction = len(dead) / layer.size
        findings.append(Measurement(
            f"{len(dead)} of {layer.size} units of {layer.name} never activate ({fraction:.0%})",
            location=Location.of_layer(layer.name),
            metric="dead_fraction", value=fraction, threshold=params.max_dead_fraction,
            interval=bootstrap_mean(stats.max <= params.activation_threshold, over="units", seed=context.seed),
            evidence={
                "dead_units": [layer.address(u) for u in dead[:params.max_listed]],
                "dead_count": len(dead),
                "units": layer.size,
                "samples": stats.count,
                "active_fraction_per_unit": stats.active_fraction,
                "activation": activation,
            },
        ))
        dense = (stats.always_fraction > params.dense_share).nonzero().flatten().tolist()
        dense_fraction = len(dense) / layer.size
        findings.append(Measurement(
            f"{len(dense)} of {layer.size} units of {layer.name} never switch off ({dense_fraction:.0%} dense: above 0 "
            f"everywhere on more than {params.dense_share:.0%} of the samples)",
            location=Location.of_layer(layer.name),
            metric="dense_fraction", value=dense_fraction, threshold=params.max_dense_fraction,
            interval=bootstrap_mean(stats.always_fraction > params.dense_share, over="units", seed=context.seed),
            evidence={"dense_units": [layer.address(u) for u in dense[:params.max_listed]],
                      "dense_count": len(dense), "units": layer.size, "samples": stats.count, "activation": activation,
                      "always_on_fraction_per_unit": [round(float(v), 4) for v in stats.always_fraction]},
        ))
    return findings
