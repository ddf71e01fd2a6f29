"""Activation patching and attribution patching of components between counterfactual pairs.

For pairs of inputs (clean, corrupted) and a per-pair metric ``m(outputs, targets)`` (a logit difference, a target
logit), each component (a unit, a channel, an attention head) is *patched*: its activation on the clean input is
written into the corrupted run (Vig et al. 2020; Meng et al. 2022). Its effect is the change of the metric summed
over the pairs, ``sum m(patched) - sum m(corrupted)``; divided by the total, ``sum m(clean) - sum m(corrupted)``,
it is the fraction of the behaviour the component recovers on its own.

* :func:`exact_patching`: one patched run per component, computed by the fast ablation scan (patching is
  resample ablation of the corrupted inputs with the clean inputs as the source).
* :func:`attribution_patching`: every component at once from the forward and backward passes of the two runs
  (Nanda 2023; Syed et al. 2023): the first-order estimate ``(a_clean - a_corrupted) . dm/da``, with the gradient
  averaged over the corrupted and the clean run, summed over the component's positions and the pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..activations import batches
from ..model_view import Layer, ModelView
from .ablation_scan import AblationScanner
from .path_attribution import path_estimates
from .second_order import first_order_terms

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``metric(outputs, targets) -> (pairs,)``, e.g. :func:`~.circuits.logit_difference`."""


@dataclass
class PatchingTotals:
    """The metric summed over the pairs on the clean and on the corrupted inputs."""

    clean: float
    corrupted: float
    pairs: int
    #: The metric per pair on the clean and on the corrupted inputs (for the behaviour presence test).
    per_pair: tuple[torch.Tensor, torch.Tensor] | None = None
    #: The first-order prediction of each pair's change from the corrupted run's outputs, ``g . (y_clean -
    #: y_corrupted)`` (``g`` the metric's gradient in the output): what a first-order screen can see at all.
    first_order: torch.Tensor | None = None

    @property
    def effect(self) -> float:
        return self.clean - self.corrupted

    @property
    def first_order_share(self) -> float | None:
        """``sum_p |first_order_p| / sum_p |m_p(clean) - m_p(corrupted)|`` over the pairs ``p`` (per pair, so that
        first-order terms of opposite signs cannot cancel into a small share): near 0 where the metric is stationary
        on the corrupted run (e.g. at its maximum), so that every first-order term vanishes and a screen needs the
        second-order one (:mod:`.second_order`); 1 for a metric linear in the output."""
        if self.first_order is None or self.per_pair is None:
            return None
        changes = float((self.per_pair[0] - self.per_pair[1]).abs().sum())
        return float(self.first_order.abs().sum()) / max(changes, 1e-30)


def metric_totals(view: ModelView, clean: torch.Tensor, corrupted: torch.Tensor, targets: torch.Tensor,
                  metric: Metric, batch_size: int = 256, device: torch.device | None = None,
                  first_order: bool = False) -> PatchingTotals:
    """The metric per pair on both inputs (one forward pass of each) and, with ``first_order``, the first-order
    prediction of each pair's difference (the gradient is the metric's in the output alone, no backward pass through
    the model; taken and reduced per chunk of pairs, so no output-sized temporary beyond the two runs' outputs)."""
    device = device or torch.device("cpu")
    values: list[list[torch.Tensor]] = [[], []]
    linear: list[torch.Tensor] = []
    for start, batch in batches(clean, batch_size, device):
        chosen = targets[start:start + len(batch)].to(device)
        with torch.no_grad():
            clean_out = view.model(batch).float()
            corrupted_out = view.model(corrupted[start:start + len(batch)].to(device)).float()
            values[0].append(metric(clean_out, chosen).cpu())
            values[1].append(metric(corrupted_out, chosen).cpu())
            if first_order:
                moved = clean_out.contiguous().sub_(corrupted_out)  # in place: y_clean is not needed again
                linear.append(first_order_terms(metric, corrupted_out, chosen, moved).cpu())
                del moved
    both = [torch.cat(v).double() if v else torch.zeros(0, dtype=torch.float64) for v in values]
    first = (torch.cat(linear) if linear else torch.zeros(0, dtype=torch.float64)) if first_order else None
    return PatchingTotals(float(both[0].sum()), float(both[1].sum()), int(clean.shape[0]), (both[0], both[1]), first)


