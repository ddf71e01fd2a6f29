"""Screen with gradients, confirm exactly (AtP*: Kramár, Lieberum, Shah, Nanda 2024).

A rule that ranks many components by an intervention (ablation, patching) scores *every* component with the
intervention's first-order estimate, attribution patching: ``(a_new - a) . dm/da`` from one forward and one
backward pass per batch (Nanda 2023), and runs the exact intervention only on the screen's ``top_k`` plus a seeded
random calibration sample of the rest. The calibration sample measures how well screen and exact agree (Spearman,
recall of the exact top-k) and bounds what the screen may have missed (:func:`missed_effect`).

Which of AtP*'s fixes apply here:

* *Attention saturation (the QK fix).* AtP* recomputes the attention softmax exactly when a head's queries or
  keys are patched. mechaudit's head components are head *outputs* (the input of the output projection), which
  reach the model's output linearly up to later layers: the saturated softmax of the patched head itself is not
  on the first-order path, so the QK fix has nothing to correct. Saturation in *later* heads, and any other
  non-linearity (a ReLU a replacement switches on), is what the exact confirmation and the calibration catch.
* *Cancellation (GradDrop).* AtP* drops one layer's gradient at a time so that effects through different paths
  cannot cancel in the sum: :mod:`.graddrop` (L202 and L207, ``screen_graddrop``; how blocks are found from the
  audited layers alone, what it costs and what it measures are there). The sum that cancels across samples is
  kept apart anyway: :func:`ablation_estimates` keeps the estimate per sample, and a rule aggregates per sample
  (L202 counts predicted flips; R304 averages the absolute per-sample change, as its exact loss does). A
  stationary metric (MiniLM's L207 similarity, at its maximum on the corrupted run) has no first-order term
  whatever the paths; L207 screens it to second order (:mod:`.second_order`). The calibration sample states
  what cancellation (or any other failure) would have hidden.
* *Non-linearity along the intervention (integrated gradients).* L207 and R304 average the gradient over
  ``screen_steps`` points of the straight path to the intervention (:mod:`.path_attribution`, EAP-IG), every
  component moved at once; ``benchmarks/screen_steps.py`` measures agreement by steps.
* *A unit's own nonlinearity.* A unit audited before its ReLU or GELU (a Linear or Conv output) is moved, where its
  reader reads it one by one after the nonlinearity, at that reader's input (:func:`.second_order.patch_sites`):
  the move there is the exact change of what the reader reads, where the gradient at the unit's output takes the
  nonlinearity's slope at the clean value (0 for a ReLU unit that is off, however far the ablation switches it on).
  L202's screen (:mod:`.site_ablation`; on `digits` Spearman 0.948 to 0.984, recall of the exact top 10 0.8 to
  0.9) and L207's second-order screen do; :func:`ablation_estimates` itself moves every unit at its output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from scipy.stats import beta, spearmanr

from ..activations import batches, hooked
from ..model_view import Layer, ModelView, installed, units_view

SCREEN_ABOVE = 256
"""A rule screens a set of components only when it holds more than this many (L207, L208 and R304: all audited
components; L202: each layer, every layer wider than this ranked together); at or below it the exact intervention
runs on every component, so the embedded examples (at most 56 units per layer, 72 heads in all) keep their exact
verdicts."""

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``metric(outputs, targets) -> (samples,)``, differentiable in the outputs."""


