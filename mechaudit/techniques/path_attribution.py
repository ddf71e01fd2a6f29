"""First-order estimates of one intervention on every component at once, with gradients averaged along a path.

Attribution patching estimates the change of a metric when a component's activation ``a`` is replaced by ``a'``
as ``(a' - a) . dm/da`` (Nanda 2023). Its integrated-gradients variant (EAP-IG: Hanna, Pezzelle, Belinkov 2024,
"Have Faith in Faithfulness"; Marks et al. 2024, sparse feature circuits) averages the gradient over points of the
straight path from ``a`` to ``a'``, which follows a non-linearity the replacement crosses (a GELU or ReLU switched on
or off, a saturating softmax downstream) where the one-point gradient sees only its slope at ``a``.

As EAP-IG, every component moves at once: at the point ``alpha`` each site carries ``a + alpha (a' - a)`` (its own
activation replaced in the forward pass, the gradient passed straight through to the components before it), so
``steps`` points cost ``steps`` forward and backward passes per batch, whatever the number of components.
:func:`path_points`: one point is plain attribution patching (the gradient at ``a``); more are the trapezoid rule
on ``0, 1/(steps-1), ..., 1``. Where the replacement is another input's activation (patching), the end point is
that input's own run (``end_inputs``), so two points are the two-run estimate of :mod:`.patching`. That path is
then not one straight path: the interior points run the original inputs with only the hooked sites interpolated,
while the end point is the other input's whole run (what reaches the output past the sites, as a residual stream
or the embeddings, is the other input's there too).

A site is a layer's output (:meth:`~mechaudit.model_view.ModelView.hook`) or, for a :class:`~.node_ablation.
ReadSite`, the part of the next audited layer's input that a unit writes: where the circuit rules ablate it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..activations import batches
from ..model_view import Layer, ModelView, from_units_view, installed, units_view
from .node_ablation import Reader, ReadSite
from .site_grads import activation_grads
from .unit_split import joined, split_input

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``metric(outputs, targets) -> (samples,)``, differentiable in the outputs."""

Toward = Callable[[Layer, torch.Tensor], torch.Tensor]
"""``toward(layer, units)``: the replacement of a batch's activations ``units`` (samples, units, ...) at the layer's
site, broadcastable to them (e.g. the unit means for mean ablation)."""


def path_points(steps: int) -> list[tuple[float, float]]:
    """``(alpha, weight)`` of each point: ``[(0, 1)]`` for one step, else the trapezoid rule on ``steps`` equally
    spaced points of [0, 1] (weights sum to 1)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if steps == 1:
        return [(0.0, 1.0)]
    width = 1.0 / (steps - 1)
    return [(k * width, width / 2 if k in (0, steps - 1) else width) for k in range(steps)]


@dataclass
class MovedSite:
    layer: Layer
    read: Reader | None
    base: torch.Tensor | None = None    # (samples, units, ...) at alpha = 0
    end: torch.Tensor | None = None     # the replacement, broadcastable to ``base``
    moved: torch.Tensor | None = None   # the tensor carried downstream in the current pass (its grad is read)


def path_estimates(view: ModelView, layers: list[Layer], inputs: torch.Tensor, targets: torch.Tensor,
                   metric: Metric, steps: int, toward: Toward | None = None, end_inputs: torch.Tensor | None = None,
                   sites: dict[str, ReadSite] | None = None, batch_size: int = 256,
                   device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Per layer, the estimated change of ``metric`` per sample when each unit alone moves from its activation on
    ``inputs`` to its replacement: ``{layer: (units, samples)}``, ``(a' - a) . g`` summed over the unit's positions,
    ``g`` the gradient averaged over :func:`path_points` (``steps``). The replacement ``a'`` is ``toward(layer, a)``
    or, given ``end_inputs`` (the same samples' counterparts), the activation on them; then the last point is
    their own run and the interior points interpolate the sites alone (see the module's docstring).
    ``sites``: layers whose units are moved where the next audited layer reads them (as
    :func:`~.node_ablation.ablated` ablates them). Raises :class:`~.site_grads.NotDifferentiable` when ``metric``
    has no gradient (a model run under ``torch.no_grad``)."""
    if (toward is None) == (end_inputs is None):
        raise ValueError("give exactly one of toward and end_inputs")
    device = device or torch.device("cpu")
    points = path_points(steps)
    parts: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}
    for start, batch in batches(inputs, batch_size, device):
        chosen = targets[start:start + len(batch)].to(device)
        at = [MovedSite(layer, (sites or {}).get(layer.name)) for layer in layers]
        gradients = {site.layer.name: 0.0 for site in at}

        def run(alpha: float | None, weight: float, x: torch.Tensor) -> None:
            with moved_sites(view, at, alpha), torch.enable_grad():
                start_x = x.clone().requires_grad_(x.is_floating_point())
                total = metric(view.model(start_x).float(), chosen).sum()
                carried = [site for site in at if site.moved is not None and site.moved.requires_grad]
                found = activation_grads(total, [site.moved for site in carried])  # the sites' only: no weights'
            for site, grad in zip(carried, found):
                if grad is not None:
                    gradients[site.layer.name] = gradients[site.layer.name] + weight * grad.float()
            for site in at:
                site.moved = None
        run(None, points[0][1], batch)  # alpha = 0: the inputs' own run, which records ``base``
        ends = None
        if end_inputs is not None:
            other = end_inputs[start:start + len(batch)].to(device)
            if len(points) > 1:
                ends = _recording_ends(at)
                run(None, points[-1][1], other)  # alpha = 1: the counterparts' own run, which records the end
            else:
                ends = _recording_ends(at)
                with moved_sites(view, at, None), torch.no_grad():
                    view.model(other)
            _restore_bases(at, ends)
        else:
            for site in at:
                site.end = toward(site.layer, site.base)
        interior = points[1:-1] if end_inputs is not None else points[1:]
        for alpha, weight in interior:
            run(alpha, weight, batch)
        for site in at:
            delta = (site.end.to(site.base.dtype) - site.base).float()
            grad = gradients[site.layer.name]
            value = (delta * grad).flatten(2).sum(-1) if torch.is_tensor(grad) else torch.zeros(delta.shape[:2])
            parts[site.layer.name].append(value.T.cpu())
    return {name: torch.cat(values, dim=1) for name, values in parts.items()}


