"""Does a layer's input split by the units of the audited layer before it? The one check that circuit node and
edge scores (:mod:`.circuits`), exact edge patching (:mod:`.edge_patching`) and node ablation (:mod:`.node_ablation`)
share, so that they all patch the same tensor.

A layer's input splits by ``previous``'s units when it is a unit-wise function of ``previous``'s output alone:
only elementwise functions (the nonlinearity), pooling and flattening sit between the two (MLPs, CNNs). Then
unit ``u``'s part of it (after ``u``'s nonlinearity, pooling, flattening) is what the next layer reads from ``u``.
Shapes alone cannot tell: a residual sum ``relu(c1(h)) + h`` has the shape of ``c1``'s output. So
:func:`unit_splits` checks it numerically on one batch, and also whether that input is the only way the earlier
layer reaches the model's output (a U-Net skip or a second head reading the same activation is another): only
then is patching a unit's part of it the same as removing the unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from .. import linear_maps
from ..activations import collect_units
from ..model_view import Layer, ModelView, installed, units_view
from .early_stop import EnoughSeen, forward_until_seen


def split_input(previous: Layer, layer: Layer, module: nn.Module, x_in: torch.Tensor) -> torch.Tensor | None:
    """``layer``'s input ``x_in`` split by ``previous``'s units (samples, units, ...), when the shapes allow it
    (heads, residual streams, grouped or non-zero-padded convolutions never split); else None. A view of ``x_in``
    where possible. Whether the split is right (nothing else reaches the input) is :func:`unit_splits`'s job.

    Linear (and Hugging Face ``Conv1D``) layers act on the last axis: a 2-D input (samples, features) splits into
    (samples, units, features per unit) (a flattened feature map gives each unit several features); an input with
    token (or other leading) axes, (samples, *positions, features), splits when each unit is one feature, into
    (samples, units, *positions, 1): a transformer MLP neuron's part of the down projection's input (its GELU
    output at every token). :func:`joined` is the inverse."""
    if "heads" in (previous.kind, layer.kind) or "stream" in (previous.kind, layer.kind):
        return None
    if layer.kind == "conv" and (module.groups != 1 or module.padding_mode != "zeros"):
        return None
    if linear_maps.is_linear(module):
        features = x_in.shape[-1]
        if x_in.dim() == 2 and features % previous.size == 0:
            return x_in.reshape(x_in.shape[0], previous.size, features // previous.size)
        if x_in.dim() > 2 and features == previous.size:
            return x_in.unsqueeze(-1).movedim(-2, 1)
        return None
    if x_in.shape[1] != previous.size:
        return None
    return x_in


def joined(split: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`split_input`: ``split`` (samples, units, ...) back in the layout of the layer input
    ``like`` it was split from."""
    if split.dim() == like.dim():  # a convolution's input: the units are its channels already
        return split.reshape(like.shape)
    return split.movedim(1, -2).reshape(like.shape)  # a Linear input: the units were the last axis's features


@dataclass(frozen=True)
class UnitSplits:
    """Per pair of consecutive audited layers, keyed by the later one's name: ``splits``, whether its input splits
    by the earlier layer's units (its edges are read off its weights); ``only_path``, whether moreover the earlier
    layer reaches the model's output through that input alone (its units are scored and ablated there)."""

    splits: dict[str, bool]
    only_path: dict[str, bool]
    readers: dict[str, str] = field(default_factory=dict)
    """Per audited layer, the unaudited module found by :func:`module_readers` whose input passed both checks (it
    splits by the layer's units and is their only path to the output), when the next audited layer's input does not."""

    def read_at(self, layer: str) -> bool:
        """Whether ``layer``'s input is where the units of the layer before it are scored and ablated."""
        return self.splits.get(layer, False) and self.only_path.get(layer, False)

    def reader_of(self, layer: str, following: str | None) -> str | None:
        """The module at whose input ``layer``'s units are scored and ablated: the next audited layer
        ``following`` when its input splits by them, else the unaudited reader found for ``layer``, else None
        (they are scored and ablated at ``layer``'s own output)."""
        if following is not None and self.read_at(following):
            return following
        return self.readers.get(layer)