def activations_and_gradients(view: ModelView, layers: list[Layer], inputs: torch.Tensor, targets: torch.Tensor,
                              metric: Metric, values: list[torch.Tensor] | None = None
                              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each layer's activation on ``inputs`` and the gradient of the summed metric with respect to it (samples
    are independent in an evaluated model, so a sample's gradient is that of its own metric). A model with frozen
    parameters still gets gradients: an activation that does not require one is made a leaf that does. The model
    goes on with a copy, so an in-place operation after the layer (``nn.ReLU(inplace=True)``) neither changes the
    kept activation nor modifies the leaf. ``values``, when given, receives the metric per sample (on the CPU)."""
    kept: dict[str, torch.Tensor] = {}

    def keep(output: torch.Tensor, name: str) -> torch.Tensor:
        kept[name] = output if output.requires_grad else output.detach().requires_grad_(True)
        if kept[name] is output:
            output.retain_grad()
        return kept[name].clone()
    with installed(view.hook(layer, lambda output, _args, name=layer.name: keep(output, name)) for layer in layers), \
            torch.enable_grad():
        start = inputs.clone().requires_grad_(inputs.is_floating_point())
        measured = metric(view.model(start).float(), targets)
        if values is not None:
            values.append(measured.detach().cpu())
        measured.sum().backward()
    view.model.zero_grad(set_to_none=True)
    outputs = {name: value.detach() for name, value in kept.items()}
    grads = {name: value.grad if value.grad is not None else torch.zeros_like(value) for name, value in kept.items()}
    return outputs, grads


def ablation_estimates(view: ModelView, layers: list[Layer], inputs: torch.Tensor, targets: torch.Tensor,
                       metric: Metric, modes: dict[str, tuple], batch_size: int = 256,
                       device: torch.device | None = None, metric_values: list[torch.Tensor] | None = None
                       ) -> dict[str, dict[str, torch.Tensor]]:
    """First-order change of ``metric`` per sample when each unit alone is ablated: ``{mode: {layer: (units,
    samples)}}``. ``modes`` as for :meth:`~.ablation_scan.AblationScanner.scan`: ``(values, source)`` with
    ``values`` {layer: (units, positions)} (zero, mean ablation) or ``source`` inputs (resample ablation).
    ``metric_values``, when given, receives each batch's metric per sample (from the same forward pass)."""
    device = device or torch.device("cpu")
    parts: dict[str, dict[str, list[torch.Tensor]]] = {m: {layer.name: [] for layer in layers} for m in modes}
    for start, batch in batches(inputs, batch_size, device):
        stop = start + len(batch)
        clean, grads = activations_and_gradients(view, layers, batch, targets[start:stop].to(device), metric,
                                                 metric_values)
        for mode, (values, source) in modes.items():
            replaced = (_recorded(view, layers, source[start:stop].to(device)) if source is not None else None)
            for layer in layers:
                act, grad = units_view(clean[layer.name], layer), units_view(grads[layer.name], layer)
                new = (units_view(replaced[layer.name], layer) if replaced is not None
                       else values[layer.name].to(act.device, act.dtype).unsqueeze(0))
                parts[mode][layer.name].append(((new.float() - act.float()) * grad.float()).sum(-1).T.cpu())
    return {m: {name: torch.cat(p, dim=1) for name, p in per_layer.items()} for m, per_layer in parts.items()}


def _recorded(view: ModelView, layers: list[Layer], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}

    def keep(layer: Layer, output: torch.Tensor) -> None:
        seen[layer.name] = output.clone()  # a copy: an in-place operation after the layer must not change it
    with torch.no_grad(), hooked(view, layers, keep):
        view.model(inputs)
    return seen


def label_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample, the label's logit minus the largest other logit (> 0 where the prediction is right)."""
    right = logits.gather(-1, labels.view(-1, 1)).squeeze(-1)
    other = logits.scatter(-1, labels.view(-1, 1), float("-inf")).amax(-1)
    return right - other


ESTIMATE_ERROR = 0.15
"""The relative error assumed of a first-order margin change in :func:`predicted_accuracy_drop` (measured with
``benchmarks/atp_screen.py``: 0.1-0.35 rank alike on `digits`; smaller values sharpen the flip towards a step)."""


def predicted_accuracy_drop(estimate: torch.Tensor, margins: torch.Tensor,
                            relative_error: float = ESTIMATE_ERROR) -> torch.Tensor:
    """The screen's accuracy drop per unit from first-order margin changes ``estimate`` (units, samples) and the
    clean margins (label logit minus the best other logit; > 0 where the prediction is right): per sample the
    probability that the new margin ``m + estimate`` is still positive when the estimate is off by a normal error of
    ``relative_error`` times its size, so the accuracy after the ablation is the mean of ``Phi((m + e) / (r |e|))``
    (a step at 0 where the estimate is 0). Per sample, so changes of opposite sign on different samples cannot
    cancel; smooth, so units that flip no sample yet are still ranked by how close they bring samples to flipping."""
    base = (margins > 0).float().mean()
    new = margins.unsqueeze(0) + estimate
    spread = relative_error * estimate.abs() + 1e-6 * margins.abs().clamp(min=1e-6).unsqueeze(0)
    return base - torch.special.ndtr(new / spread).mean(dim=1)


@dataclass
class Selection:
    """Which components (indices into the scored list) are checked exactly, and why."""

    top: list[int]
    calibration: list[int]
    scored: int
    extra: list[int] = field(default_factory=list)
    """Checked besides the screen's top-k and the calibration sample (L202: each layer's best-ranked units)."""

    @property
    def checked(self) -> list[int]:
        return sorted(set(self.top) | set(self.calibration) | set(self.extra))

    @property
    def unchecked(self) -> int:
        return self.scored - len(self.checked)


def select(scores: torch.Tensor, top_k: int, calibration: int, seed: int, also: Sequence[int] = ()) -> Selection:
    """The ``top_k`` highest ``scores``, the indices ``also`` (kept as :attr:`Selection.extra` where not in the
    top) and a seeded random sample of ``calibration`` of the others."""
    order = scores.argsort(descending=True, stable=True).tolist()
    top = order[:top_k]
    extra = sorted(set(also) - set(top))
    skipped = set(extra)
    rest = [i for i in order[top_k:] if i not in skipped]
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(rest), generator=generator)[:calibration].tolist() if rest else []
    return Selection(top, sorted(rest[i] for i in picked), len(scores), extra)


def everything(count: int) -> Selection:
    """The exhaustive case: every component checked exactly, no calibration needed."""
    return Selection(list(range(count)), [], count)


