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
mode with every screened layer that is read there replaced at once (zero and mean ablation; the check guarantees that
the reader's share of a unit depends on that unit alone; the pass stops after the last reader) or off the source's
run (resample ablation). AtP*'s GradDrop (:mod:`.graddrop`) reuses that estimator, with one block's write detached
per extra gradient pass (:func:`site_ablation_terms`), so its terms sit at the same sites and move to the same values.

Measured on every unit of `digits` (``python benchmarks/atp_screen.py``; its 56 units are pre-ReLU Conv and Linear
outputs, all read unit by unit): Spearman of the screen's and the exact accuracy drop 0.948 at the outputs, 0.984
at the readers' inputs; recall of the exact top 10, 0.8 and 0.9. ``classifier.0:u5`` (exact drop 4.4 points, the
second largest) ranked 15th at its output and 2nd at its reader's input: its pre-activation is below 0 on most
samples and its mean is above, so the ablation switches it on where its gradient is 0. On the 2,048 ``mlp.c_fc``
neurons of a random-weight 2-layer, 256-wide GPT-2 (read by ``c_proj`` after the GELU): Spearman 0.860 at the
outputs, 0.896 at the readers' inputs; recall of the exact top 32, 0.88 and 0.94.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from ..activations import batches
from ..model_view import Layer, ModelView, from_units_view, installed
from .early_stop import EnoughSeen, forward_until_seen
from .node_ablation import Reader
from .path_attribution import MovedSite, moved_sites
from .site_grads import activation_grads

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Estimates = dict[str, dict[str, torch.Tensor]]
Drop = Callable[[], AbstractContextManager]
"""A context within which one extra gradient pass runs (GradDrop: one block's write detached)."""


class SiteNotRun(RuntimeError):
    """A reader that should read a screened layer did not run in the pass."""


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
    plain, _ = site_ablation_terms(view, layers, inputs, targets, metric, modes, sites, steps, batch_size, device,
                                   metric_values)
    return plain


def site_ablation_terms(view: ModelView, layers: list[Layer], inputs: torch.Tensor, targets: torch.Tensor,
                        metric: Metric, modes: dict[str, tuple], sites: Mapping[str, Reader], steps: int = 1,
                        batch_size: int = 256, device: torch.device | None = None,
                        metric_values: list[torch.Tensor] | None = None, drops: Sequence[Drop] = (),
                        how_many: Callable[[float], int] | None = None) -> tuple[Estimates, list[Estimates]]:
    """:func:`site_ablation_estimates` (plain), and the same estimate once more within each of ``drops`` (every
    gradient pass, the integration points' too, run inside that context; the sites, their clean values and their
    ablated values are shared: recorded once per batch and mode). ``how_many(seconds)``, given the time one drop's
    estimate over the batches left is expected to take (the plain run's time on the batch, times the batches left),
    says how many more drops fit: it is asked before each drop on each batch, and a drop that does not fit is not
    run, nor any after it (one started on an earlier batch is discarded: only drops run on every batch are
    returned). Raises :class:`SiteNotRun` where a reader in ``sites`` does not run."""
    device = device or torch.device("cpu")
    count = len(drops)
    runs: list[Drop] = [nullcontext, *drops]
    parts = [{m: {layer.name: [] for layer in layers} for m in modes} for _ in runs]
    total_batches = -(-len(inputs) // batch_size) if len(inputs) else 0
    for index, (start, batch) in enumerate(batches(inputs, batch_size, device)):
        chosen = targets[start:start + len(batch)].to(device)
        source_batch = {m: None if source is None else source[start:start + len(batch)].to(device)
                        for m, (_, source) in modes.items()}
        ended: dict[str, list[torch.Tensor]] = {}  # per mode, the sites' ablated values: shared by every run
        seconds = 0.0  # the plain run's on this batch
        for run_index, run in enumerate(runs):
            if run_index > count:
                break
            if run_index and how_many is not None and how_many(seconds * (total_batches - index)) < 1:
                count = run_index - 1  # this drop and the later ones do not fit: not run
                break
            clean = [MovedSite(layer, sites.get(layer.name)) for layer in layers]
            began = time.perf_counter()
            with run():
                grads = _site_grads(view, clean, batch, chosen, metric, None,
                                    metric_values if run_index == 0 else None)
                for mode, (values, _) in modes.items():
                    if mode not in ended:
                        ended[mode] = _ablated_sites(view, layers, sites, batch, values, source_batch[mode])
                    ends = ended[mode]
                    totals = [grad / steps for grad in grads]
                    for j in range(1, steps):
                        for i, (site, end) in enumerate(zip(clean, ends)):
                            moving = MovedSite(site.layer, site.read, site.base, end)
                            (grad,) = _site_grads(view, [moving], batch, chosen, metric, j / steps)
                            totals[i] = totals[i] + grad / steps
                    for site, end, grad in zip(clean, ends, totals):
                        delta = end.to(site.base.device, site.base.dtype).float() - site.base.float()
                        parts[run_index][mode][site.layer.name].append((delta * grad).flatten(2).sum(-1).T.cpu())
            if run_index == 0:
                seconds = time.perf_counter() - began
    estimates = [{m: {name: torch.cat(p, dim=1) for name, p in per_layer.items()} for m, per_layer in part.items()}
                 for part in parts[:count + 1]]
    return estimates[0], estimates[1:]


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
    missing = [site.layer.name for site in at if site.base is None]
    if missing:
        raise SiteNotRun(f"no value recorded at the site of {', '.join(missing)} (its reader did not run)")
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
        _record(view, ends, source, ())
        return [end.base for end in ends]
    read = [end for end in ends if end.read is not None]
    if read:
        def replace(layer: Layer):
            def hook(output: torch.Tensor, _args: tuple) -> torch.Tensor:
                value = values[layer.name].to(output.device, output.dtype)
                expanded = value.unsqueeze(0).expand(len(output), *value.shape)
                return from_units_view(expanded, output, layer).clone(memory_format=torch.contiguous_format)
            return hook
        _record(view, read, batch, (view.hook(end.layer, replace(end.layer)) for end in read))
    return [end.base if end.read is not None else values[end.layer.name].to(batch.device).unsqueeze(0)
            for end in ends]


def _record(view: ModelView, ends: list[MovedSite], inputs: torch.Tensor, handles: Iterable) -> None:
    """Record every site of ``ends`` on a no-grad pass of ``inputs`` (with the hooks ``handles``, removed after),
    ended once the last site has recorded; raises :class:`SiteNotRun` where a site did not run."""
    def stop(*_args) -> None:
        if all(end.base is not None for end in ends):
            raise EnoughSeen

    def stopper(end: MovedSite):
        if end.read is not None:
            return view.module(end.read.reader).register_forward_pre_hook(stop)
        return view.hook(end.layer, lambda _output, _args: stop())
    with torch.no_grad(), installed(handles), moved_sites(view, ends, None), \
            installed(stopper(end) for end in ends):
        forward_until_seen(view.model, inputs)
    missing = [end.layer.name for end in ends if end.base is None]
    if missing:
        raise SiteNotRun(f"no value recorded at the site of {', '.join(missing)} (its reader did not run)")
