"""L201: reliance on a forbidden input region (a declared mask) or a protected input feature (a tabular column).

Two findings per region: the attribution ratio (its share of the attribution over its share of the input, in the
predicted class that relies on it most) and the flip rate (predictions that change under an intervention on the
region: set to the baseline (parameter ``baseline``, default zero), or for a protected column set to each of its
other values, a counterfactual).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch

from ..activations import model_outputs
from ..addresses import input_address
from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, attributions, forwards, uses
from ..findings import Location, Measurement
from ..techniques.attribution import METHODS
from ..techniques.baselines import Baseline
from ..techniques.edits import what_if_erased
from ..techniques.uncertainty import Interval, bootstrap, bootstrap_mean
from .attribution_common import predicted_attributions, reliability, unreliable_suffix
from .decomposition_evidence import layer_atlas, unit_pictures
from .input_baseline import BaselineParams, input_baseline
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="""
The model relies on an input region it must not use (a watermark, a border, a tag, a protected column).
""",
    what="""
For every declared input mask (`[data.masks]`) and every protected attribute that is an input column of tabular
data (`[data.protected]` naming a column of the CSV inputs: feature mode, located at `input:<name>`):
(1) `attribution_ratio`: over the samples where the region differs from the baseline (zero), the region's share
of the absolute attribution mass divided by its share of the input, per predicted class; the value is the class
that relies on it most among those with at least `min_class_samples` such samples (1 means "no more than its
area"; the per-class table is in the evidence); (2) `flip_rate`: the share of predictions that change under an
intervention on the region: replaced by the zero baseline, or, for a protected column, the counterfactual of each
of its other values (its quantiles when it has more than `max_levels`), per class as well. Each is a finding of
its own; either one above its threshold fails. The attribution method is selectable (`method`:
`integrated_gradients`, `saliency`, `deeplift`, `gradient_shap`, `lrp` where captum has rules for every module);
when the audit runs L203, the evidence says whether that method passed the attribution sanity check
(`attribution_reliable`, `attribution_sanity.status`) and a failed check marks the finding's message.
When the flip rate of a region fails (`what_if = true`), the evidence carries a what-if edit: at each hidden
layer in turn, the region's direction is erased (directional ablation, below) and the flip rate and the accuracy
with and without the region are reported before and after, with the units where the region's trace is strongest;
the recommended layer (`best`) has the lowest flip rate among those whose accuracy without the region drops by
at most `max_accuracy_cost`. It is a simulation: the model is not retrained; `mechaudit edit --erase REGION
--layer LAYER` writes it into a copy of the weights of a Linear layer.
Both values carry a 95% percentile-bootstrap interval over the attributed samples (the flip rate: 500 resamples;
the attribution ratio: 200, the worst eligible class chosen anew in each).
""",
    why="""
A model that predicts from a region that should not matter (a watermark, a scanner tag, a hospital logo)
has learned a shortcut: it looks accurate on data that carries the shortcut and fails, or discriminates,
where it does not. This is the classic "Clever Hans" failure. A protected attribute among the inputs (sex, age)
that moves the decision is direct discrimination, whatever the accuracy.
""",
    how="""
Attributions come from captum (Integrated Gradients by default, Sundararajan et al. 2017: zero baseline,
`n_steps` steps) to the predicted class, on a seeded subset of `samples` audit samples. The aggregation: only
samples where the region differs from the baseline count (there path methods attribute nothing to the region by
construction, so a watermark stamped on half the images would halve the measured reliance); within a class the
ratio is mass-weighted (the region's attribution summed over the class's samples, over their total attribution),
so that samples with large attributions count more than near-zero ones; and the worst class sets the value,
because a shortcut is usually tied to one class (the watermark was planted on 7s) and averaging over classes
that ignore the region hides it. The flip rate is an intervention on the input, not an attribution. Measured
(`mechaudit/examples/digits/README.md`, `tests/test_localization_attribution.py`): the shortcut model `digits`
puts 6.4x its area's share of attribution in the watermark for class 7 (2.6x pooled over classes) and 18.9% of its
predictions flip without the watermark; its control `digits-control` 1.7x (class 1; 1.1x pooled) and 1.7%. The
earlier per-sample mean over all samples gave 2.0x and 0.9x: a shortcut/control ratio of 2.2, now 3.8. The
tabular toy whose label leaks `sex` puts 5.3x in the `sex` column and 94% of its predictions flip with the
counterfactual value; its control trained without the leak 0.6x and 1.8%. `max_attribution_ratio = 3.0` sits
between the controls (at most 1.7x) and the shortcuts (at least 5.3x); `max_flip_rate = 0.05` between 1.8% and
18.9%. The what-if edit is directional ablation (Arditi et al. 2024) of the difference of means, the estimator
that LEACE (Belrose et al. 2023) shows equalises what a linear read-out can see: the layer's mean activation
(all units and positions) with the region minus without it is estimated on the even-numbered samples, and the
edit sets each sample's coordinate along it to its mean without the region; every figure is measured on the
odd-numbered samples. On `digits` (180 held-out samples) erasing the watermark's direction at `features.0`
lowers the flip rate from 21.7% to 0.6% (accuracy without the watermark 88.9% before and after, on the audit
data 79.4% to 88.3%); at `features.2` 1.1%, at `classifier.0` 4.4% (accuracy without it 84.4%). Suppressing the
most watermark-specific units instead (R303) leaves 19.2%: the watermark is read by channels that also read
the digit, and only a direction that spans positions can separate them.
Baseline (parameter `baseline`, shared with L204 and R303): what the region is replaced by, in the flips, the
what-if edits and as the attributions' reference. `zero` (the default) is right where 0 means absent (black
pixels, zero-centred features); where 0 lies outside the data it moves the region off the data, and flips show a
reaction to that value rather than reliance. `mean` uses the audit data's mean per feature (per channel for
images), `constant` the value `baseline_value`, `blur` the input blurred with `blur_sigma`, `sample` another audit
sample. Measured (`tests/test_input_baselines.py`): a model that reacts to feature 0 only below 2, on data where it
is about 5, flips 49% of predictions with `zero` and 0% with `mean`; a model that reads feature 0's content flips
54% with `zero` and 31% with `mean`. The evidence names the baseline used.
""",
    fix="""
