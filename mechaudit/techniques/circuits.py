"""Circuit discovery with edge attribution patching (Syed, Rager, Conmy 2023).

Nodes are the units of the audited layers (and the input, split by declared regions); an edge joins a unit of
one layer to a unit of the next layer that reads it. Every node and edge is scored with two forward passes
(clean and reference) and one backward pass:

* edge ``u -> v``: ``(W_vu (x_u_ref - x_u)) . dm/dz_v``: the first-order change of the behaviour ``m`` when only
  ``u``'s contribution to ``v``'s input is patched, where ``x_u`` is the part of ``v``'s input that ``u``
  produced (after ``u``'s nonlinearity, pooling, flattening);
* node ``u``: ``(x_u_ref - x_u) . dm/dx_u`` on that same tensor, the part of the next audited layer's input that
  ``u`` produced: patching all of ``u``'s edges at once, so that a unit whose whole effect runs through one
  edge scores that edge's score. Where the next layer's input does not split by unit (the last audited layer,
  attention heads, residual streams, a skip connection or an unaudited module in between: checked on the first
  batch, not from the shapes alone), on the unit's own output ``z_u``, and its edges are scored by autograd.
  Where it splits but the unit also reaches the output another way (a U-Net skip, a second head reading the
  same activation), the node is scored on ``z_u`` too (so that it covers every path) and its edges are still
  read off the weights (:mod:`.unit_split`).

Scores are the sum over samples of the *absolute* per-sample effect: with a mean reference, signed effects
cancel across samples (a unit above its mean on half the data and below on the other half would score 0).

The reference is the corrupted input of a counterfactual pair when pairs are declared, else the mean over the
audit data (mean ablation). Reading ``W_vu`` off the weights needs to know which part of a layer's input each
upstream unit produced: this holds when only elementwise functions, pooling and flattening sit between the
two layers (MLPs, CNNs); those edges are matrix products (:mod:`.weight_edges`). Other pairs (attention heads,
LayerNorm, residual streams) are scored by autograd (:mod:`.gradient_edges`); where both sides of such a pair
are wider than ``max_passes``, only the edges into the downstream units with the highest node scores are
scored. Pairs where the later layer does not depend on the earlier one are listed in
:attr:`CircuitScores.unconnected`. Edge scores are held as one tensor per layer pair (:mod:`.edge_scores`).

Memory: the clean pass keeps its graph (for the autograd edges) while a batch is scored. The unit-split check
(:func:`~.unit_split.unit_splits`, whose first pass keeps a graph of its own) runs before any clean run, on the
first batch, so that the two never coexist; the autograd edges (:mod:`.gradient_edges`, and the reruns of a
screened wide pair) do build their double-backward graphs on top of the kept one, by design. The backward pass
computes the recorded activations' gradients only (no parameter gradients). The reference pass ends at the last
recorded layer, and so does every batch of the mean trace but the first, a full pass that counts the recorded
layers' calls (:mod:`.early_stop`, which states the limits: no logits).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from .. import deadline, linear_maps
from ..addresses import INPUT, input_address
from ..model_view import Layer, ModelView, installed, units_view
from .early_stop import EnoughSeen, all_seen, forward_until_seen
from .edge_scores import EdgeBlock, EdgeScores
from .gradient_edges import MAX_PASSES, NoDoubleBackward, gradient_edges, screened_gradient_edges
from .site_grads import activation_grads
from .unit_split import UnitSplits, comparison_pool, module_readers, reader_layer, split_input, unit_splits
from .weight_edges import input_edge_scores, weight_edge_scores

_LOG = logging.getLogger(__name__)

Behaviour = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``behaviour(outputs, targets) -> per-sample metric m``; higher means more of the behaviour."""



