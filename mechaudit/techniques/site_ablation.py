"""L202's gradient screen with each unit moved where its reader reads it (after the unit's own nonlinearity).

A unit audited before its nonlinearity (a Conv or Linear output read through a ReLU or GELU) is ablated by setting
that pre-activation to its mean (or zero, or another sample's value). The first-order estimate at the unit's
output, ``(a_new - a) . dm/da``, takes the nonlinearity's slope at the clean activation: a ReLU unit that is off on
a sample has gradient 0 there, so a mean that switches it on looks harmless; one the ablation moves into the flat
part looks larger than it is. Where the layer's units reach the output only through a module that reads them unit
by unit (:func:`~.second_order.patch_sites`: the next audited layer, or an unaudited down projection), each unit is
moved at that module's input instead: the move is then the exact change of what the reader reads,
``f(a_new) - f(a)`` (``f`` the ReLU, a max-pool, a flattening), and only the rest of the model is linearised, as
L207's second-order screen does. The reader's input under the ablation is read off one forward pass per batch and
mode with every audited layer's output replaced at once (zero and mean ablation; the check guarantees that the
reader's share of a unit depends on that unit alone) or off the source's run (resample ablation).

Measured on every unit of `digits` (``python benchmarks/atp_screen.py``; its 56 units are pre-ReLU Conv and Linear
outputs, all read unit by unit): Spearman of the screen's and the exact accuracy drop 0.948 at the outputs, 0.984
at the readers' inputs; recall of the exact top 10, 0.8 and 0.9. ``classifier.0:u5`` (exact drop 4.4 points, the
second largest) ranked 15th at its output and 2nd at its reader's input: its pre-activation is below 0 on most
samples and its mean is above, so the ablation switches it on where its gradient is 0. On the 2,048 ``mlp.c_fc``
neurons of a random-weight 2-layer, 256-wide GPT-2 (read by ``c_proj`` after the GELU): Spearman 0.860 at the
outputs, 0.896 at the readers' inputs; recall of the exact top 32, 0.88 and 0.94.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ..activations import batches
from ..model_view import Layer, ModelView, from_units_view, installed
from .node_ablation import Reader
from .path_attribution import MovedSite, moved_sites
from .site_grads import activation_grads

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def site_ablation_estimates(view: ModelView, layers: list[Layer], inputs: torch.Tensor, targets: torch.Tensor,
                            metric: Metric, modes: dict[str, tuple], sites: Mapping[str, Reader], steps: int = 1,
                            batch_size: int = 256, device: torch.device | None = None,
                            metric_values: list[torch.Tensor] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """As :func:`~.ablation_screen.interpolated_estimates` (``{mode: {layer: (units, samples)}}``, ``modes`` as for
    :meth:`~.ablation_scan.AblationScanner.scan`), with each layer in ``sites`` moved at its reader's input (see the
    module's docstring) and the others at their output. ``steps`` > 1 averages the gradient over the left Riemann
    points ``j / steps`` of the straight path from the clean to the ablated value at that site, one layer moved at a
    time. Per batch: one forward and backward pass, one forward pass per mode for the ablated values (the source's
    run for resample ablation), and ``steps - 1`` forward and backward passes per layer and mode."""
    device = device or torch.device("cpu")
    parts: dict[str, dict[str, list[torch.Tensor]]] = {m: {layer.name: [] for layer in layers} for m in modes}
    for start, batch in batches(inputs, batch_size, device):
        chosen = targets[start:start + len(batch)].to(device)
        clean = [MovedSite(layer, sites.get(layer.name)) for layer in layers]
        grads = _site_grads(view, clean, batch, chosen, metric, None, metric_values)
        for mode, (values, source) in modes.items():
            ends = _ablated_sites(view, layers, sites, batch, values,
                                  None if source is None else source[start:start + len(batch)].to(device))
            totals = [grad / steps for grad in grads]
            for j in range(1, steps):
                for i, (site, end) in enumerate(zip(clean, ends)):
                    moving = MovedSite(site.layer, site.read, site.base, end)
                    (grad,) = _site_grads(view, [moving], batch, chosen, metric, j / steps)
                    totals[i] = totals[i] + grad / steps
            for site, end, grad in zip(clean, ends, totals):
                delta = end.to(site.base.device, site.base.dtype).float() - site.base.float()
                parts[mode][site.layer.name].append((delta * grad).flatten(2).sum(-1).T.cpu())
    return {m: {name: torch.cat(p, dim=1) for name, p in per_layer.items()} for m, per_layer in parts.items()}


def _site_grads(view: ModelView, at: list[MovedSite], batch: torch.Tensor, targets: torch.Tensor, metric: Metric,
                alpha: float | None, metric_values: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The gradient of the summed metric at each site of ``at`` (its base recorded on this run when it has none;
    with ``alpha``, moved that share of the way to its end), float32; zeros where the metric does not depend on it
    or the site did not run. ``metric_values`` receives the metric per sample (on the CPU)."""
    with moved_sites(view, at, alpha), torch.enable_grad():
        measured = metric(view.model(batch).float(), targets)
        if metric_values is not None:
            metric_values.append(measured.detach().cpu())
        carried = [site for site in at if site.moved is not None]
        found = dict(zip((id(site) for site in carried), activation_grads(measured.sum(),
                                                                          [site.moved for site in carried])))
    view.model.zero_grad(set_to_none=True)
    grads = [found.get(id(site)) for site in at]
    for site in at:
        site.moved = None
    return [torch.zeros_like(site.base, dtype=torch.float32) if grad is None else grad.float()
            for site, grad in zip(at, grads)]


def _ablated_sites(view: ModelView, layers: list[Layer], sites: Mapping[str, Reader], batch: torch.Tensor,
                   values: dict[str, torch.Tensor] | None, source: torch.Tensor | None) -> list[torch.Tensor]:
    """Per layer, its site's value with every unit ablated, broadcastable to the site's clean value: the source's
    run for resample ablation; else a layer at its output takes ``values`` (units, positions) themselves, and a
    layer at its reader's input what the reader reads in one pass with every audited layer's output replaced by its
    ``values`` (each reader's share of a unit depends on that unit alone, :func:`~.second_order.patch_sites`)."""
    ends = [MovedSite(layer, sites.get(layer.name)) for layer in layers]
    if source is not None:
        with torch.no_grad(), moved_sites(view, ends, None):
            view.model(source)
        return [end.base for end in ends]
    read = [end for end in ends if end.read is not None]
    if read:
        def replace(layer: Layer):
            def hook(output: torch.Tensor, _args: tuple) -> torch.Tensor:
                value = values[layer.name].to(output.device, output.dtype)
                expanded = value.unsqueeze(0).expand(len(output), *value.shape)
                return from_units_view(expanded, output, layer).clone(memory_format=torch.contiguous_format)
            return hook
        with torch.no_grad(), installed(view.hook(layer, replace(layer)) for layer in layers), \
                moved_sites(view, read, None):
            view.model(batch)
    return [end.base if end.read is not None else values[end.layer.name].to(batch.device).unsqueeze(0)
            for end in ends]