Remove the shortcut from the training data (mask or randomise the region, balance it across classes), or
augment so that the region carries no label information; for a protected column, drop it from the inputs or
train with the counterfactual pairs; then re-audit. If the region is legitimately informative, remove it from the
spec and document why.
""",
    references=(
        "Sundararajan, Taly, Yan (2017). Axiomatic Attribution for Deep Networks. ICML.",
        "Lapuschkin et al. (2019). Unmasking Clever Hans predictors and assessing what machines really "
        "learn. Nature Communications 10:1096.",
        "Geirhos et al. (2020). Shortcut learning in deep neural networks. Nature Machine Intelligence 2:665-673.",
        "Kusner, Loftus, Russell, Silva (2017). Counterfactual Fairness. NeurIPS.",
        "Belrose et al. (2023). LEACE: Perfect linear concept erasure in closed form. NeurIPS.",
        "Arditi et al. (2024). Refusal in Language Models Is Mediated by a Single Direction. NeurIPS.",
    ),
)
RULE = RuleDefinition("L201", "forbidden-input-reliance", "error", DOCS)


@dataclass(frozen=True)
class ForbiddenInputParams(BaselineParams):
    max_attribution_ratio: float = param(3.0, low=0.0, doc="fail when a class's in-region attribution share / "
                                                           "region area exceeds this")
    max_flip_rate: float = param(0.05, low=0.0, high=1.0, doc="fail when more predictions flip under the "
                                                              "intervention on the region")
    method: str = param("integrated_gradients", choices=METHODS, doc="captum attribution method")
    n_steps: int = param(32, low=2, doc="integration steps (integrated gradients, gradient SHAP)")
    samples: int = param(512, low=1, doc="samples attributed (seeded subset)")
    min_class_samples: int = param(10, low=1, doc="smallest class (predicted, region present) that can set the "
                                                  "attribution ratio")
    max_levels: int = param(10, low=2, doc="a protected column with more distinct values is set to its quantiles "
                                           "in the counterfactual")
    what_if: bool = param(True, doc="when the flip rate fails, simulate erasing the region's direction at each "
                                    "hidden layer and report before / after")
    max_accuracy_cost: float = param(0.05, low=0.0, high=1.0, doc="largest accuracy drop (region removed) of the "
                                                                  "recommended what-if edit")


@dataclass
class Region:
    """An input region: a mask (per sample, like the inputs), and for a protected column its index."""

    name: str
    mask: torch.Tensor
    column: int | None = None


class ForbiddenInputEvidence(TypedDict, total=False):
    """The evidence of L201's findings (each finding holds some of these keys)."""

    baseline: dict
    aggregation: str
    attribution_ratio: float
    attribution_ratio_pooled: float
    attribution_reliable: bool
    attribution_sanity: dict
    attribution_share_in_mask: float
    column: str | None
    flipped: int
    intervention: str
    mask_area_share: float
    method: str
    per_class: list
    samples: int
    samples_with_region: int
    what_if: dict
    attribution_maps: dict  # classes (at most MAP_CLASSES), classes_total, mean_per_class, samples, mask
    attribution_per_column: dict  # columns, region_column, classes (at most MAP_CLASSES), classes_total, shares
    activation_atlas: dict
    exemplars: list
    activation_maximization: list
    tuning_curves: list
    column_attribution: list  # tabular inputs: the traced units' attribution per column


