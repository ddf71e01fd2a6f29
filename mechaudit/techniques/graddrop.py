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
(:class:`Block`) is an audited hidden Linear, Conv or heads layer, and dropping it detaches the block's *write*, its
output where :meth:`~mechaudit.model_view.ModelView.hook` reads it (a Linear or Conv: the module's output; heads: the
concatenated heads at the output projection's input, so a residual skip inside the attention module, as BERT's
``LayerNorm(dense(context) + input)``, still carries gradient). A Linear inside an audited attention module, or its
output projection, belongs to that attention's block; a Linear or Conv nested inside another block's module is
merged into it; the Linear and Conv children of one MLP-like module (GPT-2's ``c_fc`` and ``c_proj``; not a
``Sequential`` or ``ModuleList``) are one block written by the last of them where a probe on two inputs verifies
that detaching the last one's write cuts every gradient to the others' outputs (:func:`blocks`; one forward and
backward pass per such module; a wrapped model's Linears or a transformer block holding its projections directly
stay separate blocks): GPT-2's default view, five audited modules per layer, gives two blocks per layer. Discovery
audits only modules that run once per forward pass, so a block's write is detached once (a module called more than
once is not audited, hence never a block).
The forward pass is unchanged; nothing upstream of the block receives gradient through its write; everything around
it still does. Detaching the write (never the block's input) makes the result independent of the order in which
hooks are registered: the screen's own hook at the same place (a unit moved at its reader's input, a carried leaf)
either runs before the detach or hands a fresh leaf downstream, and either way no gradient passes upstream.

Per unit ``n`` and sample ``x``, with the screen's own estimator (:func:`~.site_ablation.site_ablation_terms`: the
same sites, ablated values and integration points as L202's plain screen; for L207 the same path estimator,
:func:`~.patching.attribution_patching`, with the same steps)::

    AtP_GD_d(n, x) = the screen's estimate of n's effect with block d's write detached
    GradDrop(n)    = 1 / |B(n)| * sum_{d in B(n)} score(AtP_GD_d(n, .))

``B(n)``: the blocks other than ``n``'s own, less those whose term is identically 0 for every unit of ``n``'s layer
(a block on every path, as in a sequential net: dropping it says nothing about cancellation) and those whose terms
equal an earlier block's (an MLP's up and down projections kept as two blocks cut the same path: counted once).
A block that runs before ``n``'s layer contributes plain AtP without a pass. ``score(e) = mean_x |e(x)|`` for AtP*
itself (:meth:`GradDropTerms.magnitude`), L202's predicted accuracy drop clipped at 0 (so a gain through one path
does not offset a loss through another), L207's summed recovered share clipped at 0. The screens rank a unit by
GradDrop where it exceeds plain AtP's score (or 0), else by plain AtP's (:meth:`GradDropTerms.ranked`); in a
sequential net every later block is left out, GradDrop equals plain AtP and the ranking stays as it was
(``digits``). L202's margin scores (its ``margin_loss`` agreement) stay plain AtP.

Cost: one forward and one backward pass per batch for every block that runs after the first screened layer
(:func:`passes`; the plan, which cannot run the probe, charges the most the run may spend, :func:`charged`; L202:
the ablated values and the resample source are recorded once per batch and shared; L207:
``screen_steps`` passes per block, and with one step the clean run). Each block is started (L202: on each batch)
only while half the rule's time left when GradDrop began (:data:`SHARE`, :mod:`mechaudit.deadline`; the other half
is the exact confirmation's) allows it at the pace of the plain screen; a screen that stops early reports ``k of K
blocks``, counting the blocks run on every batch, and averages over them. Held: per block and mode, a float per
unit and sample.

