"""L202: units whose ablation alone drops accuracy by more than a threshold, overall or for one class.

Units are any audited components: neurons, channels, attention heads. For a next-token model, accuracy is that of
the next token at the behaviour's position (the last when no behaviour is declared), and a "class" is a target
token."""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from typing import TypedDict

import numpy as np
import torch

from .. import deadline
from ..context import AuditContext
from ..cost import VALUE_BYTES, Cost, RuleCost, Sizes, forwards, stats_pass, unit_split_check, with_gradients
from ..findings import Location, Measurement
from ..model_view import Layer
from ..techniques import ablation_screen, atp, graddrop, second_order, site_ablation
from ..techniques.ablation import MAX_OUTPUT_BYTES
from ..techniques.ablation_scan import AblationScanner
from ..techniques.uncertainty import Interval, bootstrap
from .decomposition_evidence import PICTURED_UNITS, unit_pictures
from .registry import RuleDefinition, RuleDocs, param, register
from .screen_confirm import confirm_selection
from .screen_params import calibration_param, exhaustive_param, graddrop_param

_LOG = logging.getLogger(__name__)

MODES = ("zero", "mean", "resample")
#: Every non-empty combination of modes, in canonical order ("zero", "zero,mean", ..., "zero,mean,resample").
MODE_SETS = tuple(",".join(c) for size in range(1, len(MODES) + 1) for c in combinations(MODES, size))