@dataclass
class ScreenReport:
    """What a finding's evidence says about how its components were chosen (``evidence["screen"]``)."""

    method: str
    scored: int
    checked: list[str]
    calibration: int
    spearman: float | None
    top_k_recall: float | None
    missed: dict = field(default_factory=dict)
    top_k_recall_at_kth: float | None = None
    spearman_interval: list[float] | None = None
    """95% percentile bootstrap over the checked components (:func:`_spearman_interval`)."""

    def to_evidence(self) -> dict:
        return {"method": self.method, "scored": self.scored, "checked_exactly": len(self.checked),
                "checked": self.checked, "calibration": self.calibration, "spearman": self.spearman,
                "spearman_interval": self.spearman_interval,
                "top_k_recall": self.top_k_recall, "top_k_recall_at_kth": self.top_k_recall_at_kth,
                "missed": self.missed}


def report(selection: Selection, screen: torch.Tensor, exact: dict[int, float],
           names: Sequence[str] | Mapping[int, str], method: str, threshold: float | None = None,
           confidence: float = 0.95, over: Mapping[int, bool] | None = None) -> ScreenReport:
    """Agreement of the screen ``screen`` (all scored components) and the exact effects ``exact`` {index: effect}
    of the checked ones: Spearman over the checked set, the recall of its exact top-k by the screen's top-k
    (:func:`top_k_recall`, and :func:`top_k_recall_at_kth`), and :func:`missed_effect` from the calibration
    sample. ``names`` needs only the checked indices. ``over`` {index: exceeds}, when given, says which checked
    components exceed a threshold where one effect does not tell (e.g. an overall or a per-class threshold)."""
    checked = selection.checked
    screened = [float(screen[i]) for i in checked]
    measured = [exact[i] for i in checked]
    varied = len(checked) > 2 and len(set(screened)) > 1 and len(set(measured)) > 1
    rho = float(spearmanr(screened, measured).correlation) if varied else None
    recall = top_k_recall(selection.top, exact) if selection.calibration else None
    at_kth = top_k_recall_at_kth(selection.top, exact) if selection.calibration else None
    missed = missed_effect([exact[i] for i in selection.calibration], selection.unchecked, threshold, confidence,
                           None if over is None else [over[i] for i in selection.calibration])
    return ScreenReport(method, selection.scored, [names[i] for i in checked], len(selection.calibration), rho,
                        recall, missed, at_kth, _spearman_interval(screened, measured) if varied else None)


def _spearman_interval(screen: list[float], exact: list[float]) -> list[float] | None:
    """The 95% percentile-bootstrap interval of Spearman over the checked components (:func:`.ablation_screen.
    agreement`): on a default screen's 26 components an agreement near 0.9 reads about 0.8-0.99 (MiniLM's R304)."""
    from .ablation_screen import agreement

    return agreement(screen, exact)["spearman_interval"]


def top_k_recall(top: list[int], exact: dict[int, float]) -> float | None:
    """Recall of the exact top-k by the screen's ``top`` (k = ``len(top)``): the overlap of ``top`` with one exact
    top-k set, ties at the k-th exact value resolved for the screen (each place of the exact top-k counts once, so
    a screen that misses a unit strictly above the k-th value loses that place however many of its picks tie)."""
    chosen, k = set(top), len(top)
    if not k:
        return None
    best = sorted(exact, key=lambda i: (-exact[i], i not in chosen))[:k]
    return sum(i in chosen for i in best) / k


def top_k_recall_at_kth(top: list[int], exact: dict[int, float]) -> float | None:
    """The lenient variant: the share of the screen's picks whose exact effect equals or exceeds the k-th largest
    exact effect (up to float rounding). Every pick tied with the k-th value counts, even where more of them tie
    than places are left; so it is 1 whenever the k-th value is the smallest one (e.g. fewer than k units drop
    accuracy at all), and it is only read beside :func:`top_k_recall`."""
    k = len(top)
    if not k or not exact:
        return None
    kth = sorted(exact.values(), reverse=True)[min(k, len(exact)) - 1]
    return sum(exact[i] >= kth - 1e-9 * max(1.0, abs(kth)) for i in top) / k


def missed_effect(calibration: list[float], unchecked: int, threshold: float | None,
                  confidence: float = 0.95, exceeded: list[bool] | None = None) -> dict:
    """What the screen may have missed, from the exact effects of a random calibration sample of the components
    outside its top-k: the largest of them, and (given a ``threshold``) a one-sided Clopper-Pearson bound at
    ``confidence`` on how many of the ``unchecked`` components exceed it (with none over it in a sample of c, the
    bound is ``1 - (1 - confidence) ** (1 / c)`` of them, about 3/c: the rule of three). ``exceeded``, when given,
    says per calibration component whether it exceeds (instead of ``value > threshold``)."""
    if not calibration:
        return {"unchecked": unchecked}
    over = (sum(exceeded) if exceeded is not None
            else sum(value > threshold for value in calibration) if threshold is not None else None)
    result = {"largest_calibration_effect": max(calibration), "unchecked": unchecked}
    if over is not None:
        c = len(calibration)
        share = 1.0 if over == c else float(beta.ppf(confidence, over + 1, c - over))
        result.update({"calibration_over_threshold": int(over), "confidence": confidence,
                       "unchecked_over_threshold_at_most": int(math.ceil(share * unchecked))})
    return result