Measured (``python benchmarks/graddrop.py``; L202's drop against the exact mean-ablation accuracy drop, Spearman /
recall of the exact top k; L207 against exact patching): a unit whose two paths cancel at first order, whose mean
ablation removes a class, ranks 138th of 300 (tied at 0) with plain AtP and 1st with GradDrop, in L202 and L207; the
control without the second path ranks it 1st either way. A random residual MLP (3 blocks, 192 ``up`` neurons read
by ``down`` after the ReLU, GradDrop on: 5 passes): plain 0.993 / 0.9, GradDrop 0.991 / 0.9 (before GradDrop was
moved to the screen's sites it mixed estimates at the outputs into L202's: 0.977 / 0.9). ``digits`` (sequential:
every later block is left out, GradDrop equals plain) 0.984 / 0.9 with and without; ``induction`` 1.0 / 1.0. A
random 2-layer, 128-wide GPT-2 (heads and ``c_fc`` neurons, 1,032 units, 3 passes): L202 0.558 / 0.94 plain, 0.512
/ 0.94 with GradDrop (nearly every exact drop there is 0 and ties dominate the rank correlation); L207's path screen
0.977 / 0.81 plain, 0.965 / 0.81 with GradDrop. GradDrop thus costs a little rank agreement where nothing cancels
(it averages estimates that each drop a path) and finds what plain AtP cannot where paths cancel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain

import torch
from torch.utils._pytree import tree_leaves

from .. import deadline
from ..model_view import Layer, ModelView, installed

BLOCK_KINDS = ("linear", "conv", "heads")
"""Kinds of audited layer that make a GradDrop block."""

AUTO_PASSES = 4
"""``screen_graddrop = "auto"`` runs GradDrop when it needs at most this many extra gradient passes (blocks after
the first screened layer), about as many times the first-order screen's time. A GPT-2-small-shaped model audited
on its heads and ``c_fc`` neurons has 23 (``python benchmarks/graddrop.py --cost 12``: 98 s CPU against the
screen's 4.7 s on 16 prompts, 20.8x; the default audit's 64 prompts would spend most of L202's 600 s on it)."""


@dataclass(frozen=True)
class Block:
    """A GradDrop block: ``layer``, whose write is detached, and ``members``, the audited layers inside it."""

    layer: Layer
    members: frozenset[str]

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def order(self) -> int:
        return self.layer.order


def blocks(layers: Sequence[Layer], view: ModelView | None = None, probe: torch.Tensor | None = None) -> list[Block]:
    """The GradDrop blocks among ``layers`` (a view's layers, in forward order): every hidden heads layer, with the
    Linear layers inside its attention module or at its output projection; every other hidden Linear and Conv
    layer not nested inside an earlier block's module. Given ``view`` and ``probe`` (a few inputs), the Linear and
    Conv layers that are the children of one module (not a ``Sequential``, ``ModuleList`` or ``ModuleDict``) are one
    block written by the last of them (an MLP: GPT-2's ``c_fc`` and ``c_proj``, LLaMA's gate, up and down
    projections) where :func:`_writes_alone` verifies that the last one's write is the only way from the others to
    the output; else, as without a probe, each is a block of its own (a wrapped model, ``self.net = model``, or a
    transformer block holding its projections directly, would otherwise become one block)."""
    hidden = [layer for layer in layers if layer.kind in BLOCK_KINDS and not layer.is_output]
    heads = [layer for layer in hidden if layer.kind == "heads"]

    def inside(layer: Layer, holder: Layer) -> bool:
        return layer.name.startswith(holder.name + ".") or (holder.kind == "heads" and layer.name == holder.site)
    found: list[Block] = [Block(h, frozenset([h.name] + [x.name for x in hidden if x.kind != "heads" and inside(x, h)]))
                          for h in heads]
    for layer in hidden:
        if layer.kind == "heads" or any(layer.name in block.members for block in found):
            continue
        holder = next((block for block in found if inside(layer, block.layer)), None)
        if holder is not None:
            found[found.index(holder)] = Block(holder.layer, holder.members | {layer.name})
        else:
            found.append(Block(layer, frozenset([layer.name])))
    if view is not None and probe is not None:
        found = _merged(found, view, probe)
    return sorted(found, key=lambda block: block.order)