DOCS = RuleDocs(
    summary="A single unit's ablation alone breaks the model's accuracy, overall or for one class.",
    what="""
Every unit of every hidden layer is ablated on its own, by zero ablation, mean ablation (its mean activation
per position over the audit data) and resample ablation (its activation on another audit sample, a seeded
derangement of the samples), and accuracy is measured again, overall and per class (by label). All drops are
reported; a unit whose `flag_on` ablation (default: mean; `any` takes the worst) drops accuracy by more than
`max_accuracy_drop` is flagged at its address (`accuracy_drop`), and so is a unit that drops the accuracy of one
class with at least `min_class_samples` samples by more than `max_class_accuracy_drop` (`class_accuracy_drop`;
1, the default here, judges no class: the per-class drops are reported, the compliance rulebook judges them).
Units are any audited components: neurons, channels, attention heads (`blocks.1.attn:h3`), residual-stream
dimensions. For a next-token model, accuracy is that of the next token at the `[behaviour]` position (the last
when none is declared). On the embedded `induction` model exactly the planted previous-token head
(`blocks.0.attn:h2`, drop 89%) and induction head (`blocks.1.attn:h3`, 91%) fail; its control, which never
learnt to copy (accuracy 2.7%), has no critical head.
Each drop carries a 95% percentile-bootstrap interval over the audit samples (200 resamples; the largest of the
flagged modes, for one unit, or the layer's largest drop for the "no critical unit" finding).
""",
    why="""
A unit that the whole model depends on is a single point of failure: a small weight perturbation,
quantisation error or adversarial input that hits it can break the model, and it marks where a behaviour is
localised, which a reviewer should know about. A unit that one class depends on breaks the model for that class
(a group of people, a kind of input) while overall accuracy hides it.
""",
    how="""
Exact ablation (Meyes et al. 2019; mean ablation as in Wang et al. 2022; resample ablation as in causal
scrubbing, Chan et al. 2022). Mean ablation flags by default because zero is often far outside a unit's range,
so zero ablation measures the damage of an impossible input as much as the unit's role (Wang et al. 2022). The
scan is exact and fast (`benchmarks/ablation_speed.py`): the model is traced (torch.fx) and cut at each layer, the
layers before it run once per batch for every mode, only the layers after it run on the batch repeated once per
ablated unit, and when only unit-wise operations lead to the next Linear or Conv layer, that layer's output is
updated through the ablated unit's columns alone; models that cannot be traced use batched forward hooks. On
`digits`, every unit of every layer in the three modes: 11-14x faster than one forward pass per unit, largest
difference in outputs 6.7e-6. Thresholds, from measurement: on `digits-control` the largest mean ablation drop is
1.7 points (zero ablation: 28 points, for `classifier.0:u12`, whose mean activation is large; resample: 9.7 points
for `features.0:ch7`), on `digits` 7.8 points; 10 points flags a unit the model cannot do without. Per class,
mean ablation costs one class at most 14.3 points on `digits-control` (`classifier.0:u3`, class 8) and 40 points
on `digits` (`classifier.0:u12`, class 2; three units above 25 points). This rulebook reports those drops and
does not judge them (a class of 20 samples moves 5 points per sample, so its drops are noisy at the default
gate); the compliance rulebook does. Batched hooks bound each chunk of ablations by the bytes of its outputs
(512 MiB before they are reduced to predictions), so a large vocabulary cannot exhaust memory.
Screen, then confirm (AtP*, Kramar et al. 2024): every layer of more than 256 units (unless `exhaustive = true`) is
first scored whole by attribution patching, one forward and one backward pass per batch: per sample, the first-order
change of the label margin (label logit minus the best other logit) when the unit takes its replacement, (a_new -
a) . d margin / da. Where a layer's units reach the output only through a module that reads them one by one after
their own nonlinearity (the next audited Conv or Linear after a ReLU and a max-pool, an MLP's down projection after
the GELU; found and checked on 16 samples, `mechaudit.techniques.second_order.patch_sites`, as for L207's second-order
screen), each unit is moved at that module's input instead (`mechaudit.techniques.site_ablation`): the move there is
the exact change of what the reader reads, f(a_new) - f(a), where the gradient at the unit's output takes the
nonlinearity's slope at the clean value (0 for a ReLU unit that is off, however far its mean switches it on); one
more forward pass per batch and flagged mode, with every such layer ablated at once (stopped after the last reader),
gives the ablated values there. The `screen` evidence's `sites` names the layers moved there and, where moving them
failed (a reader that did not run, or a torch error in the hooks there; not a memory error, left to the engine's
retry with half the batch, nor where the time left would not hold the screen again), why the screen fell back to
every unit at its output (a warning too); its `method` says how many. The screen's accuracy drop is the mean over
samples of the probability that the margin changes sign when that estimate is off by a normal error of 15% of its
size, overall and per judged class. Every unit of
every such layer is ranked together (one budget for the audit, not one per layer) by the larger of its predicted
overall drop over `max_accuracy_drop` and its predicted drop for one class over `max_class_accuracy_drop`: only the
`screen_top_k` units it ranks highest overall, each layer's `layer_top_k` best (1 by default) and a seeded random
`calibration` sample of all the others are ablated exactly, and the findings come from those exact drops. A
screened layer's verdict also reads its unchecked units' predictions (`unchecked_predicted`): one predicted over
either threshold fails the layer (`predicted_accuracy_drop`, `predicted_class_accuracy_drop`), and a pass whose
layer's top-ranked unit was not ablated exactly (with `layer_top_k = 0`, where a layer may have no exact unit
at all, or when the time budget cut it, see below) is a prediction, not a measurement: its interval is every
possible drop, so the finding reads uncertain and a rulebook with `uncertain = "fail"` (compliance) fails it.
Screened layers run only the flagged ablation exactly
(`screened_modes = "flagged"`: mean by default; `all` runs every mode of `modes`): on a GPT-2-small-shaped audit
(36,864 `c_fc` neurons, 64 prompts) each exact ablation is a forward pass of the 124 M-parameter model over every
prompt, and three modes per layer did not fit 15 minutes on two cores (issue 16). Each screened finding's `screen`
evidence gives the method, the units scored, those ablated exactly, the calibration size, the modes run exactly
(`exact_modes`), the Spearman correlation of screen and exact overall drops over them, the recall of their exact
top-k by the screen's top-k (and the lenient `top_k_recall_at_kth`), and what the screen may have missed: the
largest exact drops (overall, and for one class) in the calibration sample and a one-sided 95% Clopper-Pearson
bound on how many unchecked units of all screened layers together drop accuracy by more than either threshold
(about 3/c of them when none of c calibration units does). Layers of at most 256 units are ablated exactly in every
mode, so their verdicts are the exact scan's: every layer of an audit without a wider one (every embedded example),
and beside wide layers while the narrow ones hold at most `exact_narrow_units` (128) units in all (a 6-block
encoder's 72 heads); more narrow units (GPT-2 small's 144 heads) are ranked with the wide layers, since exact
ablation of each in every mode would cost more than the whole pooled budget. Budget on GPT-2 small's shape
(`python benchmarks/gpt2_small.py --plan --calibration-ms 88.5,133`): L202 plans 337 s with `layer_top_k = 1` (24
layers' best units), 201 s with 0.
Measured (`python benchmarks/atp_screen.py`, mean ablation, every unit; in brackets the same screen with every unit
moved at its output, as before the readers' inputs): Spearman of screen and exact accuracy drop on `digits` 0.984
(0.948), recall of the exact top 10 0.9 (0.8). That top 10 is not unique: 9 units drop accuracy by more than 1.7
points (6 of 360 samples) and 4 tie at 1.7 for the 10th place; the recall resolves such ties for the screen, each
place counted once (the lenient `top_k_recall_at_kth`, the share of picks at or above the 10th drop, is 0.9 either
way). At the outputs the screen missed `classifier.0:u5` (4.4 points, the second largest drop; ranked 15th: its
pre-activation is below 0 on most samples, its mean above) and `classifier.0:u16` (1.9 points, ranked 16th); at the
readers' inputs u5 ranks 2nd, and u16 (18th) is still missed: its mean margin loss is estimated at 0.46 against an
exact 0.81, because the ablation changes which other class is the best, a kink of the margin itself. `induction`:
1.00 (its two planted heads are the screen's top two; heads stay at their outputs). The first-order margin change
agrees with the exact one at 0.956 (0.953) on `digits`, top-10 recall 0.8 (0.9). On the 2,048 `mlp.c_fc` neurons of a
random-weight 2-layer, 256-wide GPT-2 (read by `c_proj` after the GELU): accuracy drop 0.896 (0.860), top-32 recall
0.94 (0.88), and 0.883 / 0.94 with GradDrop, which `auto` runs there (2 blocks; `digits` and `induction`
unchanged); margin change 0.966 (0.941), recall 0.84 (0.78); the screen, with the readers' check, 437x faster than
the exact scan of every neuron (1,144x at the outputs).
Of AtP*'s fixes, the QK fix does not apply (a head component is the
head's output, after its softmax); cancellation over samples cannot happen (scored per sample); path-wise cancellation
is GradDrop's (`screen_graddrop`, below); the calibration bound states what any other failure could hide.
Agreement, per quantity (`screen.agreement`): the exact passes also record each checked unit's mean loss of label margin
(the continuous quantity whose per-sample estimates the screen's drop is built from), against clean margins from the
scanner's own passes for that layer (one unit replaced by its own activation, so an ablation that changes nothing loses
exactly 0; the audit's clean forward pass differs from the scanner's by float noise, which breaks ties), so the evidence
gives Spearman's rho of screen and exact for the accuracy drop (`accuracy_drop`, the same value as `spearman`) and for
the margin (`margin_loss`, with the recall of the exact top-k by the margin estimate's top-k among the checked units),
each with a 95% percentile-bootstrap interval over the checked units (500 resamples; a resample that leaves either side
constant has no rho: `undefined_resamples` gives their share, and above 5% there is no interval, since the defined
resamples would be those that happened to draw the few untied units; `interval_method` says which) and the share of tied
exact values (`tied_exact`). Accuracy drops move in steps of one sample: GPT-2-small's shape with random weights gets 2
of 64 random labels right (`benchmarks/gpt2_small.py --labels random`, each prompt's last token), so nearly every exact
drop there is 0 and the drop's rho (0.652 on its checked units) measures ties more than the screen; the benchmark
labels each prompt by the model's own prediction by default (`--labels predicted`: a random model has no task, and
its own behaviour is what a user audits). With those labels (`python benchmarks/l202_screen.py --blocks 2 --sample 128
--top 16`: 2 full-width GPT-2 blocks, 6,144 `c_fc` neurons, mean ablation) the screen's rho is 0.85 (bootstrap
0.79-0.90) over a random 128 and 0.91 over its top 16 and 16 random units (what L202 checks), recall of the exact top
16 0.88; the first-order margin change ranks the exact one at 0.88 (0.81-0.93). What holds the random 128 at 0.85 is
the per-sample estimate on a model whose margins are tiny (median 0.06 logits, so flips happen at the border): the
first-order margin change agrees with the exact one per unit and sample at rho 0.93 (median relative error 0.27),
while a screen ranking the exact drops perfectly would reach 0.97 (the ties) and L202's drop fed the exact per-sample
changes 0.97. The drop's normal error model ranks alike at relative errors 0.15 and 0.5 (the printed rows: rho 0.85 and
0.85, recall 0.88 and 0.94, one unit of 16), so `ESTIMATE_ERROR` stays 0.15; ranking by the predicted margin loss
instead ranks the exact drops at 0.19 (a unit that lowers every margin a little flips none). The audit itself (`python
benchmarks/gpt2_small.py --blocks 2 --select L202 --skip-streams --rule-timeout 0`, predicted labels, 6,144 `c_fc`
neurons pooled, 32 ablated exactly): the drop's rho 0.88 [0.76, 0.94] over its checked set, recall of the exact top 16
1.0 (`agreement.margin_loss`: 0.97 [0.91, 0.99], recall 1.0); every one of its 24 heads drops the model's own
predictions by over 10 points (fail), no `c_fc` neuron does (largest 7.8); 11.8 min wall on a loaded machine.
`screen_steps` (default 1, the first order) averages the margin's gradient over more points of the
straight path from the activation to its ablated value, one layer moved at a time while the others stay clean
(integrated-gradients attribution patching per layer, as in Marks et al. 2024; EAP-IG, Hanna et al. 2024, interpolates
the input instead), so that a ReLU the ablation switches on (gradient 0 at the clean activation) enters the estimate.
For the estimator alone, run on every unit of `digits`' layers (`python benchmarks/l202_screen.py --digits`; L202 itself
never screens them, each holds at most 256 units and is ablated exactly), 2 points raise the recall of the exact top 10
from 0.8 to 0.9 (rho 0.95 to 0.94) at the units' outputs (that benchmark moves them there); on the GPT-2 blocks
rho falls to 0.76 and the top-16 recall to 0.62 (moving all 3,072 neurons of a layer halfway to their means is far
from ablating one), and each point costs a forward and backward pass per screened layer; so the default stays the
first order.
`screen_graddrop` adds AtP*'s cancellation fix, GradDrop (`mechaudit.techniques.graddrop`, where it is explained and
measured): the screen is rerun with the same estimator (same sites, ablated values and path points) once per audited
block after the first screened layer with that block's write detached, and a unit is ranked by the mean of those
estimates' predicted drops where that exceeds plain AtP's; `auto` (default) runs it when at most 4 blocks follow.
The margin scores (`agreement.margin_loss`) stay plain AtP. The screen's `graddrop` evidence says whether it ran, why,
and over how many blocks (`done`: `k of K blocks` where the time budget stopped it).
Time budget: the plan's estimate cannot foresee the machine's load (GPT-2-small's shape: 278 s on an idle machine,
593 s under load, against the default 600 s time-out; issue 16), so the screened units are ablated exactly in order, the
screen's top-ranked first (its `screen_top_k`, then each layer's best), then the calibration sample in a seeded random
order, in chunks that stop before the rule's time-out would be reached (`mechaudit/deadline.py`: 15% of the budget
is kept for the verdicts and intervals). A cut audit's findings say how many of the planned exact ablations ran
(`time_budget_cut`); the units left out are unchecked like any other: a layer fails on one predicted over a
threshold, and a pass whose layer's top-ranked unit was cut is uncertain (`uncertain = "fail"` fails it); the
agreement figures and the calibration bound are computed on the units that ran (`checked_exactly`, `calibration`).
Raise `--rule-timeout` (0: none) to run them all. Measured (`python benchmarks/gpt2_small.py --select L202
--skip-streams`, default 600 s, two cores at load average 6-7): the screen took 34 s, each exact ablation 11-23 s
(a layer's first also measures its clean margins), 24 of the 54 planned ran (the 16 top-ranked and 8 layers' best, no
calibration unit) and the rule ended at 557 s with 38 findings: 23 fails on exact drops (6 of them uncertain) and 15
uncertain passes, 14 of them layers with no unit ablated, on the screen's prediction; 6 flagged heads were pictured,
8 not (half the reserve was left).
""",
    fix="""
Add redundancy (dropout, wider layers), or make sure the critical unit encodes something intended: look at
what activates it (its top-activating samples, its label in L206's semantic dictionary) and at the classes it
affects.
""",
    references=(
        "Meyes, Lu, de Puiseau, Meisen (2019). Ablation Studies in Artificial Neural Networks. arXiv:1901.08644",
        "Wang et al. (2022). Interpretability in the Wild: a Circuit for Indirect Object Identification in "
        "GPT-2 small. arXiv:2211.00593",
        "Chan et al. (2022). Causal Scrubbing: a method for rigorously testing interpretability hypotheses. "
        "Alignment Forum.",
        "Kramar, Lieberum, Shah, Nanda (2024). AtP*: An efficient and scalable method for localizing LLM behaviour "
        "to components. arXiv:2403.00745",
        "Marks, Rager, Michaud, Belinkov, Bau, Mueller (2024). Sparse Feature Circuits: Discovering and Editing "
        "Interpretable Causal Graphs in Language Models. arXiv:2403.19647",
        "Hanna, Pezzelle, Belinkov (2024). Have Faith in Faithfulness: Going Beyond Circuit Overlap When Finding "
        "Model Mechanisms. arXiv:2403.17806",
    ),
)
RULE = RuleDefinition("L202", "critical-units", "warning", DOCS)


