"""L202's gradient screen of single-unit ablations: the change of the label margin per unit and sample, integrated
along the path to the ablated value (:func:`interpolated_estimates`; one point: :func:`~.atp.ablation_estimates`;
at the units' readers' inputs: :mod:`.site_ablation`),
and the agreement of a screen with the exact ablations it stands in for (:func:`agreement`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr

from ..activations import batches
from ..model_view import Layer, ModelView, from_units_view, installed, units_view
from . import atp
from .node_ablation import Reader
from .resampled import draws
from .site_ablation import site_ablation_estimates
from .uncertainty import RESAMPLES, percentile_interval

MAX_UNDEFINED = 0.05
"""The largest share of bootstrap resamples without a rank correlation (a constant side) that :func:`agreement`
still gives an interval for (the default of :func:`~.uncertainty.percentile_interval`)."""


def _interpolated_gradients(view: ModelView, layers: list[Layer], batch: torch.Tensor, targets: torch.Tensor,
                            metric, goals: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """The gradient of the summed metric at every layer of ``layers`` whose output is moved ``alpha`` of the way to
    its ablated value ``goals[layer]`` (output-shaped), all of them in the same forward pass. As in
    :func:`~.atp.activations_and_gradients`, the model goes on with a copy of the moved value, so an in-place
    operation after the layer (``nn.ReLU(inplace=True)``) neither modifies a leaf (frozen parameters) nor the kept
    tensor whose gradient is read."""
    kept: dict[str, torch.Tensor] = {}

    def move(output: torch.Tensor, name: str) -> torch.Tensor:
        moved = output + alpha * (goals[name].to(output.dtype) - output)
        if not moved.requires_grad:
            moved = moved.detach().requires_grad_(True)
        else:
            moved.retain_grad()
        kept[name] = moved
        return moved.clone()
    with installed(view.hook(layer, lambda output, _args, name=layer.name: move(output, name)) for layer in layers), \
            torch.enable_grad():
        metric(view.model(batch).float(), targets).sum().backward()
    view.model.zero_grad(set_to_none=True)
    return {name: value.grad if value.grad is not None else torch.zeros_like(value) for name, value in kept.items()}


def interpolated_estimates(view: ModelView, layers: list[Layer], inputs: torch.Tensor, targets: torch.Tensor,
                           metric, modes: dict[str, tuple], steps: int, batch_size: int, device: torch.device,
                           metric_values: list[torch.Tensor] | None = None, together: bool = False,
                           sites: Mapping[str, Reader] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Integrated-gradients changes of ``metric`` per unit and sample when each unit alone is ablated, along the
    straight path from the clean activation to the ablated value with one layer moved at a time (the others clean),
    as in the integrated-gradients attribution patching of Marks et al. 2024 (EAP-IG, Hanna et al. 2024, instead
    interpolates the model's input, every layer at once): the change times
    the mean gradient at ``steps`` points ``alpha = j / steps`` of that path (a left Riemann sum). ``alpha = 0`` is
    the clean gradient of :func:`~.atp.ablation_estimates`, and ``steps = 1`` calls that first-order estimate
    itself (no per-layer copy of the gradients, no output-shaped ablated values); each further point moves one layer
    at a time (every unit of it), one forward and backward pass per layer and batch, so a unit-wise non-linearity
    after the unit (a ReLU a mean switches on) enters the estimate. Output as :func:`~.atp.ablation_estimates`;
    ``metric_values`` receives the clean metric per sample. ``sites`` (:func:`~.second_order.patch_sites`): layers
    whose units are moved at their reader's input, after their own nonlinearity (:mod:`.site_ablation`; one layer
    moved at a time, whatever ``together`` says)."""
    if sites:
        return site_ablation_estimates(view, layers, inputs, targets, metric, modes, sites, steps, batch_size, device,
                                       metric_values)
    if steps == 1:
        return atp.ablation_estimates(view, layers, inputs, targets, metric, modes, batch_size, device, metric_values)
    parts: dict[str, dict[str, list[torch.Tensor]]] = {m: {layer.name: [] for layer in layers} for m in modes}
    for start, batch in batches(inputs, batch_size, device):
        stop = start + len(batch)
        chosen = targets[start:stop].to(device)
        clean, clean_grads = atp.activations_and_gradients(view, layers, batch, chosen, metric, metric_values)
        for mode, (values, source) in modes.items():
            replaced = atp._recorded(view, layers, source[start:stop].to(device)) if source is not None else None
            goals = {layer.name: replaced[layer.name] if replaced is not None else from_units_view(
                values[layer.name].to(clean[layer.name].device, clean[layer.name].dtype).unsqueeze(0).expand(
                    len(batch), *values[layer.name].shape), clean[layer.name], layer) for layer in layers}
            totals = {name: grad / steps for name, grad in clean_grads.items()}
            for group in ([layers] if together else [[layer] for layer in layers]):
                for j in range(1, steps):
                    moved = _interpolated_gradients(view, group, batch, chosen, metric, goals, j / steps)
                    for name, grad in moved.items():
                        totals[name] = totals[name] + grad / steps
            for layer in layers:
                act, grad = units_view(clean[layer.name], layer), units_view(totals[layer.name], layer)
                new = units_view(goals[layer.name], layer)
                parts[mode][layer.name].append(((new.float() - act.float()) * grad.float()).sum(-1).T.cpu())
    return {m: {name: torch.cat(p, dim=1) for name, p in per_layer.items()} for m, per_layer in parts.items()}