_CONTAINERS = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)


def _merged(found: list[Block], view: ModelView, probe: torch.Tensor) -> list[Block]:
    """``found`` with the single-layer Linear and Conv blocks that are children of one module (not a container)
    merged into one, written by the last, where :func:`_writes_alone` verifies it."""
    siblings: dict[str, list[Block]] = {}
    for block in found:
        parent = block.name.rpartition(".")[0]
        if block.layer.kind != "heads" and block.members == {block.name} and parent:
            siblings.setdefault(parent, []).append(block)
    for parent, group in siblings.items():
        group = sorted(group, key=lambda block: block.order)
        if len(group) < 2 or isinstance(view.model.get_submodule(parent), _CONTAINERS):
            continue
        if _writes_alone(view, [block.layer for block in group], probe):
            found = [block for block in found if block not in group]
            found.append(Block(group[-1].layer, frozenset(name for block in group for name in block.members)))
    return found


def _writes_alone(view: ModelView, siblings: Sequence[Layer], probe: torch.Tensor) -> bool:
    """Whether, on one forward and backward pass of ``probe`` with the last of ``siblings``' write detached, no
    gradient reaches the others' outputs (the graph has no path from them to the output but through the last one).
    False where the pass fails (other than for memory)."""
    leaves: list[torch.Tensor] = []

    def leaf(output: torch.Tensor, _args: tuple) -> torch.Tensor:
        leaves.append(output.detach().requires_grad_(True))
        return leaves[-1]
    *earlier, last = siblings
    try:
        with torch.enable_grad(), installed(chain((view.hook(layer, leaf) for layer in earlier),
                                                  [view.hook(last, lambda output, _args: output.detach())])):
            total = sum((x.float().sum() for x in tree_leaves(view.model(probe))
                         if isinstance(x, torch.Tensor) and x.requires_grad), torch.zeros(()))
            if len(leaves) != len(earlier):
                return False  # a sibling did not run, or ran twice
            if not total.requires_grad:
                return True
            return all(g is None for g in torch.autograd.grad(total, leaves, allow_unused=True))
    except (torch.cuda.OutOfMemoryError, MemoryError):
        raise
    except (RuntimeError, ValueError, TypeError, IndexError):  # a model that fails on the probe: not merged
        return False
    finally:
        view.model.zero_grad(set_to_none=True)


def own(all_blocks: Sequence[Block], layer: Layer) -> Block | None:
    """The block ``layer`` belongs to, if any."""
    return next((block for block in all_blocks if layer.name in block.members), None)


def downstream(all_blocks: Sequence[Block], screened: Sequence[Layer]) -> list[Block]:
    """The blocks that need a pass: those whose write runs after some screened layer, other than that layer's own
    (the others add plain AtP)."""
    return [block for block in all_blocks
            if any(block.order > layer.order and layer.name not in block.members for layer in screened)]


def passes(kinds: Sequence[str], screened: Sequence[bool], names: Sequence[str] | None = None,
           merged: bool = True) -> int:
    """The cost model's count of GradDrop passes per batch: ``kinds`` of the hidden layers in forward order (e.g.
    from :class:`~mechaudit.cost.Sizes`), ``screened`` whether each is screened. Given their ``names``, blocks are
    formed as :func:`blocks` forms them, and with ``merged`` an MLP's Linear siblings are merged as its probe would
    verify, told here by the names alone (siblings not named by an index, as a ``Sequential``'s or ``ModuleList``'s
    children are): a lower bound where the probe refuses a merge (a wrapped model's Linears, a transformer block
    holding its projections directly); without ``merged``, none is (an upper bound; :func:`charged` uses both);
    without ``names``, every Linear, Conv and heads layer counts (an upper bound)."""
    first = next((i for i, s in enumerate(screened) if s), None)
    if first is None:
        return 0
    if names is None:
        return sum(1 for kind in kinds[first + 1:] if kind in BLOCK_KINDS)
    layers = [Layer(name, kind, 1, order) for order, (name, kind) in enumerate(zip(names, kinds))]
    found = blocks(layers)
    chosen = [layer for layer, s in zip(layers, screened) if s]
    if not merged:
        return len(downstream(found, chosen))
    by_parent: dict[str, Block] = {}
    for block in found:
        parent, _, child = block.name.rpartition(".")
        key = parent if block.layer.kind != "heads" and parent and not child.isdigit() else block.name
        by_parent[key] = Block(block.layer, block.members | (by_parent[key].members if key in by_parent
                                                             else frozenset()))
    return len(downstream(list(by_parent.values()), chosen))