def module_readers(view: ModelView, batch: torch.Tensor) -> dict[str, Layer]:
    """Per audited Linear layer (GPT-2's ``c_fc``, BERT's ``intermediate.dense``) that is read by a module the audit
    does not cover (the down projection ``c_proj`` / ``output.dense`` when only the up projection is audited): that
    reader, as a :class:`Layer` to hook. The reader is the first Linear or Hugging Face ``Conv1D`` called after the
    layer (one forward pass of ``batch``) whose input's last axis has the layer's width and depends on the layer's
    output (a partial backward pass per module tried), if its first axis is the samples; a candidate only:
    :func:`unit_splits` checks numerically that its input is a unit-wise function of the layer's output alone and
    their only path to the output. Layers whose first such module is an audited layer get none (that layer is
    checked as the next audited layer)."""
    modules = {name: m for name, m in view.model.named_modules() if name and linear_maps.is_linear(m)}
    calls: list[tuple[str, torch.Tensor]] = []
    leaves: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                calls.append((name, args[0]))
        return hook

    def leaf(name: str):
        def hook(output: torch.Tensor, _args: tuple) -> torch.Tensor:
            if name in leaves:  # a layer called again (weights shared across blocks): its first call only
                return output
            leaves[name] = output.detach().requires_grad_(True)
            return leaves[name].clone()  # an in-place operation after the layer must not modify the leaf
        return hook
    linear = [layer for layer in view.layers if layer.kind == "linear" and not layer.is_output
              and layer.layout.is_samples_first]  # a reader's input is read as the module gets it: samples first
    with installed(chain((m.register_forward_pre_hook(record(name)) for name, m in modules.items()),
                         (view.hook(layer, leaf(layer.name)) for layer in linear))), torch.enable_grad():
        view.model(batch)
    audited = {layer.name for layer in view.layers}
    found = {}
    for layer in linear:
        first = next((i for i, (name, _) in enumerate(calls) if name == layer.name), None)
        if first is None or layer.name not in leaves:
            continue
        # the first module of the layer's width that reads the layer's output at all (a sibling Linear of the same
        # width on another tensor is passed over); a reader whose input's first axis is not the samples (a
        # sequence-first ``h.transpose(0, 1)``) passes the unit-wise checks, but its input means (summed over the
        # first axis) would be wrong: rejected
        reader = next(((name, x) for name, x in calls[first + 1:]
                       if name != layer.name and x.dim() >= 2 and x.shape[-1] == layer.size
                       and _reads(x, leaves[layer.name])), None)
        if reader is not None and reader[0] not in audited and reader[1].shape[0] == batch.shape[0]:
            found[layer.name] = reader_layer(view, reader[0])
    return found


def _reads(x: torch.Tensor, leaf: torch.Tensor) -> bool:
    """Whether ``x`` depends on ``leaf`` in the autograd graph (one partial backward pass)."""
    if not x.requires_grad:
        return False
    return torch.autograd.grad(x, leaf, torch.ones_like(x), retain_graph=True, allow_unused=True)[0] is not None


def reader_layer(view: ModelView, name: str) -> Layer:
    """The audited layer ``name``, or an unaudited Linear/Conv1D module of that name as a :class:`Layer` to hook."""
    try:
        return view.layer(name)
    except KeyError:
        return Layer(name, "linear", linear_maps.out_features(view.module(name)), -1)


