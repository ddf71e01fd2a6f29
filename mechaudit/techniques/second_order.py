"""A second-order screen of patching for a metric that is stationary on the run patched into (e.g. at its maximum).

Attribution patching estimates the effect of patching component ``i`` (activation ``a_i`` replaced by ``a_i'``,
``d_i = a_i' - a_i``) by the first-order term ``g . J d_i`` (``J`` the Jacobian of the model's output ``y`` in the
component, ``g = dm/dy``). Where the metric is stationary in the output on the patched run, ``g = 0`` and that term
vanishes for every component: MiniLM's similarity behaviour, the cosine similarity of a prompt's output to its
paraphrase's, is exactly 1 on the paraphrase run that L207 patches into, so every single-component patch can only
lower it, by a second-order amount. Integrating the gradient along the path of every component moved together
(EAP-IG) then attributes the *joint* patch's effect, ``-d_i . H (sum_j d_j)`` in the quadratic case: each
component's interaction with all others, not its own effect.

This screen estimates each component's own effect to second order in the output,
``g . J d_i + 1/2 (J d_i)^T H (J d_i)`` with ``H`` the metric's Hessian in the output (the term of the output's own
curvature, ``g . J'' [d_i, d_i]``, vanishes with ``g``): the Gauss-Newton approximation, exact to second order at a
stationary point. The quadratic form is estimated for every component at once from ``probes`` random output
directions ``z`` (Rademacher, seeded): ``E[(z . J d_i)((H z) . J d_i)] = (J d_i)^T H (J d_i)`` since ``E[z z^T] = I``
(Hutchinson's trick, applied to ``J^T H J`` restricted to each ``d_i``). Each probe is two backward passes through
the model (``J^T z`` and ``J^T H z``) on one forward pass of the patched run, per batch; ``H z`` is a Hessian-vector
product of the metric alone (in the output, not through the model). Per pair, so nothing cancels across pairs.

``J d_i`` is linear in ``d_i``, while a patch moves a component far (to a paraphrase's activation). Averaging ``J``
over the patched and the source run (``both_ends``, the trapezoid along the move) ranks MiniLM's many small components
better (Spearman over a random 48: 0.86 against 0.51) but its largest ones worse (its 4 carriers, components
recovering at least 10%, ranked 5, 2, 27, 11 against 0, 1, 3, 5; ``benchmarks/screen_steps.py``), and the top is what
the exact confirmation reads; so the default is the Taylor expansion at the patched run alone.
"""

from __future__ import annotations

import torch

from ..activations import batches
from ..model_view import Layer, ModelView, installed, units_view
from .atp import Metric, _recorded

PROBES = 4
"""Random output directions of the Hessian term (two backward passes each per run and batch; measured on MiniLM,
``benchmarks/screen_steps.py``)."""

STATIONARY = 0.01
"""The metric counts as stationary on the patched run when the first-order prediction of patching every component at
once, ``g . (y_source - y_patched)`` summed over the pairs, is below this share of the metric's exact change between
the two runs (:attr:`~.patching.PatchingTotals.first_order_share`; MiniLM's similarity: 6e-8; the logit differences
and label logits of `digits`, `induction` and GPT-2: of order 1)."""


def second_order_patching(view: ModelView, layers: list[Layer], inputs: torch.Tensor, sources: torch.Tensor,
                          targets: torch.Tensor, metric: Metric, probes: int = PROBES, batch_size: int = 256,
                          device: torch.device | None = None, seed: int = 0, both_ends: bool = False
                          ) -> dict[str, torch.Tensor]:
    """Per layer, the second-order estimate (see the module's docstring) of the change of ``metric`` per pair when
    each unit alone takes its activation on ``sources`` in the run on ``inputs``: ``{layer: (units, pairs)}``.
    ``both_ends``: the output's change ``J d_i`` with ``J`` averaged over the ``inputs`` and the ``sources`` run (the
    trapezoid), else (default) the ``inputs`` run's alone."""
    device = device or torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}
    for start, batch in batches(inputs, batch_size, device):
        chosen = targets[start:start + len(batch)].to(device)
        other = sources[start:start + len(batch)].to(device)
        replaced = _recorded(view, layers, other)
        with torch.enable_grad():
            output = view.model(batch).float().detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(metric(output, chosen).sum(), output, create_graph=True)
            directions = [grad.detach()]
            for _ in range(probes):
                z = (torch.randint(0, 2, output.shape, generator=generator) * 2 - 1).to(output.device, output.dtype)
                (hz,) = torch.autograd.grad((grad * z).sum(), output, retain_graph=True, allow_unused=True) \
                    if grad.requires_grad else (None,)  # a metric linear in the output has no Hessian term
                hz = torch.zeros_like(z) if hz is None else hz
                directions += [z, hz]
        runs = [batch, other] if both_ends else [batch]
        deltas = None
        projected = [torch.zeros(len(batch), layer.size, device=device) for _ in directions for layer in layers]
        for run in runs:
            found, deltas = _projections(view, layers, run, replaced, directions, deltas)
            for j, values in enumerate(found):
                projected[j] = projected[j] + values / len(runs)
        per_direction = [projected[j * len(layers):(j + 1) * len(layers)] for j in range(len(directions))]
        for i, layer in enumerate(layers):
            total = per_direction[0][i] + sum(0.5 * per_direction[1 + 2 * k][i] * per_direction[2 + 2 * k][i]
                                              for k in range(probes)) / max(probes, 1)
            parts[layer.name].append(total.T.cpu())
    return {name: torch.cat(values, dim=1) for name, values in parts.items()}


def _projections(view: ModelView, layers: list[Layer], batch: torch.Tensor, replaced: dict[str, torch.Tensor],
                 directions: list[torch.Tensor], deltas: list[torch.Tensor] | None = None
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """For each output direction ``v`` (in order) and layer, ``d_i . J^T v`` per sample and unit (samples, units),
    ``J`` the Jacobian of the output in the layer's activation on ``batch`` and ``d_i`` (``deltas``, else the move of
    this run's activation to ``replaced``); and the ``d_i`` per layer."""
    kept: dict[str, torch.Tensor] = {}

    def keep(output: torch.Tensor, name: str) -> torch.Tensor:
        # a leaf where nothing before it needs a gradient; else the output itself (the gradient path from the
        # audited layers before it runs through it)
        kept[name] = output if output.requires_grad else output.detach().requires_grad_(True)
        return kept[name].clone()
    found = []
    with installed(view.hook(layer, lambda output, _args, name=layer.name: keep(output, name)) for layer in layers), \
            torch.enable_grad():
        output = view.model(batch).float()
        leaves = [kept[layer.name] for layer in layers]
        if deltas is None:
            deltas = [(units_view(replaced[layer.name], layer) - units_view(kept[layer.name], layer)).detach().float()
                      for layer in layers]
        for direction in directions:
            back = torch.autograd.grad(output, leaves, direction, retain_graph=True, allow_unused=True)
            found += [torch.zeros(delta.shape[:2], device=delta.device) if b is None
                      else (delta * units_view(b, layer).float()).sum(-1)
                      for b, delta, layer in zip(back, deltas, layers)]
    return found, deltas