def attribution_patching(view: ModelView, layers: list[Layer], clean: torch.Tensor, corrupted: torch.Tensor,
                         targets: torch.Tensor, metric: Metric, batch_size: int = 256,
                         device: torch.device | None = None, steps: int = 2) -> dict[str, torch.Tensor]:
    """Estimated effect of patching each unit, summed over the pairs: ``{layer: (units,)}``.

    ``(a_clean - a_corrupted) . g``, where ``g`` averages the metric's gradient over ``steps`` points from the
    corrupted to the clean run (:func:`~.path_attribution.path_estimates`). Two (the
    default) are the corrupted and the clean run: the trapezoid whose clean end sees a unit that is off in the
    corrupted run (below a ReLU's kink) and that the clean input switches on, the very unit that carries the
    difference, where the gradient at the corrupted run alone (one step) is blind to it (Kramar et al. 2024);
    more add the interior points of EAP-IG (every component interpolated at once, on the corrupted inputs: with
    the clean run as the end point, not one straight path where anything reaches the output past the components)."""
    estimates = path_estimates(view, layers, corrupted, targets, metric, steps, end_inputs=clean,
                               batch_size=batch_size, device=device)
    return {name: values.double().sum(1).float() for name, values in estimates.items()}


def exact_patching(view: ModelView, layers: list[Layer], clean: torch.Tensor, corrupted: torch.Tensor,
                   targets: torch.Tensor, metric: Metric, units: dict[str, list[int]] | None = None,
                   batch_size: int = 256, device: torch.device | None = None,
                   scanner: AblationScanner | None = None, per_pair: bool = False,
                   base: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Exact effect of patching each unit (of ``units``, default all), summed over the pairs: ``{layer: (units,)}``
    in the order of ``units[layer]``; with ``per_pair``, each pair's effect: ``{layer: (units, pairs)}``. ``base``:
    the unpatched metric per pair (:func:`corrupted_metric`), computed here when not given (a caller patching in
    chunks computes it once)."""
    device = device or torch.device("cpu")
    scanner = scanner or AblationScanner(view, layers, device, corrupted[:2])
    if base is None:
        base = corrupted_metric(view, corrupted, targets, metric, batch_size, device)

    def reduce(outputs: torch.Tensor, samples: slice) -> torch.Tensor:
        k, n = outputs.shape[:2]
        chosen = targets[samples].to(outputs.device)
        values = metric(outputs.flatten(0, 1), chosen.repeat(k, *([1] * (chosen.dim() - 1))))
        return values.reshape(k, n)

    scanned = scanner.scan(corrupted, {"patch": (None, clean)}, batch_size, reduce=reduce, units=units)["patch"]
    if per_pair:
        return {name: values.double() - base for name, values in scanned.items()}
    return {name: (values.double() - base).sum(1).float() for name, values in scanned.items()}


def corrupted_metric(view: ModelView, corrupted: torch.Tensor, targets: torch.Tensor, metric: Metric,
                     batch_size: int = 256, device: torch.device | None = None) -> torch.Tensor:
    """The metric of each corrupted run, unpatched (float64, ``(pairs,)``): the baseline of :func:`exact_patching`."""
    device = device or torch.device("cpu")
    baseline = []
    with torch.no_grad():
        for start, batch in batches(corrupted, batch_size, device):
            baseline.append(metric(view.model(batch).float(), targets[start:start + len(batch)].to(device)).cpu())
    return torch.cat(baseline).double()