def target_logit(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return outputs.gather(1, targets.view(-1, 1)).squeeze(1)


def logit_difference(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``targets`` is (samples, 2): the logit of the first class minus that of the second."""
    return outputs.gather(1, targets[:, :1]).squeeze(1) - outputs.gather(1, targets[:, 1:]).squeeze(1)


def negative_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(outputs, targets, reduction="none")


def cosine_similarity(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``targets`` holds one embedding per sample (e.g. the paired prompt's): the outputs' cosine similarity to it."""
    return F.cosine_similarity(outputs.flatten(1).float(), targets.flatten(1).float(), dim=1)


def logits_at(outputs: torch.Tensor, position: int) -> torch.Tensor:
    """Next-token logits (samples, positions, vocabulary) at one position; other outputs unchanged."""
    return outputs[:, position] if outputs.dim() == 3 else outputs


def at_position(behaviour: Behaviour, position: int) -> Behaviour:
    """``behaviour`` read from the logits at token ``position`` of a next-token model."""
    def read(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return behaviour(logits_at(outputs, position), targets)
    return read


class NoTimeToScore(TimeoutError):
    """The rule's time budget (:mod:`mechaudit.deadline`) ran out before one batch of samples was scored."""


@dataclass
class CircuitScores:
    """Attribution-patching scores of every node and edge (summed over samples), and the behaviour itself."""

    layers: list[Layer]
    nodes: dict[str, float]
    edges: EdgeScores
    node_layer: dict[str, str]
    behaviour: float
    samples: int
    unconnected: list[tuple[str, str]] = field(default_factory=list)
    read_by: dict[str, str] = field(default_factory=dict)
    """Per layer whose node scores patch what a module reads from its units (that module's input splits by unit
    and is the layer's only path to the output: :func:`~.unit_split.unit_splits`), that module's name: the next
    audited layer, or an unaudited reader (:func:`~.unit_split.module_readers`: a transformer MLP's down projection
    when only the up projection is audited); the other layers are scored on their output."""
    unscored: list[tuple[str, str]] = field(default_factory=list)
    """Wide layer pairs whose screened edges the rule's time budget left unscored (:mod:`mechaudit.deadline`)."""
    cuts: list[deadline.Cut] = field(default_factory=list)
    """What the time budget cut while these scores were computed (fewer batches of samples, pairs unscored): every
    rule that reads the scores records them (:func:`mechaudit.deadline.record`), so its findings say so."""

    def top_nodes(self, count: int, exclude_layers: tuple[str, ...] = ()) -> list[str]:
        candidates = [n for n in self.nodes if self.node_layer[n] not in exclude_layers]
        return sorted(candidates, key=lambda n: -abs(self.nodes[n]))[:count]

    def edge_choice(self) -> list[dict]:
        """Per pair of consecutive node groups, how its edges were chosen and scored (unconnected pairs too)."""
        return [block.describe() for block in self.edges.blocks] + [
            {"source": a, "target": b, "edges": 0,
             "method": "unconnected: the later layer's activation does not depend on the earlier one"}
            for a, b in self.unconnected] + [
            {"source": a, "target": b, "edges": 0,
             "method": "not scored: the rule's time budget ran out before this wide pair's screened edges"}
            for a, b in self.unscored]


def _input_nodes(masks: dict[str, torch.Tensor], sample_shape: torch.Size) -> dict[str, torch.Tensor]:
    """Input regions as nodes: one per declared mask and ``input:rest`` for the remainder (or one ``input``)."""
    if not masks:
        return {INPUT: torch.ones(sample_shape)}
    per_sample = [name for name, mask in masks.items() if mask.dim() > len(sample_shape)]
    if per_sample:
        raise ValueError(f"the circuit's input regions need one mask for every sample; '{per_sample[0]}' differs "
                         f"per sample (declare it over the input's shape {tuple(sample_shape)})")
    regions = {input_address(name): mask.expand(sample_shape) for name, mask in masks.items()}
    rest = (1 - torch.stack(list(regions.values())).amax(0)).clamp_min(0)
    if rest.sum() > 0:
        regions[input_address("rest")] = rest
    return regions


class _Recorder:
    """Forward hooks that keep each layer's input and output (and, with ``keep_grad``, the input as the graph holds
    it, for the gradients :meth:`take_grads` finds)."""

    def __init__(self, view: ModelView, layers: list[Layer], keep_grad: bool,
                 stop_after: dict[str, int] | None = None) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}  # per layer, how often it ran in the pass(es) recorded
        self.stop_after = stop_after  # end the pass (:class:`EnoughSeen`) once every layer ran this often
        self.outputs: dict[str, torch.Tensor] = {}
        self.read: dict[str, torch.Tensor] = {}  # the layer's input as the graph holds it (for its gradient)
        self._grads: dict[int, torch.Tensor] = {}
        self._view, self._layers, self._keep_grad = view, layers, keep_grad

    def recording(self):
        """The context within which the forward passes are recorded."""
        return installed(self._view.hook(layer, self._hook(layer.name, self._keep_grad)) for layer in self._layers)

    def _hook(self, name: str, keep_grad: bool):
        def hook(output: torch.Tensor, args: tuple) -> None:
            self.inputs[name] = args[0].detach()
            if keep_grad and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
                self.read[name] = args[0]
            self.outputs[name] = output
            self.calls[name] = self.calls.get(name, 0) + 1
            if all_seen(self.calls, self.stop_after):
                raise EnoughSeen
        return hook

    def take_grads(self, total: torch.Tensor) -> None:
        """The gradients of ``total`` with respect to every recorded output and read input, and to nothing else
        (no parameter gradients: one backward pass that skips the weight gradients), the graph kept. Raises
        :class:`~.site_grads.NotDifferentiable` when ``total`` has no gradient at all."""
        wanted = {id(t): t for t in [*self.outputs.values(), *self.read.values()]
                  if isinstance(t, torch.Tensor) and t.requires_grad}
        found = activation_grads(total, list(wanted.values()), retain_graph=True)  # raises when total has no graph
        self._grads = {key: grad for key, grad in zip(wanted, found) if grad is not None}

    def grad(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """``d total / d tensor`` for a recorded tensor (None where ``total`` does not depend on it)."""
        return self._grads.get(id(tensor))


@dataclass
class _Sums:
    """What :func:`edge_attribution`'s batches and screened pairs add up: per layer, the node scores summed over
    samples (``nodes``); per layer pair, the edge scores (``edges``) and how they were found (``methods``); the pairs
    too wide to score batch by batch (``wide``, screened afterwards), those whose later layer does not read the
    earlier (``unconnected``), the units each screened pair scored into, and the behaviour summed over samples."""

    nodes: dict[str, torch.Tensor]
    edges: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    methods: dict[tuple[str, str], str] = field(default_factory=dict)
    wide: list[tuple[Layer, Layer]] = field(default_factory=list)
    unconnected: list[tuple[str, str]] = field(default_factory=list)
    screened_units: dict[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)
    behaviour: float = 0.0


@dataclass
class _Batch:
    """One batch's clean run (activations, inputs and gradients recorded) and its reference activations."""

    recorder: _Recorder
    batch: torch.Tensor
    ref_batch: torch.Tensor
    ref_inputs: dict[str, torch.Tensor]
    ref_outputs: dict[str, torch.Tensor]
    metric_sum: float

    def grad(self, layer: Layer) -> torch.Tensor:
        output = self.recorder.outputs[layer.name]
        grad = self.recorder.grad(output)
        return grad if grad is not None else torch.zeros_like(output)

    def delta_in(self, layer: Layer) -> torch.Tensor:
        return self.ref_inputs[layer.name] - self.recorder.inputs[layer.name]

    def delta_out(self, layer: Layer) -> torch.Tensor:
        return self.ref_outputs[layer.name].detach() - self.recorder.outputs[layer.name].detach()


def _run(view: ModelView, inputs: torch.Tensor, targets: torch.Tensor, behaviour: Behaviour,
         reference: torch.Tensor | None, means: dict | None, start: int, batch_size: int,
         device: torch.device, tracked: list[Layer] | None = None) -> _Batch:
    """Forward and backward pass of the clean batch at ``start`` (graph kept), and the reference run or means;
    ``tracked``: the layers recorded (default: the audited ones; the circuit adds unaudited readers)."""
    batch = inputs[start:start + batch_size].to(device)
    batch_targets = targets[start:start + batch_size].to(device)
    tracked = tracked or view.layers
    recorder = _Recorder(view, tracked, keep_grad=True)
    with recorder.recording(), torch.enable_grad():
        clean_input = batch.clone().requires_grad_(batch.is_floating_point())
        metric = behaviour(view.model(clean_input), batch_targets)
        recorder.take_grads(metric.sum())  # the graph kept for the edges scored by autograd
    if reference is not None:
        ref_batch = reference[start:start + batch_size].to(device)
        ref = _Recorder(view, tracked, keep_grad=False, stop_after=dict(recorder.calls))
        with ref.recording(), torch.no_grad():
            forward_until_seen(view.model, ref_batch)  # no logits: only the tracked layers' activations are used
        return _Batch(recorder, batch, ref_batch, ref.inputs, ref.outputs, float(metric.detach().sum()))
    assert means is not None
    return _Batch(recorder, batch, means[INPUT].expand_as(batch),
                  {name: value.expand_as(recorder.inputs[name]) for name, value in means["in"].items()
                   if name in recorder.inputs},
                  {name: value.expand_as(recorder.outputs[name]) for name, value in means["out"].items()
                   if name in recorder.outputs},
                  float(metric.detach().sum()))


def edge_attribution(view: ModelView, inputs: torch.Tensor, targets: torch.Tensor, behaviour: Behaviour,
                     reference: torch.Tensor | None = None, masks: dict[str, torch.Tensor] | None = None,
                     batch_size: int = 256, device: torch.device | None = None,
                     max_passes: int = MAX_PASSES, seconds_per_batch: float | None = None,
                     what: str = "edge-scoring batches") -> CircuitScores:
    """Score every node and edge of ``view``'s layers for ``behaviour`` (see the module docstring).

    ``reference`` holds the corrupted inputs paired with ``inputs``; without it, the reference activations are
    the means over ``inputs``. Pairs scored by autograd with more than ``max_passes`` units on both sides get the
    edges into their ``max_passes`` best-scored downstream units (one more forward and backward pass per batch).

    Within a rule's time budget (:mod:`mechaudit.deadline`) the batches run in order, in chunks, while the time
    left allows; the scores are then those of the first batches' samples (``samples`` says how many), and the wide
    pairs are screened on the same samples while time is left (those left out: :attr:`CircuitScores.unscored`).
    A screened pair scores its chosen units in chunks, best-scored first, while time is left (each chunk reruns the
    scored batches and makes its units' VJPs: :func:`_screened_pair`), so it starts only when its first unit, about
    what all the batches scored cost, fits, and a pair cut partway keeps the edges into the units it scored (its
    method says so, and the cut is recorded); ``seconds_per_batch`` (measured on similar work,
    e.g. the other direction of L208's scores) lets the first batch wait for time too. ``what``: the batches' name
    in a cut. The cuts are recorded on the budget and in :attr:`CircuitScores.cuts`. No collective is made
    (rank-local, as :func:`mechaudit.deadline.confirm`). Without a deadline, everything runs, as before.
    """
    device = device or torch.device("cpu")
    layers = view.layers
    readers, tracked, means = _readers_and_means(view, inputs, batch_size, device, reference is None)
    regions = _input_nodes(masks or {}, inputs.shape[1:])
    found = _Sums({layer.name: torch.zeros(layer.size, dtype=torch.float64) for layer in layers})
    check = checked_splits(view, inputs, reference, batch_size, device, readers)

    def score(starts: list[int]) -> None:
        for start in starts:
            run = _run(view, inputs, targets, behaviour, reference, means, start, batch_size, device, tracked)
            found.behaviour += run.metric_sum
            _score_batch(view, run, layers, check, regions, found, max_passes, device)
            view.model.zero_grad(set_to_none=True)
            del run
    # a budget of no time of its own, inside the rule's: it ends with the rule's, and collects the cuts made here
    # (the rule's budget may already hold others) for CircuitScores.cuts, so that later rules reading these cached
    # scores are labelled with them; they reach the rule's budget too when it closes
    with deadline.within(0) as budget:  # the batches, then the wide pairs, while the rule's time budget allows
        began = deadline.clock()
        starts = deadline.confirm(list(range(0, inputs.shape[0], batch_size)), score, what,
                                  estimate=seconds_per_batch)
        batches_took = deadline.clock() - began  # about what each screened pair costs: the same batches' runs again
        scored = min(inputs.shape[0], len(starts) * batch_size)
        if inputs.shape[0] and not scored:
            raise NoTimeToScore("the rule's time budget ran out before one batch of edge scores: lift it with "
                                "--rule-timeout SECONDS")

        def screen(pair: tuple[Layer, Layer]) -> None:
            _screened_pair(view, inputs[:scored], targets[:scored], behaviour,
                           None if reference is None else reference[:scored], means, batch_size, device,
                           *pair, found, max_passes, estimate=batches_took)
        # each pair cuts its own units (a rerun of the batches, then VJPs): it starts while one unit's rerun fits
        deadline.starts(found.wide, screen, "screened layer pairs", first=batches_took)
        unscored = [(previous.name, layer.name) for previous, layer in found.wide
                    if (previous.name, layer.name) not in found.edges
                    and (previous.name, layer.name) not in found.unconnected]
    nodes = {layer.address(u): score for layer in layers for u, score in enumerate(found.nodes[layer.name].tolist())}
    node_layer = {layer.address(u): layer.name for layer in layers for u in range(layer.size)}
    node_layer.update({region: INPUT for region in regions})
    addresses = {layer.name: [layer.address(u) for u in range(layer.size)] for layer in layers}
    addresses[INPUT] = list(regions)
    order = {layer.name: index for index, layer in enumerate(layers)}
    blocks = [EdgeBlock(a, b, addresses[a], addresses[b], found.edges[(a, b)], found.methods[(a, b)],
                        len(found.screened_units[(a, b)]) if (a, b) in found.screened_units else None,
                        found.screened_units.get((a, b)))
              for a, b in sorted(found.edges, key=lambda pair: order[pair[1]])]
    read_by = {layer.name: reader for index, layer in enumerate(layers)
               if (reader := check.reader_of(layer.name, layers[index + 1].name if index + 1 < len(layers) else None))}
    return CircuitScores(layers, nodes, EdgeScores(blocks), node_layer, found.behaviour / scored, scored,
                         found.unconnected, read_by, unscored, list(budget.cuts))


def _score_batch(view: ModelView, run: _Batch, layers: list[Layer], check: UnitSplits,
                 regions: dict[str, torch.Tensor], found: _Sums, max_passes: int, device: torch.device) -> None:
    """One batch's node scores and edge scores, added to ``found``; a pair too wide to score here joins
    ``found.wide`` (scored afterwards, screened), one whose later layer does not read the earlier
    ``found.unconnected``."""
    for index, layer in enumerate(layers):
        following = layers[index + 1] if index + 1 < len(layers) else None
        reader = check.reader_of(layer.name, following.name if following else None)
        _add(found.nodes, layer.name, _node_scores(view, run, layer, reader_layer(view, reader) if reader else None))
        if index == 0:
            module = view.module(layer)
            if layer.kind in ("linear", "conv") and _reads_model_input(module, run.recorder.inputs[layer.name],
                                                                         run.batch):
                grad = units_view(run.grad(layer), layer)
                delta = run.ref_batch - run.batch
                scores = torch.stack([input_edge_scores(module, delta * mask.to(device), grad)
                                      for mask in regions.values()])
                _add(found.edges, (INPUT, layer.name), scores)
                found.methods[(INPUT, layer.name)] = "weights: every edge from each input region"
            continue
        previous = layers[index - 1]
        pair = (previous.name, layer.name)
        if pair in found.unconnected or previous in (w[0] for w in found.wide if w[1] is layer):
            continue
        scores, method = _pair_edges(view, run, previous, layer, max_passes, check.splits[layer.name])
        if method == "wide":
            found.wide.append((previous, layer))
        elif scores is None:
            found.unconnected.append(pair)
        else:
            _add(found.edges, pair, scores)
            found.methods[pair] = method


def checked_splits(view: ModelView, inputs: torch.Tensor, reference: torch.Tensor | None, batch_size: int,
                   device: torch.device, readers: dict[str, Layer], sample: torch.Tensor | None = None,
                   rule: str = "circuit scores") -> UnitSplits:
    """:func:`unit_splits` on the first batch, or on ``inputs[sample]`` (with the unaudited ``readers``; without
    them, warning under ``rule``'s name, if their pairs fail), before any clean run: its forward passes never
    coexist with the graph a clean run keeps for its edges."""
    batch = inputs[:batch_size] if sample is None else inputs[sample]
    batch, pool = batch.to(device), comparison_pool(inputs, reference)
    try:
        return unit_splits(view, batch, pool, readers=readers)
    except Exception as error:  # noqa: BLE001 - the optional reader pairs fail: checked without them
        if not readers:
            raise
        _dropped_readers(readers, error, rule)
        return unit_splits(view, batch, pool)


def _add(sums: dict, key, value: torch.Tensor) -> None:
    value = value.detach().double().cpu()
    sums[key] = sums[key] + value if key in sums else value


def _node_scores(view: ModelView, run: _Batch, layer: Layer, following: Layer | None) -> torch.Tensor:
    """Per unit, the sum over samples of |(reference - clean) . dm/d(activation)| on the tensor the next audited
    layer reads from it (after its nonlinearity, pooling, flattening: the same tensor its edges patch), when that
    input splits by unit and is the layer's only path to the output (``following`` is None when
    :func:`unit_splits` says otherwise); else on the layer's own output (the last layer, heads, residual streams,
    a skip past the next layer)."""
    if following is not None and following.name in run.recorder.read:
        split = split_input(layer, following, view.module(following), run.delta_in(following))
        read_grad = run.recorder.grad(run.recorder.read[following.name])
        if split is not None and read_grad is not None:
            grad = split_input(layer, following, view.module(following), read_grad)
            return (split * grad).flatten(2).sum(2).abs().sum(0)
    delta, grad = run.delta_out(layer), run.grad(layer)
    return (units_view(delta, layer) * units_view(grad, layer)).sum(dim=2).abs().sum(0)


def _pair_edges(view: ModelView, run: _Batch, previous: Layer, layer: Layer,
                max_passes: int, splits: bool = True) -> tuple[torch.Tensor | None, str]:
    """Edge scores (U, V) of one batch and how they were found: from the weights when ``layer``'s input splits
    by ``previous``'s units (``splits``: :func:`unit_splits`), else by autograd; ``(None, "wide")`` for an
    autograd pair too wide on both sides, or too wide downstream when the path has no double backward."""
    module = view.module(layer)
    v_grad = units_view(run.grad(layer), layer)
    split = split_input(previous, layer, module, run.delta_in(layer)) if splits else None
    if split is not None:
        return weight_edge_scores(module, split, v_grad), "weights: every edge, read off the layer's weights"
    if min(previous.size, layer.size) > max_passes:
        return None, "wide"
    upstream_out = run.recorder.outputs[previous.name]
    try:
        scores = gradient_edges(previous, upstream_out, run.delta_out(previous), layer,
                                run.recorder.outputs[layer.name], run.grad(layer), max_passes)
    except NoDoubleBackward:  # too wide downstream for one VJP per unit: screened, like a pair wide on both sides
        return None, "wide"
    return scores, "autograd: every edge"


def _screened_pair(view: ModelView, inputs: torch.Tensor, targets: torch.Tensor, behaviour: Behaviour,
                   reference: torch.Tensor | None, means: dict | None, batch_size: int, device: torch.device,
                   previous: Layer, layer: Layer, found: _Sums, max_passes: int, estimate: float | None = None) -> None:
    """Edges of a wide autograd pair, added to ``found``: into the ``max_passes`` units of ``layer`` with the
    highest node scores, from every unit of ``previous`` (one VJP per chosen unit and batch).

    The chosen units, highest node score first, are the items of a :func:`mechaudit.deadline.confirm`: each chunk
    reruns every batch (a clean and a reference run) and makes its units' VJPs, so a pair the time left does not hold
    keeps the edges into its best-scored units (the cut recorded), and one left no time for its first unit is not
    added to ``found.edges`` (the caller lists it unscored). ``estimate``: a prior for the first unit's seconds (about
    one run of every batch). Each unit's edges are computed alone and summed over the batches in order, so the scores
    are those of one chunk of all units."""
    pair = (previous.name, layer.name)
    planned = torch.topk(found.nodes[layer.name].abs(), max_passes).indices.tolist()  # highest node score first
    block = torch.zeros(previous.size, layer.size, dtype=torch.float64)
    independent = []

    def score(units: list[int]) -> deadline.Fixed:
        """The chunk's VJPs; returns the seconds its reruns of the batches took (the chunk's fixed cost)."""
        reruns = 0.0
        if independent:
            return deadline.Fixed(reruns)
        for start in range(0, inputs.shape[0], batch_size):
            began = deadline.clock()
            run = _run(view, inputs, targets, behaviour, reference, means, start, batch_size, device)
            reruns += deadline.clock() - began
            scores = screened_gradient_edges(previous, run.recorder.outputs[previous.name], run.delta_out(previous),
                                             layer, run.recorder.outputs[layer.name], run.grad(layer), units)
            view.model.zero_grad(set_to_none=True)
            del run
            if scores is None:
                independent.append(pair)
                return deadline.Fixed(reruns)
            block[:, units] += scores.detach().double().cpu()
        return deadline.Fixed(reruns)
    done = deadline.confirm(planned, score, f"top units of {layer.name} screened for edges from {previous.name}",
                            estimate=estimate)
    if independent:
        found.unconnected.append(pair)
        return
    if not done:
        return
    units = sorted(done)
    found.edges[pair] = block
    found.screened_units[pair] = tuple(units)
    chosen = (f"the {len(units)} of the planned {len(planned)} units of {layer.name} with the highest node scores "
              f"(cut by the time budget)" if len(units) < len(planned) else
              f"the {len(units)} of {layer.size} units of {layer.name} with the highest node scores")
    found.methods[pair] = (
        f"autograd, screened: edges into {chosen}, from all {previous.size} units of {previous.name}; edges into "
        f"the other {layer.size - len(units)} units are not scored (0)")


def _reads_model_input(module: nn.Module, x_in: torch.Tensor, batch: torch.Tensor) -> bool:
    """Whether the first audited layer is applied to the model's input itself (then input regions get edges)."""
    shape_ok = x_in.dim() == 2 if linear_maps.is_linear(module) else True
    return shape_ok and x_in.shape == batch.shape and torch.equal(x_in, batch)


def _readers_and_means(view: ModelView, inputs: torch.Tensor, batch_size: int, device: torch.device,
                       with_means: bool) -> tuple[dict[str, Layer], list[Layer], dict | None]:
    """The unaudited readers (:func:`~.unit_split.module_readers`, one forward pass of one batch), the layers to
    record (the audited ones and those readers) and, when ``with_means``, their mean trace (:func:`_mean_trace`).
    The readers are optional: if finding them or their means fails, they are dropped (each layer is then scored and
    ablated at its own output) and a warning logged."""
    layers = view.layers
    try:
        readers = module_readers(view, inputs[:batch_size].to(device))
        tracked = layers + list({reader.name: reader for reader in readers.values()}.values())
        return readers, tracked, _mean_trace(view, inputs, batch_size, device, tracked) if with_means else None
    except Exception as error:  # noqa: BLE001 - anything a model's forward raises; retried without readers
        _dropped_readers({}, error)
    return {}, layers, _mean_trace(view, inputs, batch_size, device, layers) if with_means else None


def _dropped_readers(readers: dict[str, Layer], error: Exception, rule: str = "circuit scores") -> None:
    names = ", ".join(sorted({reader.name for reader in readers.values()})) or "unaudited readers"
    _LOG.warning("%s: %s dropped (MLP neurons read at their layer's output): %s", rule, names, error)


def _mean_trace(view: ModelView, inputs: torch.Tensor, batch_size: int, device: torch.device,
                tracked: list[Layer] | None = None) -> dict[str, dict[str, torch.Tensor] | torch.Tensor]:
    """Mean input of the model and mean input and output of every layer (of ``tracked``, default the audited
    ones) over ``inputs`` (streamed)."""
    sums: dict[str, dict[str, torch.Tensor]] = {"in": {}, "out": {}}
    input_sum = torch.zeros(inputs.shape[1:], dtype=torch.float64)
    recorder = _Recorder(view, tracked or view.layers, keep_grad=False)
    audited = {layer.name for layer in view.layers}
    with recorder.recording(), torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start:start + batch_size].to(device)
            recorder.calls.clear()
            forward_until_seen(view.model, batch)  # after the first batch, ended at the last tracked layer
            recorder.stop_after = recorder.stop_after or dict(recorder.calls)
            input_sum += batch.double().sum(0).cpu()
            for kind, store in (("in", recorder.inputs), ("out", recorder.outputs)):
                for name, value in store.items():
                    if name not in audited and value.shape[0] != batch.shape[0]:
                        raise ValueError(f"{name}'s {kind}put's first axis is not the samples")
                    total = value.double().sum(0)
                    sums[kind][name] = sums[kind][name] + total if name in sums[kind] else total
    n = inputs.shape[0]
    means = {kind: {name: (total / n).float().unsqueeze(0) for name, total in store.items()}
             for kind, store in sums.items()}
    means[INPUT] = (input_sum / n).float().unsqueeze(0).to(device)
    return means


def circuit_graph(scores: CircuitScores, max_edges: int, labels: dict[str, str] | None = None) -> nx.DiGraph:
    """The strongest ``max_edges`` edges (by absolute score) and their nodes as a DiGraph.

    Node attributes: ``layer``, ``score``, ``label`` (semantic label, when known), ``depth`` (0 = input);
    edge attribute: ``score``. ``graph.graph["left_out_edges"]`` counts the edges not kept.
    """
    kept = scores.edges.top(max_edges)
    depth = {layer.name: index + 1 for index, layer in enumerate(scores.layers)}
    depth[INPUT] = 0
    graph = nx.DiGraph(behaviour=scores.behaviour, samples=scores.samples, left_out_edges=len(scores.edges) - len(kept))
    for (source, target), score in kept:
        for node in (source, target):
            if node not in graph:
                layer = scores.node_layer[node]
                graph.add_node(node, layer=layer, depth=depth[layer], score=scores.nodes.get(node, 0.0),
                               label=(labels or {}).get(node, ""))
        graph.add_edge(source, target, score=score)
    return graph


def graph_to_json(graph: nx.DiGraph) -> dict:
    """Node and edge lists, the form findings carry as evidence and the report draws."""
    return {
        "nodes": [{"id": n, **{k: v for k, v in attrs.items()}} for n, attrs in graph.nodes(data=True)],
        "edges": [{"source": s, "target": t, "score": attrs["score"]} for s, t, attrs in graph.edges(data=True)],
        "left_out_edges": graph.graph.get("left_out_edges", 0),
        "behaviour": graph.graph.get("behaviour"),
    }


def attribution_flow(scores: CircuitScores, sinks: dict[str, float]) -> dict[str, float]:
    """Share of the behaviour's attribution that flows back to every node along |edge scores|.

    ``sinks`` weights the output nodes (e.g. by their node scores); their shares start proportional to it, and
    each node passes its share to its sources in proportion to the incoming edges' |scores|. The input nodes'
    shares then say how much of the behaviour comes from each input region. One matrix-vector product per layer
    pair (the edges of a pair join consecutive node groups).
    """
    groups = node_groups(scores)
    total_sink = sum(abs(w) for w in sinks.values()) or 1.0
    share = {name: torch.zeros(len(nodes), dtype=torch.float64) for name, nodes in groups.items()}
    index = {name: {node: i for i, node in enumerate(nodes)} for name, nodes in groups.items()}
    for sink, weight in sinks.items():
        share[scores.node_layer[sink]][index[scores.node_layer[sink]][sink]] += abs(weight) / total_sink
    for block in reversed(scores.edges.blocks):
        share[block.source_layer] += _normalised(block.scores) @ share[block.target_layer]
    return {node: value for name, nodes in groups.items() for node, value in zip(nodes, share[name].tolist())}


def source_shares(scores: CircuitScores, source: str) -> dict[str, float]:
    """For every node ``n``, the share of its attribution that flows back to ``source``: what
    ``attribution_flow(scores, {n: 1.0})[source]`` gives, for all nodes at once (one pass forward through the
    layer pairs: a node's share is its incoming edges' |score|-weighted mean of its sources' shares)."""
    groups = node_groups(scores)
    share = {name: torch.zeros(len(nodes), dtype=torch.float64) for name, nodes in groups.items()}
    home = scores.node_layer[source]
    position = groups[home].index(source)
    share[home][position] = 1.0
    for block in scores.edges.blocks:
        share[block.target_layer] = share[block.target_layer] + _normalised(block.scores).T @ share[block.source_layer]
        if block.target_layer == home:
            share[home][position] = 1.0
    return {node: value for name, nodes in groups.items() for node, value in zip(nodes, share[name].tolist())}


def node_groups(scores: CircuitScores) -> dict[str, list[str]]:
    """The nodes of each group (input regions, then each layer), in unit order."""
    groups: dict[str, list[str]] = {}
    for node, name in scores.node_layer.items():
        groups.setdefault(name, []).append(node)
    return groups


def _normalised(block: torch.Tensor) -> torch.Tensor:
    """|scores| with each target's column divided by its total (0 where a target has no scored edge)."""
    magnitude = block.abs().double()
    total = magnitude.sum(0, keepdim=True)
    return torch.where(total > 0, magnitude / total.clamp_min(1e-300), torch.zeros_like(magnitude))