def _spearman(screen: np.ndarray, exact: np.ndarray) -> float:
    """Spearman's rho, NaN where either side is constant (undefined)."""
    if len(screen) < 3 or np.ptp(screen) == 0 or np.ptp(exact) == 0:
        return float("nan")
    return float(spearmanr(screen, exact).correlation)


def spearman_resamples(screen: np.ndarray, exact: np.ndarray, seed: int = 0,
                       resamples: int = RESAMPLES) -> np.ndarray:
    """Spearman's rho of ``resamples`` seeded bootstrap resamples of the paired values, NaN where a resample makes
    either side constant (kept, so that a caller can count them)."""
    return np.array([_spearman(screen[i], exact[i]) for i in draws(len(screen), resamples, seed)])


def agreement(screen: Sequence[float], exact: Sequence[float], seed: int = 0) -> dict:
    """Spearman's rho of screen and exact values over the units checked exactly, with its 95% percentile-bootstrap
    interval over those units (:func:`~.uncertainty.percentile_interval`), and the share of the exact values tied
    with another one (ties at one value, e.g. most accuracy drops exactly 0, cap what a rank correlation can show).
    A resample where either side is constant has no rho; ``undefined_resamples`` gives their share, and above 5% no
    interval is given (the defined resamples would be those that happened to draw the few untied units, a biased
    picture); ``interval_method`` says how the interval was found, or why there is none."""
    a, b = np.asarray(screen, dtype=float), np.asarray(exact, dtype=float)
    rho = _spearman(a, b)
    values = spearman_resamples(a, b, seed) if len(a) >= 2 else np.array([])
    undefined = float(np.isnan(values).mean()) if len(values) else None
    interval = percentile_interval(values, len(a), over="checked units", max_dropped=MAX_UNDEFINED) \
        if len(values) else None
    if interval is not None:
        method = interval.method
    elif undefined is None:
        method = "no interval: fewer than 2 units checked"
    else:
        method = (f"no interval: {undefined:.0%} of {len(values)} bootstrap resamples leave screen or exact values "
                  f"constant (no rank correlation), more than {MAX_UNDEFINED:.0%}")
    _, counts = np.unique(b, return_counts=True)
    return {"spearman": None if np.isnan(rho) else round(rho, 6),
            "spearman_interval": None if interval is None else [round(interval.low, 6), round(interval.high, 6)],
            "interval_method": method,
            "undefined_resamples": None if undefined is None else round(undefined, 6),
            "tied_exact": round(float(counts[counts > 1].sum() / max(len(b), 1)), 6)}