def charged(choice: str, kinds: Sequence[str], screened: Sequence[bool], names: Sequence[str]) -> int:
    """The GradDrop passes per batch the cost model charges for ``screen_graddrop = choice`` (0: off), without
    running the model: the run's count lies between :func:`passes` with and without the MLP merges (its probe
    decides), so this is the largest count in that range that ``choice`` would run (the upper bound for ``on``; for
    ``auto``, the largest at most :data:`AUTO_PASSES`): never less than the run spends, and more where the probe
    merges. The probe itself (one forward and backward pass of :data:`PROBE_SAMPLES` inputs per candidate MLP) is
    not charged."""
    low, high = passes(kinds, screened, names), passes(kinds, screened, names, merged=False)
    return max((count for count in range(low, high + 1) if enabled(choice, count)[0]), default=0)


def enabled(choice: str, extra_passes: int) -> tuple[bool, str]:
    """Whether ``screen_graddrop`` (``"on"``, ``"off"`` or ``"auto"``) runs GradDrop, and why."""
    if choice == "on":
        return True, "screen_graddrop = on"
    if choice == "off":
        return False, "screen_graddrop = off"
    if extra_passes == 0:
        return False, "auto: no block runs after a screened layer"
    if extra_passes <= AUTO_PASSES:
        return True, f"auto: {extra_passes} extra gradient pass(es) per batch, at most {AUTO_PASSES}"
    return False, f"auto: {extra_passes} extra gradient passes per batch, more than {AUTO_PASSES}"


@contextmanager
def dropping(view: ModelView, block: Block) -> Iterator[None]:
    """Within the context, ``block``'s write is detached from the graph (its hooks removed on leaving, also after
    an exception)."""
    with installed([view.hook(block.layer, lambda output, _args: output.detach())]):
        yield