@dataclass(frozen=True)
class CriticalUnitsParams:
    max_accuracy_drop: float = param(0.1, low=0.0, high=1.0, doc="fail a unit whose ablation drops accuracy more")
    max_class_accuracy_drop: float = param(1.0, low=0.0, high=1.0,
                                           doc="fail a unit whose ablation drops one class's accuracy more "
                                               "(classes with at least min_class_samples samples; 1 = off)")
    min_class_samples: int = param(20, low=1, doc="smallest class judged by max_class_accuracy_drop")
    modes: str = param("zero,mean,resample", choices=MODE_SETS, doc="ablations measured and reported")
    flag_on: str = param("mean", choices=(*MODES, "any"), doc="which ablation's drop flags a unit")
    top_k: int = param(10, low=1, doc="units listed per layer in the evidence")
    exhaustive: bool = exhaustive_param("ablated", "units in one layer (every such layer ranked together)")
    screen_top_k: int = param(16, low=1, doc="screened: units the screen ranks highest over all audited layers "
                                             "together, ablated exactly")
    layer_top_k: int = param(1, low=0, doc="screened: also each layer's units the screen ranks highest, ablated "
                                           "exactly (0: a layer's verdict may rest on the screen's prediction)")
    calibration: int = calibration_param("ablated")
    exact_narrow_units: int = param(128, low=0, doc="screened: layers of at most 256 units stay exact in every mode "
                                                    "while they hold at most this many units in all; more are "
                                                    "ranked with the wide layers")
    screened_modes: str = param("flagged", choices=("flagged", "all"),
                                doc="screened: the ablations run exactly, only the flag_on one(s) or all modes")
    screen_steps: int = param(1, low=1, high=16,
                              doc="screened: points of the path from each activation to its ablated value whose "
                                  "gradients the screen averages (integrated gradients; 1 = first order at the "
                                  "activation); each point after the first is one forward and backward pass per "
                                  "screened layer and batch")
    screen_graddrop: str = graddrop_param()