def unit_splits(view: ModelView, batch: torch.Tensor, pool: torch.Tensor,
                inputs: dict[str, torch.Tensor] | None = None, readers: dict[str, Layer] | None = None) -> UnitSplits:
    """For each pair of consecutive audited layers, keyed by the later one's name (and each pair of a layer and
    its unaudited reader in ``readers``, :func:`module_readers`, keyed by the reader's name): whether its input is, on
    ``batch``, a unit-wise function of the earlier layer's output alone (so that :func:`split_input` is right),
    and whether the earlier layer reaches the output only through it (:class:`UnitSplits`).
    Three numeric checks beyond the shapes:

    * nothing else reaches it: run on other inputs (as many as ``batch`` holds, drawn at random with a fixed seed
      from ``pool``, all the inputs scored and their references: :func:`comparison_pool`, so that a batch whose
      samples agree on what bypasses the layer, as in data sorted by group, does not hide the bypass) with the
      earlier layer's output held at its value on ``batch``, the later layer's input must not change (a residual
      sum ``relu(c1(h)) + h`` does);
    * no mixing of units: a vector-Jacobian product from the later layer's input back to the earlier layer's
      output, with the cotangent's units scaled by random factors, must come back scaled unit by unit;
    * the only path (``only_path``): with the earlier layer's output set to its value on the other inputs and the
      later layer's input held at its clean value, the model's output must not change.

    Cost: one forward pass with the earlier layers' outputs made leaves of the graph, and two per candidate pair
    (the first ending at the later layer's input when that layer ran once on ``batch``), and one for the only-path
    check of the pairs that split. The graph of the first pass is kept, until the VJPs are done, behind the later
    layers' inputs whose shape can split (:func:`split_input`): all that input depends on, which reaches past the
    leaves to the model's input where something else feeds it (a residual sum, which the first check rejects); an
    input whose shape cannot split is kept detached and its pair costs no pass. Layers of heads and residual streams
    never split and cost nothing; nor do pairs whose shapes cannot split when ``inputs`` (each layer's input on
    ``batch`` as a caller already recorded it) tells so before the first pass. A pair is False when there is
    nothing to compare with (``pool`` holds nothing but ``batch``'s samples in its order)."""
    layers = view.layers
    pairs = [(previous, layer) for previous, layer in zip(layers, layers[1:])]
    pairs += [(view.layer(name), reader) for name, reader in (readers or {}).items()]
    result = {layer.name: False for _, layer in pairs}
    only_path = dict(result)
    other = _drawn(pool, batch.shape[0]).to(batch.device)
    candidates = [(p, la) for p, la in pairs if "heads" not in (p.kind, la.kind) and "stream" not in (p.kind, la.kind)
                  and (inputs is None or la.name not in inputs
                       or split_input(p, la, view.module(la), inputs[la.name]) is not None)]
    if not candidates or other.shape != batch.shape or torch.equal(other, batch):
        return UnitSplits(result, only_path)
    found = {name: reader.name for name, reader in (readers or {}).items()}
    leaves: dict[str, torch.Tensor] = {}
    reads: dict[str, torch.Tensor] = {}

    def leaf(name: str):
        def hook(output: torch.Tensor, _args: tuple) -> torch.Tensor:
            leaves[name] = output.detach().requires_grad_(True)
            return leaves[name].clone()  # an in-place operation after the layer must not modify the leaf
        return hook

    def read(layer: Layer):
        module, previous = view.module(layer), [p for p, la in candidates if la.name == layer.name]

        def hook(_output: torch.Tensor, args: tuple) -> None:
            x = args[0]
            # the graph behind the input is kept only where some pair's VJP check can use it: an input whose shape
            # cannot split (``_splits`` then answers False at once) is kept detached, so that it does not hold the
            # rest of the forward graph alive during the other pairs' passes
            splittable = isinstance(x, torch.Tensor) and any(
                split_input(p, layer, module, x.detach()) is not None for p in previous)
            reads[layer.name] = x if splittable or not isinstance(x, torch.Tensor) else x.detach()
            calls[layer.name] = calls.get(layer.name, 0) + 1
        return hook
    calls: dict[str, int] = {}
    sources = {p.name: p for p, _ in candidates}
    targets = {la.name: la for _, la in candidates}
    with installed(chain((view.hook(p, leaf(p.name)) for p in sources.values()),
                         (view.hook(la, read(la)) for la in targets.values()))), torch.enable_grad():
        clean = _tensors(view.model(batch))
    for previous, layer in candidates:
        if previous.name in leaves and layer.name in reads:
            result[layer.name] = _splits(view, previous, layer, leaves[previous.name], reads[layer.name], other,
                                         stop=calls[layer.name] == 1)
    reads = {name: value.detach() for name, value in reads.items()}  # the graphs between leaves and reads: freed
    leaves.clear()
    if any(result.values()):
        moved = {p.name: p for p, la in candidates if result[la.name]}  # a layer checked with two readers: once
        elsewhere = _outputs_on(view, list(moved.values()), other)
        for previous, layer in candidates:
            if result[layer.name]:
                only_path[layer.name] = _only_path(view, previous, layer, elsewhere[previous.name],
                                                   reads[layer.name], batch, clean)
    return UnitSplits(result, only_path, {name: reader for name, reader in found.items()
                                          if result[reader] and only_path[reader]})