@dataclass
class GradDropTerms:
    """Per mode and screened layer, the terms of the blocks that ran after the layer (identically zero ones left
    out), and how many blocks add plain AtP instead (those before it)."""

    blocks: list[str]
    dropped: dict[str, dict[str, list[torch.Tensor]]]  # {mode: {layer: [(units, samples) per block kept]}}
    before: dict[str, int]  # per screened layer: blocks (other than its own) that ran before it
    reason: str = ""
    passes: int = 0
    planned: int = 0  # blocks after the first screened layer; ``passes`` of them ran in the time budget
    zero: dict[str, int] | None = None  # per screened layer: blocks left out, their terms identically 0
    same: dict[str, int] | None = None  # per screened layer: blocks left out, their terms those of an earlier one

    def score(self, mode: str, layer: Layer, plain: torch.Tensor,
              score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """GradDrop's ``score`` per unit of ``layer``: the mean of ``score`` of each kept block's term, ``plain``
        (the screen's own estimate) for the blocks before the layer; ``plain``'s score where no block is kept."""
        terms = self.dropped[mode][layer.name]
        before = self.before[layer.name]
        if not terms:
            return score(plain)
        total = score(plain) * before if before else 0.0
        for term in terms:
            total = total + score(term)
        return total / (before + len(terms))

    def ranked(self, mode: str, layer: Layer, plain: torch.Tensor,
               score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """What the L202 and L207 screens rank by, per unit: GradDrop's mean of the terms' ``score`` (each at
        least 0, as AtP*'s magnitudes: a gain through one path does not offset a loss through another) where it
        exceeds plain AtP's score (or 0), else plain AtP's score (which may be negative: a predicted gain)."""
        plain_score = score(plain)
        dropped = self.score(mode, layer, plain, lambda e: (plain_score if e is plain else score(e)).clamp(min=0))
        return torch.where(dropped > plain_score.clamp(min=0), dropped, plain_score)

    def magnitude(self, mode: str, layer: Layer, plain: torch.Tensor) -> torch.Tensor:
        """AtP*'s GradDrop score per unit: the mean over blocks of the mean over samples of ``|AtP_GD_d|``."""
        return self.score(mode, layer, plain, lambda e: e.abs().mean(dim=1))

    def evidence(self) -> dict:
        done = f"{self.passes} of {self.planned} blocks" if self.passes < self.planned else f"{self.passes} blocks"
        return {"used": True, "why": self.reason, "blocks": len(self.blocks), "passes": self.passes,
                "planned": self.planned, "done": done, "left_out_as_zero": dict(self.zero or {}),
                "left_out_as_same": dict(self.same or {}),
                "formula": "per unit, the mean over the blocks other than its own layer's (less those on every "
                           "path: term identically 0, and those whose term is an earlier block's) of the screen's "
                           "score (at least 0) of its own estimate with that block's write detached (plain AtP for "
                           "blocks before the unit); the unit ranked by it where it exceeds plain AtP's score (or 0)"}


def not_used(reason: str) -> dict:
    """The ``graddrop`` evidence of a screen that ran without it."""
    return {"used": False, "why": reason}


def ranked(terms: GradDropTerms | None, mode: str, layer: Layer, plain: torch.Tensor,
           score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """:meth:`GradDropTerms.ranked`, or plain AtP's ``score`` without GradDrop."""
    return score(plain) if terms is None else terms.ranked(mode, layer, plain, score)


def collect(all_blocks: Sequence[Block], layers: Sequence[Layer], modes: Sequence[str],
            per_block: dict[str, dict[str, dict[str, torch.Tensor]]], reason: str, planned: int) -> GradDropTerms:
    """:class:`GradDropTerms` from ``per_block`` {block: {mode: {layer: term}}} (the blocks that ran), keeping for a
    layer the terms of blocks after it other than its own, less those identically 0 in every mode."""
    before = {layer.name: sum(1 for b in all_blocks if b.order < layer.order and layer.name not in b.members)
              for layer in layers}
    dropped: dict[str, dict[str, list[torch.Tensor]]] = {m: {layer.name: [] for layer in layers} for m in modes}
    zero = {layer.name: 0 for layer in layers}
    same = {layer.name: 0 for layer in layers}
    for block in all_blocks:
        if block.name not in per_block:
            continue
        for layer in layers:
            if block.order <= layer.order or layer.name in block.members:
                continue
            terms = [per_block[block.name][m][layer.name] for m in modes]
            if all(not bool(t.any()) for t in terms):
                zero[layer.name] += 1
                continue
            kept = [dropped[m][layer.name] for m in modes]
            if any(all(torch.allclose(t, k[i], rtol=1e-5, atol=1e-8) for t, k in zip(terms, kept))
                   for i in range(len(kept[0]))):
                same[layer.name] += 1  # one path counted once: an MLP's up and down projections as two blocks
                continue
            for mode, term in zip(modes, terms):
                dropped[mode][layer.name].append(term)
    return GradDropTerms([b.name for b in all_blocks], dropped, before, reason, len(per_block), planned, zero, same)


def _planned(choice: str, view: ModelView, layers: list[Layer], probe: torch.Tensor | None
             ) -> tuple[list[Block], list[Block], bool, str]:
    every = blocks(view.layers, view, None if choice == "off" else probe)
    passing = downstream(every, layers)
    on, why = enabled(choice, len(passing))
    return every, passing, on, why


PROBE_SAMPLES = 2
"""Inputs the verification of an MLP merge runs on (:func:`_writes_alone`: one forward and backward pass each)."""

SHARE = 0.5
"""GradDrop's share of the rule's time left when its first block is asked for: the rest is left to the exact
confirmation of the screen's top units, which runs after it."""


def _how_many(count: int) -> Callable[[float], int]:
    """How many of ``count`` blocks fit GradDrop's share (:data:`SHARE`) of the time budget left at the first call,
    less the time spent since, given one block's expected seconds (times :data:`~mechaudit.deadline.SAFETY`)."""
    began: list[float] = []  # the clock and the share at the first call

    def fit(seconds: float) -> int:
        budget = deadline.current()
        left = None if budget is None else budget.left()
        if left is None or seconds <= 0:
            return count
        if not began:
            began.extend([deadline.clock(), left * SHARE])
        room = began[1] - (deadline.clock() - began[0])
        return max(0, min(count, int(room / (seconds * deadline.SAFETY))))
    return fit


def site_screen(choice: str, view: ModelView, layers: list[Layer], inputs: torch.Tensor, targets: torch.Tensor,
                metric, modes: dict[str, tuple], sites: Mapping[str, object], steps: int, batch_size: int,
                device: torch.device, metric_values: list[torch.Tensor] | None = None
                ) -> tuple[dict[str, dict[str, torch.Tensor]], GradDropTerms | None, dict]:
    """L202's screen: its plain estimates (:func:`~.ablation_screen.interpolated_estimates`, ``sites`` at their
    readers' inputs), its GradDrop terms from the same estimator (:func:`~.site_ablation.site_ablation_terms`, one
    extra gradient pass per block and batch, as many blocks as the time budget allows; None when ``choice``
    leaves GradDrop off) and the ``graddrop`` evidence."""
    from .ablation_screen import interpolated_estimates
    from .site_ablation import site_ablation_terms

    every, passing, on, why = _planned(choice, view, layers, inputs[:PROBE_SAMPLES].to(device))
    if not on:
        return (interpolated_estimates(view, layers, inputs, targets, metric, modes, steps, batch_size, device,
                                       metric_values, sites=sites), None, not_used(why))
    plain, per_block = site_ablation_terms(view, layers, inputs, targets, metric, modes, sites, steps, batch_size,
                                           device, metric_values,
                                           drops=[lambda b=block: dropping(view, b) for block in passing],
                                           how_many=_how_many(len(passing)))
    done = {block.name: terms for block, terms in zip(passing, per_block)}
    terms = collect(every, layers, list(modes), done, why, len(passing))
    return plain, terms, terms.evidence()


def path_screen(choice: str, view: ModelView, layers: list[Layer], estimate: Callable[[], dict[str, torch.Tensor]],
                seconds: float, probe: torch.Tensor | None = None) -> tuple[GradDropTerms | None, dict]:
    """L207's GradDrop terms: ``estimate()`` (its plain path screen, :func:`~.patching.attribution_patching`,
    ``{layer: (units,)}`` summed over the pairs) rerun once per block with that block's write detached, while the
    time budget allows another run of ``seconds`` (the plain screen's); mode ``"patch"``. ``probe``: a few inputs
    to verify the MLP merges on (:func:`blocks`; without, none is merged)."""
    every, passing, on, why = _planned(choice, view, layers, probe)
    if not on:
        return None, not_used(why)
    done: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    fit = _how_many(len(passing))
    for block in passing:
        if fit(seconds) < 1:
            break
        with dropping(view, block):
            found = estimate()
        done[block.name] = {"patch": {name: value.unsqueeze(1) for name, value in found.items()}}
    terms = collect(every, layers, ["patch"], done, why, len(passing))
    return terms, terms.evidence()