class CriticalUnitsEvidence(TypedDict, total=False):
    """The evidence of L202's findings (each finding holds some of these keys)."""

    base_accuracy: float
    largest_class_drop: float
    mean_drop: float
    per_class: list
    resample_drop: float
    samples: int
    scan: str
    screen: dict
    top_units: list
    unchecked_predicted: dict  # screened layers: the largest predicted drops of the units not ablated exactly
    zero_drop: float
    attention_patterns: list  # pictures of the flagged unit (decomposition_evidence.unit_pictures)
    exemplars: list
    activation_maximization: list
    tuning_curves: list
    column_attribution: list  # tabular inputs: the flagged units' attribution per column


def _cost(sizes: Sizes, params: CriticalUnitsParams) -> Cost:
    """Exact: one forward pass (after the layer) per unit and mode over the audit's samples. Layers wider than the
    screen's threshold are screened together (one forward and backward pass per batch, and per flagged mode one
    forward pass of the source or of the ablated values, for the readers' inputs; one forward pass for the scanner's
    clean margins; the readers' check on a sample), then one
    forward pass per exactly checked unit (the global top-k, each layer's top and the calibration sample) and run
    mode. Ablations go in chunks of up to 8192 batch copies whose outputs stay within the scan's output bound."""
    n = sizes.n()
    all_modes = params.modes.split(",")
    flagged = all_modes if params.flag_on == "any" else [params.flag_on]
    pooled_modes = len(flagged if params.screened_modes == "flagged" else all_modes)
    batch = min(n, sizes.batch_size) or 1
    output_bytes = batch * VALUE_BYTES * max(1, sizes.output_values)  # one ablated copy's outputs
    copies = max(1, min(8192 // batch, MAX_OUTPUT_BYTES // output_bytes))
    screened = pooled(params, [layer.units for layer in sizes.hidden])
    wide = [layer.units for layer, s in zip(sizes.hidden, screened) if s]
    budget = min(sum(wide), params.screen_top_k + params.calibration)
    # (units ablated exactly, modes run) per layer; the pooled budget falls on screened layers by their share
    exact = [(min(layer.units, params.layer_top_k + budget * layer.units / sum(wide)), pooled_modes)
             if s else (layer.units, len(all_modes)) for layer, s in zip(sizes.hidden, screened)]
    calls = sizes.batches(n) * sum(modes * math.ceil(units / copies) for units, modes in exact)
    screen = Cost()
    if wide:  # the screen's forward and backward passes (1 + per further path point, one per layer), the source's
        # or the ablated values' pass per flagged mode (the readers' inputs), the scanner's clean margins (at most one
        # pass, before the layers and after each screened one), and finding and checking the readers on a sample
        steps = 1 + (params.screen_steps - 1) * len(wide) * len(flagged)
        screen = with_gradients(sizes, n, steps) + forwards(sizes, n, len(flagged)) + forwards(sizes, n) \
            + unit_split_check(sizes, min(n, sizes.batch_size, second_order.SITE_CHECK_SAMPLES))
        drops = graddrop.charged(params.screen_graddrop, [layer.kind for layer in sizes.hidden], screened,
                                 [layer.name for layer in sizes.hidden])  # AtP*'s GradDrop, when on
        if drops:  # the screen's gradient passes again per block (the
            # ablated values and sources are shared); held: a float per block, mode, unit and sample
            screen = screen + with_gradients(sizes, n, drops * steps) \
                + Cost(peak_bytes=drops * len(flagged) * sum(wide) * n * 4)
    return stats_pass(sizes) + screen + Cost(forward=n * (sum(units * modes for units, modes in exact) + 1),
                                             calls=calls,
                                             peak_bytes=min(copies, max((u for u, _ in exact), default=1)) * batch
                                             * sizes.activation_bytes)


COST = RuleCost(_cost)


@dataclass
class _Exact:
    """One layer's exact ablations: row ``j`` of every tensor is unit ``ids[j]``."""

    ids: list[int]
    drops: dict[str, torch.Tensor]  # per mode, (units,)
    class_drops: dict[str, torch.Tensor]  # per mode, (units, classes)
    corrects: dict[str, torch.Tensor]  # per mode, (units, samples)
    drop: torch.Tensor  # the largest over the flagged modes, (units,)
    class_drop: torch.Tensor  # the largest over the flagged modes, (units, classes)
    worst_class: torch.Tensor  # the largest over the judged classes of class_drop, (units,)
    margin_loss: torch.Tensor | None  # screened layers: the largest over the flagged modes of the mean loss of
    # label margin, (units,)


@register("critical_units", CriticalUnitsParams, needs=("layers", "labels", "logits", "predictions"), rule=RULE,
          evidence=CriticalUnitsEvidence, cost=COST)
def critical_units(context: AuditContext, rule) -> list[Measurement]:
    params: CriticalUnitsParams = rule.params
    modes = params.modes.split(",")
    if params.flag_on != "any" and params.flag_on not in modes:
        raise ValueError(f"flag_on = '{params.flag_on}' needs '{params.flag_on}' in modes = '{params.modes}'")
    indices = context.sample_indices()
    inputs, labels = context.data.inputs[indices], context.data.labels[indices]
    predictions = context.predictions[indices]
    layers = context.view.hidden_layers
    flagged = modes if params.flag_on == "any" else [params.flag_on]
    classes = labels.unique().tolist()
    judged = [c for c in classes if int((labels == c).sum()) >= params.min_class_samples]
    judged_columns = [classes.index(c) for c in judged]
    wide = [layer for layer, screened in zip(layers, pooled(params, [layer.size for layer in layers])) if screened]
    pooled_modes = flagged if params.screened_modes == "flagged" else modes  # one ablation per unit at real size
    replacements = _replacements(context, modes, inputs)
    pool = _screen(context, params, wide, inputs, labels, replacements, flagged, judged) if wide else None
    units = {layer.name: list(range(layer.size)) for layer in layers if layer not in wide}
    scanner = AblationScanner(context.view, layers, context.device, inputs[:2])

    def reduce(outputs: torch.Tensor, samples: slice) -> torch.Tensor:
        """(copies, samples, 2): the prediction and the label margin (the screen's continuous quantity)."""
        logits = context.logits(outputs).float()
        margins = atp.label_margin(logits.flatten(0, 1), labels[samples].to(logits.device).repeat(len(outputs)))
        return torch.stack([logits.argmax(-1).float(), margins.view(logits.shape[:2])], -1)

    def scan(chosen: dict[str, list[int]], run: list[str], ablations: dict | None = None) -> dict:
        return scanner.scan(inputs, {m: (ablations or replacements)[m] for m in run}, batch_size=context.batch_size,
                            units=chosen, reduce=reduce)
    scanned = {m: {} for m in modes}
    if any(units.values()):
        for mode, per_layer in scan(units, modes).items():
            scanned[mode].update(per_layer)
    clean_margins = pool.confirm(scan, pooled_modes, scanned, context.seed, inputs) if pool else {}
    if pool:
        units.update(pool.units())
    base_accuracy = float((predictions == labels).float().mean())
    base_class = {c: float((predictions[labels == c] == c).float().mean()) for c in classes}
    base_correct = (predictions == labels).float()
    exact: dict[str, _Exact] = {}
    for layer in layers:
        ids = units[layer.name]
        if not ids:
            continue
        run = pooled_modes if layer in wide else modes
        corrects = {m: (scanned[m][layer.name][..., 0].long() == labels).float() for m in run}  # (units, samples)
        margin_loss = torch.stack([clean_margins[layer.name].mean() - scanned[m][layer.name][..., 1].mean(dim=1)
                                   for m in flagged]).amax(dim=0) if layer.name in clean_margins else None
        drops = {m: base_accuracy - correct.mean(dim=1) for m, correct in corrects.items()}
        class_drops = {m: torch.stack([base_class[c] - correct[:, labels == c].mean(dim=1) for c in classes], 1)
                       for m, correct in corrects.items()}
        class_drop = torch.stack([class_drops[m] for m in flagged]).amax(dim=0)  # (checked units, classes)
        exact[layer.name] = _Exact(ids, drops, class_drops, corrects,
                                   torch.stack([drops[m] for m in flagged]).amax(dim=0), class_drop,
                                   class_drop[:, judged_columns].amax(dim=1) if judged_columns
                                   else torch.zeros(len(ids)), margin_loss)
    pooled_screen = pool.evidence(exact, pooled_modes, params, context.seed) if pool else None
    if pool:
        pooled_screen["graddrop"] = pool.graddrop
    findings = []
    for layer in layers:
        screen = pooled_screen if layer in wide else _exact_evidence(layer.size, params)
        if layer.name not in exact:
            findings.append(pool.unchecked_layer(layer, screen, params, base_accuracy, base_class, judged, context))
            continue
        result = exact[layer.name]
        ids, drops, class_drop, drop, worst_class = (result.ids, result.drops, result.class_drop, result.drop,
                                                     result.worst_class)
        flagged_correct = torch.stack([result.corrects[m] for m in flagged])  # (modes, checked units, samples)

        def interval(row: int | None = None, chosen: torch.Tensor | None = None) -> Interval | None:
            return _drop_interval(base_correct, flagged_correct, row, chosen, context.seed)
        ranked = drop.argsort(descending=True).tolist()
        table = [_row(layer, ids[j], j, drops, class_drop, classes, context) for j in ranked[:params.top_k]]
        critical = [j for j in ranked if drop[j] > params.max_accuracy_drop]
        class_critical = [j for j in worst_class.argsort(descending=True).tolist()
                          if worst_class[j] > params.max_class_accuracy_drop and j not in critical]
        for j in critical:
            unit = ids[j]
            findings.append(Measurement(
                f"{params.flag_on} ablation of {layer.address(unit)} alone drops accuracy by {float(drop[j]):.1%} "
                f"(from {base_accuracy:.1%})",
                location=Location.of_unit(layer.name, layer.unit_name(unit)),
                metric="accuracy_drop", value=float(drop[j]), threshold=params.max_accuracy_drop,
                evidence={**_unit_evidence(j, drops, class_drop, classes, context, base_accuracy), "screen": screen}
                | (unit_pictures(context, [layer.address(unit)]) if j in critical[:PICTURED_UNITS] else {}),
                interval=interval(j),
            ))
        for j in class_critical:
            unit = ids[j]
            column = int(class_drop[j, judged_columns].argmax())
            cls = judged[column]
            findings.append(Measurement(
                f"{params.flag_on} ablation of {layer.address(unit)} alone drops the accuracy of class "
                f"'{context.class_name(cls)}' by {float(worst_class[j]):.1%} (overall {float(drop[j]):.1%})",
                location=Location.of_unit(layer.name, layer.unit_name(unit)),
                metric="class_accuracy_drop", value=float(worst_class[j]),
                threshold=params.max_class_accuracy_drop,
                evidence={**_unit_evidence(j, drops, class_drop, classes, context, base_accuracy), "screen": screen},
                interval=interval(j, labels == cls),
            ))
        if critical or class_critical:
            continue
        evidence = {"base_accuracy": base_accuracy, "samples": len(indices), "top_units": table,
                    "largest_class_drop": float(worst_class.max()), "scan": scanner.method(layer), "screen": screen}
        if len(ids) == layer.size:
            findings.append(Measurement(
                f"no single unit of {layer.name} is critical (largest drop {float(drop.max()):.1%}; largest "
                f"drop for one class {float(worst_class.max()):.1%})",
                location=Location.of_layer(layer.name),
                metric="accuracy_drop", value=float(drop.max()), threshold=params.max_accuracy_drop,
                evidence=evidence, interval=interval()))
            continue
        findings.append(pool.partly_checked_layer(layer, drop, worst_class, evidence, interval(), params,
                                                  base_accuracy, base_class, judged, context))
    return findings


def is_screened(params: CriticalUnitsParams, units: int) -> bool:
    """Whether a layer of ``units`` units is too wide to be ablated exactly, unit by unit, in every mode."""
    return not params.exhaustive and units > atp.SCREEN_ABOVE


def pooled(params: CriticalUnitsParams, sizes: list[int]) -> list[bool]:
    """Per layer (of ``sizes`` units), whether it is screened, ranked with every other screened layer: each layer
    wider than the screen's threshold, and the narrow ones too when the audit has a wide layer and its narrow layers
    hold more than ``exact_narrow_units`` units in all (their exact ablation would outweigh the pooled budget)."""
    wide = [is_screened(params, units) for units in sizes]
    narrow = sum(units for units, screened in zip(sizes, wide) if not screened)
    return [True] * len(sizes) if any(wide) and narrow > params.exact_narrow_units else wide


def _unmeasured(base: float) -> Interval:
    """The interval of a drop no exact ablation measured: any accuracy after it, ``[base - 1, base]`` (certain);
    it straddles every threshold below ``base``, so the verdict reads uncertain and ``uncertain = "fail"`` fails a
    pass that rests on the screen's prediction."""
    return Interval(base - 1.0, base, "unmeasured: the screen predicts this drop, no exact ablation measured it",
                    level=1.0)


@dataclass
class _Pool:
    """The screened layers: every unit of every layer wider than the screen's threshold scored together (index
    ``offsets[layer] + unit``) and the :class:`~mechaudit.techniques.atp.Selection` ablated exactly."""

    layers: list[Layer]
    offsets: dict[str, int]
    scores: torch.Tensor  # the predicted accuracy drop per unit
    class_scores: torch.Tensor  # the predicted accuracy drop per unit and judged class, (units, judged classes)
    ranking: torch.Tensor  # what ranks the units: the larger of both predicted drops, each over its threshold
    selection: atp.Selection
    margin_scores: torch.Tensor  # the predicted mean loss of label margin per unit (the screen's estimate)
    cut: bool = False  # whether the time budget stopped the exact ablations before the whole selection
    planned: atp.Selection | None = None  # the selection before the time budget's cut (None: not confirmed yet)
    graddrop: dict | None = None  # whether and how AtP*'s GradDrop scored the units (techniques.graddrop)
    sites: dict | None = None  # the layers moved at their readers' inputs, and why the screen fell back if it did

    def confirm(self, scan: Callable[..., dict], modes: list[str], scanned: dict, seed: int,
                inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Ablate the selection exactly in ``modes``, the most important first, while the rule's time budget allows
        (:func:`~.screen_confirm.confirm_selection`): the top-ranked (the screen's top-k, then each layer's best) by
        rank, then the calibration sample in a seeded random order (so a cut keeps a random sample).
        :attr:`selection` keeps those that ran; their rows go to ``scanned[mode][layer]``, in each layer's ascending
        unit order. Returns, per layer with units ablated, the clean label margin per sample from the scanner's own
        passes for that layer, measured with the layer's first chunk (so its time counts in the budget): the chunk's
        first unit of it replaced by its own activation (resample ablation from the audited inputs themselves), so an
        ablation that changes nothing loses exactly 0 margin, where the clean forward pass of the audit would differ
        from the scanner's cut by float noise and break exact ties. One chunk of one copy per layer and batch."""
        rows: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        clean: dict[str, torch.Tensor] = {}

        def run(chunk: list[int]) -> None:
            chosen = self._by_layer(chunk)
            for mode, per_layer in scan(chosen, modes).items():
                for name, values in per_layer.items():
                    for row, unit in enumerate(chosen[name]):
                        rows.setdefault((name, unit), {})[mode] = values[row]
            new = {name: ids[:1] for name, ids in chosen.items() if ids and name not in clean}
            if new:
                same = scan(new, ["clean"], {"clean": (None, inputs)})["clean"]
                clean.update({name: margins[0, :, 1] for name, margins in same.items()})
        planned = self.planned = self.selection
        ranked = sorted(set(planned.top) | set(planned.extra), key=lambda i: (-float(self.ranking[i]), i))
        self.selection = confirm_selection(planned, run, "exact ablations", seed, ranked, self._costs)
        self.cut = len(self.selection.checked) < len(planned.checked)
        for name, ids in self.units().items():
            if ids:
                for mode in modes:
                    scanned[mode][name] = torch.stack([rows[(name, unit)][mode] for unit in ids])
        return clean

    def _costs(self, order: list[int]) -> list[float]:
        """The relative cost of ablating each unit of ``order`` exactly, in that order: 2 passes for a layer's
        first one (its clean margins too), else 1."""
        seen: set[str] = set()
        costs = []
        for index in order:
            name = self._layer_of(index).name
            costs.append(1.0 if name in seen else 2.0)
            seen.add(name)
        return costs

    def units(self) -> dict[str, list[int]]:
        """Per layer, its units ablated exactly (ascending)."""
        return self._by_layer(self.selection.checked)

    def _by_layer(self, indices: list[int]) -> dict[str, list[int]]:
        """Per layer, the units of ``indices`` (pooled indices) in it, ascending."""
        chosen: dict[str, list[int]] = {layer.name: [] for layer in self.layers}
        for index in sorted(indices):
            layer = self._layer_of(index)
            chosen[layer.name].append(index - self.offsets[layer.name])
        return chosen

    def _layer_of(self, index: int) -> Layer:
        return self.layers[bisect_right([self.offsets[layer.name] for layer in self.layers], index) - 1]

    def _name(self, index: int) -> str:
        layer = self._layer_of(index)
        return layer.address(index - self.offsets[layer.name])

    def unchecked(self, layer: Layer) -> dict:
        """The screen's largest predicted drops (overall, and for one judged class) among ``layer``'s units not
        ablated exactly, and whether the layer's top-ranked unit was."""
        start = self.offsets[layer.name]
        checked = set(self.selection.checked)
        rest = [i for i in range(start, start + layer.size) if i not in checked]
        top = start + int(self.ranking[start:start + layer.size].argmax())
        found: dict = {"units": len(rest), "top_ranked_checked": top in checked}
        if rest:
            index = torch.tensor(rest)
            overall = int(index[self.scores[index].argmax()])
            found.update({"largest_predicted_drop": float(self.scores[overall]), "unit": self._name(overall)})
            if self.class_scores.shape[1]:
                per_class = self.class_scores[index]
                row, column = divmod(int(per_class.argmax()), per_class.shape[1])
                found.update({"largest_predicted_class_drop": float(per_class[row, column]),
                              "class_unit": self._name(rest[row]), "class_column": column})
        return found

    def _predicted(self, layer: Layer, found: dict, params: CriticalUnitsParams, base_accuracy: float,
                   base_class: dict, judged: list[int], context: AuditContext, evidence: dict, checked: str
                   ) -> Measurement | None:
        """A failing finding when an unchecked unit's predicted drop, overall or for one class, exceeds its
        threshold (the larger relative to its threshold); None when neither does."""
        overall = found.get("largest_predicted_drop", 0.0)
        class_drop = found.get("largest_predicted_class_drop", 0.0)
        evidence = {**evidence, "unchecked_predicted": {k: v for k, v in found.items() if k != "class_column"}}
        over_overall = overall > params.max_accuracy_drop
        over_class = class_drop > params.max_class_accuracy_drop
        if over_class and (not over_overall or class_drop / params.max_class_accuracy_drop
                           > overall / max(params.max_accuracy_drop, 1e-12)):
            cls = judged[found["class_column"]]
            return Measurement(
                f"the screen predicts that ablating {found['class_unit']} drops the accuracy of class "
                f"'{context.class_name(cls)}' by {class_drop:.1%}, and it was not ablated exactly{checked}",
                location=Location.of_layer(layer.name), metric="predicted_class_accuracy_drop", value=class_drop,
                threshold=params.max_class_accuracy_drop, evidence=evidence, interval=_unmeasured(base_class[cls]))
        if over_overall:
            return Measurement(
                f"the screen predicts that ablating {found['unit']} drops accuracy by {overall:.1%}, and it was not "
                f"ablated exactly{checked}", location=Location.of_layer(layer.name),
                metric="predicted_accuracy_drop", value=overall, threshold=params.max_accuracy_drop,
                evidence=evidence, interval=_unmeasured(base_accuracy))
        return None

    def cut_in(self, layer: Layer) -> bool:
        """Whether the time budget left out a unit of ``layer`` that the selection planned to ablate exactly."""
        if not self.cut or self.planned is None:
            return False
        start = self.offsets[layer.name]
        ran = set(self.selection.checked)
        return any(start <= i < start + layer.size and i not in ran for i in self.planned.checked)

    def unchecked_layer(self, layer: Layer, screen: dict, params: CriticalUnitsParams, base_accuracy: float,
                        base_class: dict, judged: list[int], context: AuditContext) -> Measurement:
        """The finding of a layer none of whose units was ablated exactly (``layer_top_k = 0``, or the time budget
        ran out first): judged on the screen's predictions, overall and per class, and never certain (see
        :func:`_unmeasured`)."""
        found = self.unchecked(layer)
        cut = self.cut_in(layer)
        checked = " (none of this layer's units was" + (": the time budget ran out first)" if cut else ")")
        failing = self._predicted(layer, found, params, base_accuracy, base_class, judged, context,
                                  {"screen": screen}, checked)
        if failing:
            return failing
        overall = found.get("largest_predicted_drop", 0.0)
        return Measurement(
            f"no unit of {layer.name} was ablated exactly "
            f"({'the time budget ran out first' if cut else 'layer_top_k = 0'}): its largest predicted drop is "
            f"{overall:.1%} (for one class {found.get('largest_predicted_class_drop', 0.0):.1%}), a prediction, "
            "not a measurement", location=Location.of_layer(layer.name), metric="predicted_accuracy_drop",
            value=overall, threshold=params.max_accuracy_drop,
            evidence={"screen": screen, "unchecked_predicted": {k: v for k, v in found.items()
                                                                 if k != "class_column"}},
            interval=_unmeasured(base_accuracy))

    def partly_checked_layer(self, layer: Layer, drop: torch.Tensor, worst_class: torch.Tensor, evidence: dict,
                             interval: Interval | None, params: CriticalUnitsParams, base_accuracy: float,
                             base_class: dict, judged: list[int], context: AuditContext) -> Measurement:
        """The finding of a layer some of whose units were ablated exactly, none critical: it fails on an
        unchecked unit's predicted drop over a threshold, and its pass is uncertain (:func:`_unmeasured`) unless the
        layer's top-ranked unit was among those ablated exactly."""
        found = self.unchecked(layer)
        checked = f" (of this layer's units, {layer.size - found['units']} were)"
        failing = self._predicted(layer, found, params, base_accuracy, base_class, judged, context, evidence,
                                  checked)
        if failing:
            return failing
        return Measurement(
            f"no single unit of {layer.name} of the {layer.size - found['units']} ablated exactly after the screen "
            f"is critical (largest drop {float(drop.max()):.1%}; largest drop for one class "
            f"{float(worst_class.max()):.1%}; largest predicted drop of the others "
            f"{found.get('largest_predicted_drop', 0.0):.1%})",
            location=Location.of_layer(layer.name), metric="accuracy_drop", value=float(drop.max()),
            threshold=params.max_accuracy_drop,
            evidence={**evidence, "unchecked_predicted": {k: v for k, v in found.items() if k != "class_column"}},
            interval=interval if found["top_ranked_checked"] else _unmeasured(base_accuracy))

    def evidence(self, exact: dict[str, _Exact], modes: list[str], params: CriticalUnitsParams, seed: int) -> dict:
        """The ``screen`` evidence every screened layer's finding carries: the pooled screen and its measured
        agreement; the 'may have missed' bound counts units over either threshold (overall or one class)."""
        overall: dict[int, float] = {}
        worst: dict[int, float] = {}
        margin_loss: dict[int, float] = {}
        for layer in self.layers:
            if layer.name in exact:
                result = exact[layer.name]
                for j, unit in enumerate(result.ids):
                    overall[self.offsets[layer.name] + unit] = float(result.drop[j])
                    worst[self.offsets[layer.name] + unit] = float(result.worst_class[j])
                    margin_loss[self.offsets[layer.name] + unit] = float(result.margin_loss[j])
        names = {index: self._name(index) for index in self.selection.checked}
        over = {i: overall[i] > params.max_accuracy_drop or worst[i] > params.max_class_accuracy_drop
                for i in overall}
        steps = params.screen_steps
        sites = self.sites or {"at_readers_input": [], "fallback": None}
        where = (f"{len(sites['at_readers_input'])} layer(s) at their reader's input, the others at their output"
                 + (" (fell back to the outputs: the readers' inputs failed)" if sites["fallback"] else ""))
        found = atp.report(self.selection, self.scores, overall, names, "attribution patching (AtP*): predicted "
                           f"accuracy drop (overall and per class) from margin changes integrated over {steps} "
                           "point(s) of the path to the ablated value (the first the clean activation; each other "
                           "one forward and one backward pass per layer and batch; "
                           f"{where}), every unit of every screened "
                           "layer ranked together by the larger of its predicted drops, each over its threshold",
                           threshold=params.max_accuracy_drop, over=over)
        missed = dict(found.missed)
        if self.selection.calibration:
            missed["largest_calibration_class_effect"] = max(worst[i] for i in self.selection.calibration)
        checked = self.selection.checked
        # the margin screen's top-k among the units checked exactly (its own top-k outside them has no exact value)
        by_margin = sorted(checked, key=lambda i: -float(self.margin_scores[i]))[:len(self.selection.top)]
        agreement = {
            "accuracy_drop": ablation_screen.agreement([float(self.scores[i]) for i in checked],
                                                       [overall[i] for i in checked], seed),
            "margin_loss": {**ablation_screen.agreement([float(self.margin_scores[i]) for i in checked],
                                                        [margin_loss[i] for i in checked], seed),
                            "top_k_recall": atp.top_k_recall(by_margin, margin_loss)
                            if self.selection.calibration else None}}  # as the drop's: no recall without calibration
        return {**found.to_evidence(), "missed": missed, "screen_top_k": params.screen_top_k,
                "screen_top_checked": len(self.selection.top),
                "layer_top": len(self.selection.extra), "exact_modes": list(modes), "agreement": agreement,
                "sites": sites}


_MEMORY = (torch.cuda.OutOfMemoryError, MemoryError)
_READERS_FAILED = (site_ablation.SiteNotRun, RuntimeError, ValueError, IndexError)
"""What moving units at their readers' inputs may raise where a reader does not run or reads in a way the hooks do
not expect (a torch op's error is a RuntimeError); the screen then moves them at their outputs. Memory errors
(:data:`_MEMORY`, a RuntimeError for CUDA) are not among them: the engine retries the rule with half the batch."""


def _screen(context: AuditContext, params: CriticalUnitsParams, layers: list[Layer], inputs: torch.Tensor,
            labels: torch.Tensor, replacements: dict, flagged: list[str], judged: list[int]) -> _Pool:
    """Every unit of every screened layer scored by the screen (its predicted accuracy drop, overall and per
    judged class, the largest over the flagged modes) and ranked together by the larger of both drops, each over its
    threshold: the ``screen_top_k`` best overall, each layer's ``layer_top_k`` best and a seeded random
    ``calibration`` sample of the others are ablated exactly."""
    def margin(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return atp.label_margin(context.logits(outputs), targets)
    sites = second_order.patch_sites(context.view, layers, inputs, None, context.batch_size, context.device,
                                     rule="L202: the screen")  # units read after their nonlinearity: moved there
    modes = {m: replacements[m] for m in flagged}
    fallback = ""
    measured: list[torch.Tensor] = []  # the clean margins, from the screen's own forward passes

    def screen() -> tuple:
        measured.clear()
        return graddrop.site_screen(params.screen_graddrop, context.view, layers, inputs, labels, margin, modes,
                                    sites, params.screen_steps, context.batch_size, context.device, measured)
    began = deadline.clock()
    try:
        estimates, dropped, dropped_evidence = screen()
    except _MEMORY:
        raise  # the engine retries the rule with half the batch
    except _READERS_FAILED as error:  # the readers' inputs are optional: every unit at its output
        budget = deadline.current()
        left = None if budget is None else budget.left()
        if not sites or (left is not None and left < (deadline.clock() - began) * deadline.SAFETY):
            raise  # no readers to leave out, or no time to screen again
        fallback = f"moving units at their readers' inputs failed ({type(error).__name__}: {error}); at the outputs"
        _LOG.warning("L202: the screen %s", fallback)
        sites = {}
        estimates, dropped, dropped_evidence = screen()
    margins = torch.cat(measured)
    masks = [labels.cpu() == c for c in judged]
    offsets, scores, class_scores, rankings, best, total = {}, [], [], [], [], 0
    margin_scores = []
    for layer in layers:
        per_mode = [estimates[m][layer.name] for m in flagged]
        margin_scores.append(torch.stack([-e.mean(dim=1) for e in per_mode]).amax(dim=0))
        layer_scores = torch.stack([graddrop.ranked(dropped, m, layer, e, lambda t: atp.predicted_accuracy_drop(
            t, margins)) for m, e in zip(flagged, per_mode)]).amax(dim=0)
        per_class = torch.stack([torch.stack([graddrop.ranked(dropped, m, layer, e, lambda t, k=mask:
                                                              atp.predicted_accuracy_drop(t[:, k], margins[k]))
                                              for m, e in zip(flagged, per_mode)]).amax(dim=0) for mask in masks], 1) \
            if masks else torch.zeros(layer.size, 0)
        ranking = layer_scores / max(params.max_accuracy_drop, 1e-12)
        if masks:
            ranking = torch.maximum(ranking, per_class.amax(dim=1) / max(params.max_class_accuracy_drop, 1e-12))
        offsets[layer.name] = total
        best += [total + u for u in ranking.argsort(descending=True, stable=True)[:params.layer_top_k].tolist()]
        scores.append(layer_scores)
        class_scores.append(per_class)
        rankings.append(ranking)
        total += layer.size
    ranking = torch.cat(rankings)
    return _Pool(layers, offsets, torch.cat(scores), torch.cat(class_scores), ranking,
                 atp.select(ranking, params.screen_top_k, params.calibration, context.seed, also=best),
                 torch.cat(margin_scores), graddrop=dropped_evidence,
                 sites={"at_readers_input": sorted(sites), "fallback": fallback or None})


def _exact_evidence(units: int, params: CriticalUnitsParams) -> dict:
    """The ``screen`` evidence of a layer of ``units`` units, all ablated exactly (not screened)."""
    why = "exhaustive = true" if params.exhaustive else f"at most {atp.SCREEN_ABOVE} units"
    return {"method": f"exact ablation of every unit ({why})", "scored": units, "checked_exactly": units,
            "calibration": 0}


def _drop_interval(base_correct: torch.Tensor, correct: torch.Tensor, unit: int | None, chosen: torch.Tensor | None,
                   seed: int) -> Interval | None:
    """Bootstrap interval over the samples (those ``chosen``, e.g. one class) of a unit's accuracy drop, the largest
    over the flagged modes (``correct``: ``(modes, units, samples)``); for ``unit=None`` the layer's largest drop."""
    if chosen is not None:
        base_correct, correct = base_correct[chosen], correct[:, :, chosen]
    if unit is not None:
        correct = correct[:, unit:unit + 1]

    def largest_drop(indices: np.ndarray) -> float:
        picked = torch.from_numpy(indices)
        return float((base_correct[picked].mean() - correct[:, :, picked].mean(-1)).max())

    return bootstrap(largest_drop, len(base_correct), seed=seed, resamples=200)


def _replacements(context: AuditContext, modes: list[str], inputs: torch.Tensor) -> dict:
    """Per mode, ``(values per layer, source)``: zeros, the per-position means over the audit data, or (resample)
    each sample's units taken from another audit sample, drawn by a seeded derangement."""
    means = {name: stats.mean_map.float() for name, stats in context.unit_stats.items()}
    table = {}
    if "zero" in modes:
        table["zero"] = ({name: torch.zeros_like(mean) for name, mean in means.items()}, None)
    if "mean" in modes:
        table["mean"] = (means, None)
    if "resample" in modes:
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(context.seed))
        partner = torch.empty_like(order)
        partner[order] = order.roll(1)  # each sample takes another sample's activations
        table["resample"] = (None, inputs[partner])
    return table


def _row(layer, unit: int, row: int, drops: dict, class_drop: torch.Tensor, classes: list[int], context) -> dict:
    """One line of the top-units table: ``unit`` of ``layer``, whose exact drops are row ``row``."""
    worst = int(class_drop[row].argmax())
    return {"unit": layer.address(unit), **{f"{m}_drop": float(d[row]) for m, d in drops.items()},
            "most_affected_class": context.class_name(classes[worst]),
            "class_drop": float(class_drop[row, worst])}


def _unit_evidence(row: int, drops: dict, class_drop: torch.Tensor, classes: list[int], context,
                   base_accuracy: float) -> dict:
    return {"base_accuracy": base_accuracy, **{f"{m}_drop": float(d[row]) for m, d in drops.items()},
            "per_class": [{"class": context.class_name(c), "accuracy_drop": float(class_drop[row, i])}
                          for i, c in enumerate(classes)]}