def comparison_pool(inputs: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    """What :func:`unit_splits` draws its other inputs from: all the scored ``inputs`` and, when there are any,
    their ``reference`` (corrupted) twins."""
    return inputs if reference is None else torch.cat([inputs, reference])


def _drawn(pool: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` samples of ``pool`` drawn without replacement by a seeded permutation (the first ones again
    when ``pool`` holds fewer)."""
    order = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(0))
    return pool[order.repeat(-(-count // max(pool.shape[0], 1)))[:count]]


def _tensors(output) -> list[torch.Tensor]:
    """The floating-point tensors of a model's output (a tensor, a tuple, a dict or a Hugging Face ModelOutput)."""
    return [x.detach() for x in tree_leaves(output) if isinstance(x, torch.Tensor) and x.is_floating_point()]


def _close(a: list[torch.Tensor], b: list[torch.Tensor], chunk_elements: int = 2 ** 22) -> bool:
    """``torch.allclose`` of each pair (rtol 1e-4, atol 1e-5 of ``y``'s largest finite magnitude), compared in
    slices of ``chunk_elements`` numbers of the flattened tensors: a (samples, tokens, vocabulary) logit tensor,
    or one huge sample, is compared with temporaries of a slice's size (a non-contiguous tensor is copied once to
    be flattened). False where the shapes differ or either side holds a NaN; an infinity is close only to the
    same infinity."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return False
    for x, y in zip(a, b):
        xs, ys = x.reshape(-1).split(chunk_elements), y.reshape(-1).split(chunk_elements)
        if any(part.isnan().any() for part in chain(xs, ys)):
            return False
        largest = max((float(torch.where(part.isfinite(), part.abs(), 0).max()) for part in ys if part.numel()),
                      default=0.0)
        atol = 1e-5 * max(largest, 1e-12)
        if not all(torch.allclose(x_part, y_part, rtol=1e-4, atol=atol) for x_part, y_part in zip(xs, ys)):
            return False
    return True


def _outputs_on(view: ModelView, layers: list[Layer], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's output on ``inputs`` (one forward pass), on ``inputs``' device."""
    outputs = collect_units(view, layers, inputs, inputs.shape[0], inputs.device, lambda _layer, output: output)
    return {name: output.to(inputs.device) for name, output in outputs.items()}


def _only_path(view: ModelView, previous: Layer, layer: Layer, moved: torch.Tensor, clean_in: torch.Tensor,
               batch: torch.Tensor, clean: list[torch.Tensor]) -> bool:
    """Whether the model's output on ``batch`` stays ``clean`` when ``previous``'s output is ``moved`` (its value on
    other inputs) while ``layer``'s input is held at ``clean_in``: nothing but that input carries ``previous``."""
    module = view.module(layer)

    def handles():
        yield view.hook(previous, lambda _output, _args: moved)
        yield module.register_forward_pre_hook(lambda _module, args: (layer.layout.restored(clean_in, args[0]),
                                                                      *args[1:]))
    with installed(handles()), torch.no_grad():
        return _close(_tensors(view.model(batch)), clean)


def _splits(view: ModelView, previous: Layer, layer: Layer, out: torch.Tensor, read: torch.Tensor,
            other: torch.Tensor, stop: bool = False) -> bool:
    """The first two checks of :func:`unit_splits` for one pair. ``stop``: ``layer`` runs once per forward pass
    (as it did on ``batch``), so the pass on ``other`` ends at its input (the rest of the model is not run)."""
    module = view.module(layer)
    if not isinstance(read, torch.Tensor) or split_input(previous, layer, module, read.detach()) is None:
        return False
    clean_out, clean_in = out.detach(), read.detach()
    seen: dict[str, torch.Tensor] = {}

    def record(_output: torch.Tensor, args: tuple) -> None:
        seen["input"] = args[0].detach()
        if stop:
            raise EnoughSeen
    hooks = ((previous, lambda _output, _args: clean_out), (layer, record))
    with installed(view.hook(at, fn) for at, fn in hooks), torch.no_grad():
        forward_until_seen(view.model, other)
    if "input" not in seen or not _close([seen["input"]], [clean_in]):
        return False
    if not read.requires_grad:
        return False
    generator = torch.Generator().manual_seed(0)
    cotangent = torch.randn(read.shape, generator=generator).to(read)
    factors = (torch.rand(previous.size, generator=generator) + 0.5).to(read)
    split = split_input(previous, layer, module, cotangent)
    scaled = joined(split * factors.view(1, -1, *([1] * (split.dim() - 2))), read)
    (plain,) = torch.autograd.grad(read, out, cotangent, retain_graph=True, allow_unused=True)
    (back,) = torch.autograd.grad(read, out, scaled, retain_graph=True, allow_unused=True)
    if plain is None or back is None:
        return False
    expected = units_view(plain, previous) * factors.view(1, -1, 1)
    return torch.allclose(units_view(back, previous), expected, rtol=1e-4,
                          atol=1e-5 * float(expected.abs().max().clamp_min(1e-12)))
