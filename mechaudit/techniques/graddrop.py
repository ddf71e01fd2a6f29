"""AtP*'s cancellation fix, GradDrop (Kramár, Lieberum, Shah, Nanda 2024, Sec. 3.1.2), for any audited model.

A unit's first-order effect is a sum over the paths from it to the output; where two paths carry opposite signs the
sum (plain attribution patching) can be near zero while the real intervention, which does not move both paths
alike, is large. AtP* recomputes the attribution once per layer ``l`` with the gradient through layer ``l``'s
contribution to the residual stream set to zero, ``AtP_GD_l(n)``, and scores a node by the mean magnitude::

    AtP*_GD(n) = 1 / (L - 1) * sum_{l = 1..L} |AtP_GD_l(n)|

For a layer ``l`` upstream of ``n`` the term is plain ``AtP(n)`` (no path from ``n`` passes through it); for ``n``'s
own layer the paper's term is 0 (dropping that layer's write into the stream cuts every path from ``n``), hence
``L - 1``: the mean over the other layers.

Here, for a model mechaudit knows only through its audited layers (:class:`~mechaudit.model_view.Layer`), a *block*
is the module of an audited hidden Linear, Conv or heads layer (heads: the attention module that holds them, so its
queries, keys and values; a Linear or Conv unit: its own module); streams and the output layer are not blocks.
Dropping block ``d`` detaches the tensors going *into* ``d``'s module in the forward pass (a forward pre-hook): the
forward pass is unchanged, nothing upstream of ``d`` receives gradient through ``d``, and everything around ``d``
(a residual skip, a parallel branch) still carries gradient. With ``D`` the blocks and ``B(n)`` the blocks other
than ``n``'s own layer, mechaudit computes, per unit ``n`` and sample ``x``::

    AtP_GD_d(n, x) = (a_new(n, x) - a(n, x)) . dm(x)/da(n, x)   with d's input detached
    GradDrop(n)    = 1 / |B(n)| * sum_{d in B(n)} score(AtP_GD_d(n, .))

with ``score(e) = mean_x |e(x)|`` for AtP* itself (:meth:`GradDropTerms.magnitude`; the absolute value per sample,
so samples of opposite sign cannot cancel either) and, for L202's screen, its predicted accuracy drop clipped at 0
(:func:`~.atp.predicted_accuracy_drop`, from per-sample margin changes; clipped like a magnitude, so a gain through
one path does not offset a loss through another). ``n``'s own block is left out as in the paper (with the input
detached its term would be plain AtP); a block that ran before ``n``'s layer (its ``order`` is smaller) contributes
plain AtP without a pass. L202 ranks a unit by GradDrop where it exceeds plain AtP's score (or 0), else by plain
AtP's (:meth:`GradDropTerms.ranked`). In a model without a skip around a block (a sequential net) a block after
``n`` is on every path and its term is 0, so GradDrop never exceeds plain AtP and the ranking stays as it was
(``digits``); it raises a unit whose paths cancel.

Cost: one forward and one backward pass per batch for every block that runs after the first screened layer
(:func:`passes`), plus the source's forward pass per block and batch for resample ablation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..activations import batches
from ..model_view import Layer, ModelView, installed, units_view
from . import atp

BLOCK_KINDS = ("linear", "conv", "heads")
"""Kinds of audited layer whose module is a GradDrop block."""

AUTO_PASSES = 4
"""``screen_graddrop = "auto"`` runs GradDrop when it needs at most this many extra gradient passes (blocks after
the first screened layer), about as many times the first-order screen's time. A GPT-2-small-shaped model audited
on its heads and ``c_fc`` neurons has 23 (``python benchmarks/graddrop.py --cost 12``: 98 s CPU against the
screen's 4.7 s on 16 prompts, 20.8x; the default audit's 64 prompts would spend most of L202's 600 s on it)."""


def blocks(layers: Sequence[Layer]) -> list[Layer]:
    """The GradDrop blocks among ``layers`` (a view's layers): hidden Linear, Conv and heads layers."""
    return [layer for layer in layers if layer.kind in BLOCK_KINDS and not layer.is_output]


def downstream(all_blocks: Sequence[Layer], screened: Sequence[Layer]) -> list[Layer]:
    """The blocks that need a pass: those running after some screened layer (the others add plain AtP)."""
    first = min((layer.order for layer in screened), default=None)
    return [] if first is None else [block for block in all_blocks if block.order > first]


def passes(kinds: Sequence[str], screened: Sequence[bool]) -> int:
    """The cost model's count of GradDrop passes per batch: ``kinds`` of the hidden layers in forward order (e.g.
    from :class:`~mechaudit.cost.Sizes`), ``screened`` whether each is screened."""
    first = next((i for i, s in enumerate(screened) if s), None)
    return 0 if first is None else sum(1 for kind in kinds[first + 1:] if kind in BLOCK_KINDS)


def enabled(choice: str | bool, extra_passes: int) -> tuple[bool, str]:
    """Whether ``screen_graddrop`` (``"on"``, ``"off"``, ``"auto"`` or a bool) runs GradDrop, and why."""
    if choice is True or choice == "on":
        return True, "screen_graddrop = on"
    if choice is False or choice == "off":
        return False, "screen_graddrop = off"
    if extra_passes == 0:
        return False, "auto: no block runs after a screened layer"
    if extra_passes <= AUTO_PASSES:
        return True, f"auto: {extra_passes} extra gradient pass(es) per batch, at most {AUTO_PASSES}"
    return False, f"auto: {extra_passes} extra gradient passes per batch, more than {AUTO_PASSES}"


@dataclass
class GradDropTerms:
    """Per mode and screened layer, the terms of the blocks that ran after the layer, and how many blocks add
    plain AtP instead (those before it)."""

    blocks: list[str]
    dropped: dict[str, dict[str, list[torch.Tensor]]]  # {mode: {layer: [(units, samples) per block after it]}}
    before: dict[str, int]  # per screened layer: blocks (other than its own) that ran before it
    reason: str = ""
    passes: int = 0

    def score(self, mode: str, layer: Layer, plain: torch.Tensor,
              score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """GradDrop's ``score`` per unit of ``layer``: the mean over the blocks other than the layer's own of
        ``score`` of each block's term, ``plain`` (the screen's own estimate) for the blocks before the layer."""
        terms = self.dropped[mode][layer.name]
        count = self.before[layer.name] + len(terms)
        if not terms:  # every other block ran before the layer: each term is plain AtP
            return score(plain)
        total = score(plain) * self.before[layer.name] if self.before[layer.name] else 0.0
        for term in terms:
            total = total + score(term)
        return total / count

    def ranked(self, mode: str, layer: Layer, plain: torch.Tensor,
               score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """What the L202 and L207 screens rank by, per unit: GradDrop's mean of the terms' ``score`` (each at
        least 0, as AtP*'s magnitudes: a gain through one path does not offset a loss through another) where it
        exceeds plain AtP's score (or 0), else plain AtP's score (which may be negative: a predicted gain)."""
        plain_score = score(plain)
        dropped = self.score(mode, layer, plain, lambda e: score(e).clamp(min=0))
        return torch.where(dropped > plain_score.clamp(min=0), dropped, plain_score)

    def magnitude(self, mode: str, layer: Layer, plain: torch.Tensor) -> torch.Tensor:
        """AtP*'s GradDrop score per unit: the mean over blocks of the mean over samples of ``|AtP_GD_d|``."""
        return self.score(mode, layer, plain, lambda e: e.abs().mean(dim=1))

    def evidence(self) -> dict:
        return {"used": True, "why": self.reason, "blocks": len(self.blocks), "passes": self.passes,
                "formula": "per unit, the mean over the blocks other than its own layer's of the screen's score "
                           "(at least 0) of its estimate with that block's input detached (plain AtP for blocks "
                           "before the unit); the unit ranked by it where it exceeds plain AtP's score (or 0)"}


def not_used(reason: str) -> dict:
    """The ``graddrop`` evidence of a screen that ran without it."""
    return {"used": False, "why": reason}


def screen_terms(choice: str | bool, view: ModelView, layers: list[Layer], inputs: torch.Tensor,
                 targets: torch.Tensor, metric: atp.Metric, modes: Mapping[str, tuple], batch_size: int,
                 device: torch.device) -> tuple[GradDropTerms | None, dict]:
    """A screen's GradDrop terms (None when ``choice``, see :func:`enabled`, leaves it off) and its evidence."""
    every = blocks(view.layers)
    on, why = enabled(choice, len(downstream(every, layers)))
    if not on:
        return None, not_used(why)
    terms = graddrop_terms(view, layers, inputs, targets, metric, modes, batch_size, device, every, why)
    return terms, terms.evidence()


def ranked(terms: GradDropTerms | None, mode: str, layer: Layer, plain: torch.Tensor,
           score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """:meth:`GradDropTerms.ranked`, or plain AtP's ``score`` without GradDrop."""
    return score(plain) if terms is None else terms.ranked(mode, layer, plain, score)


def graddrop_terms(view: ModelView, layers: list[Layer], inputs: torch.Tensor, targets: torch.Tensor,
                   metric: atp.Metric, modes: Mapping[str, tuple], batch_size: int = 256,
                   device: torch.device | None = None, all_blocks: Sequence[Layer] | None = None,
                   reason: str = "") -> GradDropTerms:
    """The GradDrop terms of every unit of ``layers`` for single-unit ablations ``modes`` (as
    :func:`~.atp.ablation_estimates`): one forward and one backward pass per batch for each block (default: every
    block of ``view``) that runs after some layer of ``layers``, with that block's input detached."""
    device = device or torch.device("cpu")
    every = list(all_blocks) if all_blocks is not None else blocks(view.layers)
    passing = downstream(every, layers)
    before = {layer.name: sum(1 for b in every if b.order < layer.order and b.name != layer.name)
              for layer in layers}
    dropped: dict[str, dict[str, list[torch.Tensor]]] = {m: {layer.name: [] for layer in layers} for m in modes}
    for block in passing:
        reached = [layer for layer in layers if layer.order < block.order and layer.name != block.name]
        parts: dict[str, dict[str, list[torch.Tensor]]] = {m: {layer.name: [] for layer in reached} for m in modes}
        for start, batch in batches(inputs, batch_size, device):
            stop = start + len(batch)
            with installed([_detach_inputs(view.module(block))]):
                clean, grads = atp.activations_and_gradients(view, reached, batch, targets[start:stop].to(device),
                                                             metric)
            for mode, (values, source) in modes.items():
                replaced = atp._recorded(view, reached, source[start:stop].to(device)) if source is not None else None
                for layer in reached:
                    act, grad = units_view(clean[layer.name], layer), units_view(grads[layer.name], layer)
                    new = (units_view(replaced[layer.name], layer) if replaced is not None
                           else values[layer.name].to(act.device, act.dtype).unsqueeze(0))
                    parts[mode][layer.name].append(((new.float() - act.float()) * grad.float()).sum(-1).T.cpu())
        for mode, per_layer in parts.items():
            for name, chunks in per_layer.items():
                dropped[mode][name].append(torch.cat(chunks, dim=1))
    return GradDropTerms([b.name for b in every], dropped, before, reason, len(passing))


def _detach_inputs(module: torch.nn.Module) -> torch.utils.hooks.RemovableHandle:
    """A forward pre-hook that hands ``module`` its inputs (positional and keyword) detached from the graph."""
    def detach(_module: torch.nn.Module, args: tuple, kwargs: dict):
        return (tuple(_detached(a) for a in args), {k: _detached(v) for k, v in kwargs.items()})
    return module.register_forward_pre_hook(detach, with_kwargs=True)


def _detached(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value