MAP_SIDE = 32  # attribution maps in the evidence are pooled to at most this many pixels a side
MAP_SAMPLES = 3
MAP_CLASSES = 10  # per-class maps/shares in the evidence: at most this many predicted classes (the most frequent)


def _kept_classes(predictions: torch.Tensor) -> list[int]:
    """The at most ``MAP_CLASSES`` most frequently predicted classes (ties by class index), in class order."""
    classes, counts = predictions.unique(return_counts=True)
    ranked = sorted(zip(classes.tolist(), counts.tolist()), key=lambda pair: (-pair[1], pair[0]))
    return sorted(c for c, _ in ranked[:MAP_CLASSES])


def _attribution_maps(attributions: torch.Tensor, mask: torch.Tensor, predictions: torch.Tensor,
                      present: torch.Tensor, class_name, inputs: torch.Tensor) -> dict | None:
    """For image inputs (samples, channels, height, width): the mean absolute attribution per predicted class
    (at most ``MAP_CLASSES``, with ``classes_total``) and of a few samples where the region is present, each with
    its input (summed, resp. averaged, over channels, pooled to at most ``MAP_SIDE`` pixels a side), with the
    region's mask; None for other inputs."""
    if attributions.dim() != 4:
        return None
    height, width = attributions.shape[-2:]
    size = (min(height, MAP_SIDE), min(width, MAP_SIDE))

    def pooled(maps: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(maps.sum(1, keepdim=True).float(), size)[:, 0]
    maps, region = pooled(attributions), pooled(mask[:1])[0]
    classes = _kept_classes(predictions)
    chosen = present.nonzero().flatten()[:MAP_SAMPLES].tolist()
    return {"classes": [class_name(c) for c in classes], "classes_total": len(predictions.unique()),
            "mean_per_class": [maps[predictions == c].mean(0) for c in classes],
            "samples": [{"predicted_class": class_name(int(predictions[i])), "map": maps[i],
                         "input": pooled(inputs[i:i + 1].float() / inputs.shape[1])[0]} for i in chosen],
            "mask": region}


def _attribution_per_column(attributions: torch.Tensor, predictions: torch.Tensor, class_name,
                            feature_names: list[str] | None, column: int) -> dict | None:
    """For tables (samples, columns): each column's share of the mean absolute attribution, per predicted class
    (at most ``MAP_CLASSES`` classes, with ``classes_total``; at most ``MAP_SIDE`` columns: the region's and the
    largest others); None for other inputs."""
    if attributions.dim() != 2:
        return None
    share = attributions / attributions.sum(1, keepdim=True).clamp_min(1e-12)
    order = [column] + [c for c in share.mean(0).argsort(descending=True).tolist() if c != column][:MAP_SIDE - 1]
    classes = _kept_classes(predictions)
    return {"columns": [feature_names[c] if feature_names and c < len(feature_names) else f"x{c}" for c in order],
            "region_column": 0, "classes": [class_name(c) for c in classes],
            "classes_total": len(predictions.unique()),
            "mean_share_per_class": [[round(float(v), 4) for v in share[predictions == c][:, order].mean(0)]
                                     for c in classes]}


def _cost(sizes: Sizes, params: ForbiddenInputParams) -> Cost:
    """The shared attributions of ``samples`` samples, L203's sanity cascade (when the audit runs it), and one
    forward pass per region (or per level of a protected feature) and for the what-if edit."""
    n = sizes.n(params.samples)
    passes = max(1, sizes.regions) * (params.max_levels + 2)
    return (attributions(sizes, params.method, params.n_steps, params.samples) + forwards(sizes, n, passes)
            + uses("attribution_sanity"))


COST = RuleCost(_cost, reduce="samples")


@register("forbidden_input", ForbiddenInputParams, needs=("regions", "classification", "real_inputs"), rule=RULE,
          evidence=ForbiddenInputEvidence, cost=COST)
def forbidden_input(context: AuditContext, rule) -> list[Measurement]:
    params: ForbiddenInputParams = rule.params
    baseline = input_baseline(context, params)
    indices, attributions = predicted_attributions(context, params.method, params.n_steps, params.samples, baseline)
    attributions = attributions.abs()
    total = attributions.flatten(1).sum(1)
    if not torch.isfinite(total).all() or float(total.max()) <= 1e-12:
        raise ValueError("attributions are zero or not finite for every sample: the model's output is not "
                         "differentiable with respect to its inputs, so attribution cannot be trusted")
    inputs, predictions = context.data.inputs[indices], context.predictions[indices]
    trust = reliability(context, params.method)
    findings = []
    for region in _regions(context, indices):
        present = ((inputs - baseline.fill(inputs)) * region.mask).flatten(1).abs().sum(1) > 0  # differs from baseline
        ratio, rows, pooled, ratio_interval = _attribution_ratios(context, region, present, predictions, attributions,
                                                                  params)
        flipped, intervention = _flips(context, region, inputs, predictions, params.max_levels, baseline)
        for row in rows:
            chosen = predictions == row["class_index"]
            row["flip_rate"] = float(flipped[chosen].float().mean())
            del row["class_index"]
        location = Location(component=input_address(region.name))
        area = float(region.mask.float().mean())
        evidence = {"method": params.method, "samples": len(indices), "mask_area_share": area,
                    "attribution_share_in_mask": pooled["share"], "attribution_ratio": ratio,
                    "attribution_ratio_pooled": pooled["ratio"], "samples_with_region": pooled["samples"],
                    "aggregation": "worst predicted class, over samples where the region differs from the baseline "
                                   "(attribution mass in the region / total mass, over the region's area)",
                    "per_class": rows, "baseline": baseline.describe(), **trust}
        maps = _attribution_maps(attributions, region.mask, predictions, present, context.class_name, inputs)
        if maps is not None:
            evidence["attribution_maps"] = maps
        if region.column is not None:
            evidence["column"] = context.data.feature_names[region.column] if context.data.feature_names else None
            evidence["attribution_per_column"] = _attribution_per_column(
                attributions, predictions, context.class_name, context.data.feature_names, region.column)
        worst = max(rows, key=lambda r: r["attribution_ratio"] if r["eligible"] else -1.0, default=None)
        where = f" (predicted class {worst['predicted_class']})" if worst and worst["eligible"] else ""
        findings.append(Measurement(
            f"{ratio:.1f}x its area's share of the attribution falls in '{region.name}'{where}; "
            f"{pooled['share']:.1%} over all samples where it is present, for {area:.1%} of the input"
            + unreliable_suffix(trust),
            location=location, metric="attribution_ratio", value=ratio, threshold=params.max_attribution_ratio,
            evidence=evidence, interval=ratio_interval,
        ))
        flip_rate = float(flipped.float().mean())
        failed = flip_rate > params.max_flip_rate
        evidence = {"flipped": int(flipped.sum()), "samples": len(indices), "intervention": intervention,
                    **({"baseline": baseline.describe()} if region.column is None else {})}
        suffix = ""
        if failed and region.column is None and params.what_if:
            edit = what_if_erased(context.view, context.view.hidden_layers, inputs, _labels(context, indices),
                                  region.mask, context.batch_size, context.device, params.max_accuracy_cost,
                                  remove=baseline.remove)
            if edit is not None:
                evidence["what_if"] = edit
                suffix = _what_if_summary(edit)
                evidence.update(_trace_pictures(context, edit, inputs, _labels(context, indices), predictions,
                                                present, (region.name, region.mask)))
        findings.append(Measurement(
            f"{flip_rate:.1%} of predictions change when {intervention}{suffix}",
            location=location, metric="flip_rate", value=flip_rate, threshold=params.max_flip_rate,
            evidence=evidence, interval=bootstrap_mean(flipped, seed=context.seed),
        ))
    return findings


def _trace_pictures(context: AuditContext, edit: dict, inputs: torch.Tensor, labels: torch.Tensor | None,
                    predictions: torch.Tensor, present: torch.Tensor, region: tuple[str, torch.Tensor]) -> dict:
    """What the reviewer looks at for the layer where the region's trace is erased: its strongest units
    (exemplars, activation maximisation, tuning along the region's value) and its activation atlas, the samples
    with the region marked."""
    best = next(row for row in edit["layers"] if row["layer"] == edit["best"])
    pictures = unit_pictures(context, [unit["component"] for unit in best["units"]], inputs, labels, region)
    atlas = layer_atlas(context, context.view.layer(best["layer"]), inputs,
                        [context.class_name(int(p)) for p in predictions], present)
    return {**pictures, **({"activation_atlas": atlas} if atlas else {})}


def _labels(context: AuditContext, indices: torch.Tensor) -> torch.Tensor | None:
    return context.data.labels[indices] if context.data.labels is not None else None


def _what_if_summary(edit: dict) -> str:
    """One clause for the message: the recommended directional ablation and what it leaves, held out."""
    best = next(row for row in edit["layers"] if row["layer"] == edit["best"])
    before, after = edit["before"], best["after"]
    text = (f"; erasing its direction at {best['layer']} (a simulation, measured on {edit['evaluated_samples']} "
            f"held-out samples) leaves {after['flip_rate']:.1%} (from {before['flip_rate']:.1%})")
    if "accuracy_region_removed" in after:
        text += (f", accuracy without the region {before['accuracy_region_removed']:.1%} -> "
                 f"{after['accuracy_region_removed']:.1%}")
    units = ", ".join(unit["component"] for unit in best["units"][:3])
    return text + f"; its trace is strongest in {units}"


def _regions(context: AuditContext, indices: torch.Tensor) -> list[Region]:
    """Declared masks (broadcast to the audited samples) and protected input columns (one-hot masks)."""
    data, shape = context.data, (len(indices), *context.data.inputs.shape[1:])
    regions = [Region(name, (mask[indices] if mask.shape == data.inputs.shape else mask.expand(shape)).float())
               for name, mask in data.masks.items()]
    for name, column in data.protected_columns.items():
        mask = torch.zeros(shape)
        mask[:, column] = 1.0
        regions.append(Region(name, mask, column))
    return regions


def _attribution_ratios(context: AuditContext, region: Region, present: torch.Tensor, predictions: torch.Tensor,
                        attributions: torch.Tensor, params: ForbiddenInputParams
                        ) -> tuple[float, list[dict], dict, Interval | None]:
    """The region's attribution ratio in the predicted class that relies on it most, the per-class table, the
    pooled figures and the ratio's bootstrap interval over the samples (the worst class chosen anew in each).

    Only samples where the region differs from the baseline count: where it equals the baseline, path methods
    attribute nothing to it by construction, so including them dilutes reliance by however often the region is
    absent (a watermark on half the images halves it). Within a class the ratio is mass-weighted (the region's
    attribution mass over the total, divided by the region's share of the input), so that samples with large
    attributions weigh more than near-zero ones; the worst class with at least ``min_class_samples`` such
    samples sets the value, because a shortcut is usually tied to one class and averaging over classes that
    ignore the region hides it. ``present`` marks the samples where the region differs from the baseline."""
    inside = (attributions * region.mask).flatten(1).sum(1)
    total = attributions.flatten(1).sum(1)
    area = region.mask.flatten(1).mean(1)

    ones = torch.ones(len(present))

    def ratio(chosen: torch.Tensor, weight: torch.Tensor = ones) -> tuple[float, float]:
        """The mass-weighted ratio over the chosen samples, each counted ``weight`` times (a bootstrap resample)."""
        weight = weight * chosen
        if not bool((weight > 0).any()) or float((total * weight).sum()) <= 0:
            return 0.0, 0.0
        share = float((inside * weight).sum() / (total * weight).sum())
        return share / float((area * weight).sum() / weight.sum()), share

    classes = predictions.unique().tolist()

    def worst(weight: torch.Tensor = ones) -> float:
        """The worst eligible class's ratio (the pooled one when no class is eligible)."""
        eligible = [ratio(present & (predictions == cls), weight)[0] for cls in classes
                    if float((weight * (present & (predictions == cls))).sum()) >= params.min_class_samples]
        return max(eligible) if eligible else ratio(present, weight)[0]

    def resampled(indices: np.ndarray) -> float:
        return worst(torch.bincount(torch.from_numpy(indices), minlength=len(present)).float())

    rows = []
    for cls in classes:
        chosen = present & (predictions == cls)
        class_ratio, share = ratio(chosen)
        rows.append({"predicted_class": context.class_name(cls), "class_index": cls,
                     "predictions": int((predictions == cls).sum()), "samples": int(chosen.sum()),
                     "attribution_share_in_mask": share, "attribution_ratio": class_ratio,
                     "eligible": int(chosen.sum()) >= params.min_class_samples})
    pooled_ratio, pooled_share = ratio(present)
    interval = bootstrap(resampled, len(present), seed=context.seed, resamples=200)
    return worst(), rows, {"ratio": pooled_ratio, "share": pooled_share, "samples": int(present.sum())}, interval


def _flips(context: AuditContext, region: Region, inputs: torch.Tensor, predictions: torch.Tensor,
           max_levels: int, baseline: Baseline) -> tuple[torch.Tensor, str]:
    """Which predictions change under the intervention, and the intervention in words."""
    if region.column is None:
        removed = baseline.remove(inputs, region.mask)
        words = "the baseline" if baseline.kind == "zero" else f"the {baseline.kind} baseline"
        return _predict(context, removed) != predictions, f"'{region.name}' is replaced by {words}"
    column = context.data.inputs[:, region.column]
    levels = column.unique()
    if len(levels) > max_levels:
        levels = column.quantile(torch.linspace(0.1, 0.9, max_levels - 1)).unique()
    flipped = torch.zeros(len(inputs), dtype=torch.bool)
    for level in levels.tolist():
        changed = inputs.clone()
        changed[:, region.column] = level
        moved = inputs[:, region.column] != level
        flipped |= moved & (_predict(context, changed) != predictions)
    shown = ", ".join(f"{v:g}" for v in levels.tolist()[:max_levels])
    return flipped, f"protected feature '{region.name}' is set to each of its other values ({shown})"


def _predict(context: AuditContext, inputs: torch.Tensor) -> torch.Tensor:
    return model_outputs(context.model, inputs, context.batch_size, context.device).argmax(-1)