def _recording_ends(at: list[MovedSite]) -> list[torch.Tensor]:
    """Keep the bases aside and clear them, so that the next run records its activations as the new bases."""
    kept = [site.base for site in at]
    for site in at:
        site.base = None
    return kept


def _restore_bases(at: list[MovedSite], bases: list[torch.Tensor]) -> None:
    for site, base in zip(at, bases):
        site.end, site.base = site.base, base


@contextmanager
def moved_sites(view: ModelView, at: list[MovedSite], alpha: float | None) -> Iterator[None]:
    """Within the context each site records its activation as ``base`` when it has none; with ``alpha`` it
    carries ``base + alpha (end - base)`` instead. Either way the carried tensor keeps the gradient path to the
    site's own input (a straight-through replacement) and is kept as ``site.moved`` for its gradient."""
    def carry(site: MovedSite, units: torch.Tensor) -> torch.Tensor:
        if site.base is None:
            site.base = units.detach().clone()
        value = site.base if alpha is None else site.base + alpha * (site.end.to(site.base.dtype) - site.base)
        moved = units + (value - units).detach() if units.requires_grad else value.clone().requires_grad_(True)
        site.moved = moved
        return moved

    def output_hook(site: MovedSite):
        def hook(output: torch.Tensor, _args: tuple) -> torch.Tensor:
            return from_units_view(carry(site, units_view(output, site.layer)), output, site.layer).clone()
        return hook

    def read_hook(site: MovedSite):
        read = site.read
        assert read is not None
        module = view.module(read.reader)

        def pre_hook(_module, args: tuple):
            x = read.reader.layout.samples_first(args[0])  # as the reader's hooks see it
            split = split_input(read.layer, read.reader, module, x)
            return (read.reader.layout.restored(joined(carry(site, split), x).clone(), args[0]), *args[1:])
        return module.register_forward_pre_hook(pre_hook)

    with installed(read_hook(site) if site.read is not None else view.hook(site.layer, output_hook(site))
                   for site in at):
        yield


def mean_toward(values: dict[str, torch.Tensor], sites: dict[str, ReadSite] | None = None) -> Toward:
    """The replacement of mean ablation: a layer's ``values`` (units, positions), or its read site's values."""
    def toward(layer: Layer, units: torch.Tensor) -> torch.Tensor:
        if sites and layer.name in sites:
            return sites[layer.name].values.to(units.device, units.dtype).unsqueeze(0)
        return values[layer.name].to(units.device, units.dtype).reshape(1, *units.shape[1:])
    return toward
