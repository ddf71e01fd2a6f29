"""A view of a model as auditable components, each with an address a user can type.

Layers are Linear and Conv modules, addressed by their module path (``features.3``). Their units are addressed
as ``features.3:ch17`` (a Conv channel) or ``classifier.0:u42`` (a Linear unit). The same string is used in the
CLI, the JSON, and every report. Hugging Face's ``Conv1D`` (GPT-2's ``h.0.mlp.c_fc``) is a Linear layer with its
weight stored transposed (:mod:`mechaudit.linear_maps`): its neurons are ``h.0.mlp.c_fc:u300``.

Attention blocks are layers of kind ``heads``, addressed by the attention module's path; a head is
``encoder.layer.2.attention:h5``. A head's activation is its slice of the attention output *before* the output
projection, read at the projection's input (the layer's hook ``site``). Recognised (:mod:`mechaudit.attention_heads`):
modules with an output projection that runs in the forward pass and a head count read from the module (a count or
a head size), or from the model's ``config`` for modules holding query/key/value projections (fused, as GPT-2's
``c_attn`` or a ``qkv`` Linear, or separate): Hugging Face BERT-, GPT-2-, Llama- and GPT-NeoX-style blocks,
``qkv``/``proj`` blocks and the like; and torch's ``nn.MultiheadAttention``, which applies ``out_proj``'s weights
without calling the module and is hooked by :mod:`mechaudit.torch_attention`. A module that computes attention
but whose heads cannot be split is named in :attr:`ModelView.notes` (and the audit's component list), not passed
over in silence.

The residual stream is a layer of kind ``stream``: any other module named in ``[audit] layers`` whose output (or
the first element of its output tuple) is one vector per token, (samples, tokens, width), such as a transformer
block (``encoder.layer.2``, ``blocks.1``). Its units are the stream's dimensions, ``blocks.1:d17``, and its
positions the tokens. Streams are only audited when named: they are not Linear or Conv modules.

A layer whose output does not hold the samples first is audited all the same when discovery verifies where they
are (:mod:`mechaudit.layouts`): on axis 1, as in torch's ``nn.TransformerEncoder`` with its default
``batch_first=False``, or in rows folded per sample, as in OPT's MLP (``fc1`` on ``hidden_states.reshape(-1,
width)``) or Swin's window attention; every hook then sees it samples first (:func:`register_hook`).

Discovery skips, with the reason in :attr:`ModelView.skipped`, a module whose output has no batch axis it can verify
(a Linear layer applied to a constant, such as a learned scale), a convolution applied to folded rows, and a module
that runs more than once per forward pass (a weight-shared block applied at every step): its statistics would mix
calls, and an intervention would hit every call at once. Naming such a module in ``[audit] layers`` is an error
that says why. A recurrent layer (``nn.GRU``, ``nn.LSTM``) is audited only when named, as a stream of its output
sequence; naming a module whose output tuple's first element the model does not read (a classifier of an RNN's
final state) is an error, since interventions on that stream would not reach the output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from . import linear_maps
from .addresses import UNIT_PREFIXES, format_address, parse_address
from .attention_heads import find_attention_blocks
from .errors import InputError
from .layouts import SAMPLES_FIRST, BatchSize, Layout, LayoutError, candidates, verified_layout
from .torch_attention import register_heads_hook, without_fast_path


@dataclass(frozen=True)
class Layer:
    """One auditable layer: its module path, kind, number of units, and place in the forward pass."""

    name: str
    kind: str
    size: int
    order: int
    is_output: bool = False
    #: Module path whose forward is hooked, when not ``name`` (heads: the output projection, hooked at its input).
    site: str = ""
    #: Where the activation holds the samples, verified at discovery (:mod:`mechaudit.layouts`); hooks see it
    #: samples first whatever it is.
    layout: Layout = SAMPLES_FIRST

    @property
    def prefix(self) -> str:
        return UNIT_PREFIXES[self.kind]

    def address(self, unit: int) -> str:
        return format_address(self.name, self.prefix, unit)

    def unit_name(self, unit: int) -> str:
        return f"{self.prefix}{unit}"


def layer_kind(module: nn.Module) -> str | None:
    if linear_maps.is_linear(module):  # nn.Linear, and Hugging Face's Conv1D (GPT-2), its weight transposed
        return "linear"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    return None


def sample_axis(module: nn.Module) -> int:
    """The axis of ``module``'s batched tensor arguments that holds the samples: 1 for a sequence-first module (one
    whose ``batch_first`` is False: ``nn.MultiheadAttention``, ``nn.LSTM``/``GRU``/``RNN``, read as (tokens, samples,
    width); ``nn.TransformerEncoderLayer`` keeps the flag only on its attention), else 0. Layer outputs are samples
    first wherever mechaudit reads them (:func:`register_hook` turns them so by the layer's verified
    :class:`~.layouts.Layout`; the heads of a sequence-first ``nn.MultiheadAttention`` are turned samples first by
    :mod:`.torch_attention`); a module's own inputs are not, so a reader of them asks here (or the layer's layout)."""
    return 1 if getattr(module, "batch_first", True) is False else 0


def units_view(output: torch.Tensor, layer: Layer) -> torch.Tensor:
    """Reshape a layer's output to (samples, units, positions); positions are spatial cells or tokens.

    Heads: the concatenated head outputs (samples, tokens, heads * head dim) become (samples, heads, tokens *
    head dim), so that a head is one unit whose positions are its output vector at every token."""
    if layer.kind == "heads":
        n, heads = output.shape[0], layer.size
        return output.reshape(n, -1, heads, output.shape[-1] // heads).transpose(1, 2).reshape(n, heads, -1)
    if layer.kind == "conv":
        return output.flatten(2) if output.dim() > 2 else output.unsqueeze(-1)
    if output.dim() == 2:
        return output.unsqueeze(-1)
    return output.movedim(-1, 1).flatten(2)


def from_units_view(units: torch.Tensor, like: torch.Tensor, layer: Layer) -> torch.Tensor:
    """Inverse of :func:`units_view`: back to the shape of the layer output ``like``."""
    if layer.kind == "heads":
        n, heads = like.shape[0], layer.size
        return units.reshape(n, heads, -1, like.shape[-1] // heads).transpose(1, 2).reshape(like.shape)
    if layer.kind == "conv" or like.dim() == 2:
        return units.reshape(like.shape)
    return units.reshape(like.movedim(-1, 1).shape).movedim(1, -1)


Recorded = tuple[str, "torch.Tensor | None"]
"""A module that ran at discovery and its output (None for ``nn.MultiheadAttention``'s heads)."""

LayerHook = Callable[[torch.Tensor, tuple], "torch.Tensor | None"]
"""``fn(activation, site_inputs)``: called on every forward of a layer; a tensor it returns replaces the activation."""


def register_hook(site: nn.Module, layer: Layer, fn: LayerHook,
                  batch: Callable[[], int | None] = lambda: None) -> torch.utils.hooks.RemovableHandle:
    """Hook ``layer`` at its site module: the one place where mechaudit reads or overwrites an activation.

    Linear/Conv: a forward hook, the activation is the module's output. Heads: a forward pre-hook on the output
    projection, the activation is its input (the concatenated heads); a returned tensor replaces that input
    (``nn.MultiheadAttention``: the same through :func:`~mechaudit.torch_attention.register_heads_hook`).
    Whatever the layer's :class:`~.layouts.Layout`, ``fn`` sees the activation samples first (:func:`_samples_first`).
    On a layer not samples first every hook replaces the output, by the (possibly edited) view it gave ``fn`` put
    back in the module's layout, so that a view ``fn`` keeps stays on the graph; where that view is a copy (folded
    rows of an output with 3 dimensions or more: ``Layout(k, rows)``), a kept activation does not see later in-place
    edits of the output by other hooks. ``batch``: the batch size of the forward pass running now
    (:class:`~.layouts.BatchSize`, as :meth:`ModelView.hook` gives it), to check each output's rows per sample.
    """
    fn = _naming_layer(layer, _samples_first(layer.layout, fn, batch))
    if layer.kind == "heads" and isinstance(site, nn.MultiheadAttention):
        return register_heads_hook(site, fn)
    if layer.kind == "heads":
        def pre_hook(_module: nn.Module, args: tuple):
            replaced = fn(args[0], args)
            return None if replaced is None else (replaced, *args[1:])
        return site.register_forward_pre_hook(pre_hook)

    if layer.kind == "stream":
        def stream_hook(_module: nn.Module, args: tuple, output):
            first = output[0] if isinstance(output, tuple) else output
            replaced = fn(first, args)
            if replaced is None:
                return None
            return (replaced, *output[1:]) if isinstance(output, tuple) else replaced
        hook = stream_hook
    else:
        def hook(_module: nn.Module, args: tuple, output):
            return fn(output, args)
    if layer.layout.is_samples_first:
        return site.register_forward_hook(hook)
    return _input_samples_first(site, layer, hook, batch)


class _Handles:
    """Several hook handles removed as one."""

    def __init__(self, *handles: torch.utils.hooks.RemovableHandle) -> None:
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _input_samples_first(site: nn.Module, layer: Layer, hook: Callable, batch: Callable[[], int | None]) -> _Handles:
    """``hook`` (a forward hook) given the site's first input samples first, as a view that the module reads (a
    pre-hook passes it on in the module's layout), so that a hook function keeping it for its gradient keeps a
    tensor of the graph: for a layer not samples first whose input is in the output's layout (a Linear layer's).
    Where a pre-hook registered later replaced the input, the input the module read is turned afresh (a view made
    after the forward: right in value, but no gradient reaches it through the module)."""
    layout = layer.layout
    kept: dict[str, torch.Tensor] = {}  # "view": what the hook sees; "passed": the exact tensor passed on

    def pre_hook(_module: nn.Module, args: tuple):
        kept.clear()
        if not args or not isinstance(args[0], torch.Tensor) or not layout.fits(args[0], batch()):
            return None
        kept["view"] = layout.samples_first(args[0], batch())
        kept["passed"] = layout.restored(kept["view"], args[0])
        return (kept["passed"], *args[1:])

    def forward_hook(module: nn.Module, args: tuple, output):
        try:
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if first is not None and kept and first is kept["passed"]:
                args = (kept["view"], *args[1:])
            elif first is not None and layout.fits(first, batch()):
                args = (layout.samples_first(first, batch()), *args[1:])
        finally:
            kept.clear()  # also when the module raised: nothing keeps the graph alive
        if output is None:  # called after the module raised (always_call)
            return None
        return hook(module, args, output)
    return _Handles(site.register_forward_pre_hook(_naming_layer(layer, pre_hook)),
                    site.register_forward_hook(forward_hook, always_call=True))


@contextmanager
def installed(handles: Iterable[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    """Keep hooks installed while the context is open, then remove them, also on an exception.

    Pass a generator (``installed(view.hook(layer, fn) for layer in layers)``): the hooks are installed inside the
    context, so one that fails to install never leaves the earlier ones behind."""
    with ExitStack() as stack:
        for handle in handles:
            stack.callback(handle.remove)
        yield


def _samples_first(layout: Layout, fn: LayerHook, batch: Callable[[], int | None]) -> LayerHook:
    """``fn`` called on the activation samples first (also as the site's first input when it is the activation, as
    for heads; a Linear layer's input is turned by :func:`_input_samples_first`); what it returns, or the view it was
    given (which it may have edited in place, or kept for its gradient), goes back in the module's layout."""
    if layout.is_samples_first:
        return fn

    def call(activation: torch.Tensor, args: tuple):
        view = layout.samples_first(activation, batch())
        if args and args[0] is activation:
            args = (view, *args[1:])
        replaced = fn(view, args)
        return layout.restored(view if replaced is None else replaced, activation)
    return call


def _naming_layer(layer: Layer, fn: Callable) -> Callable:
    """``fn``, with any exception it raises tagged with the layer (``failed_layer``), which the engine names; a
    :class:`~.layouts.LayoutError` also names it in its message."""
    def call(*args):
        try:
            return fn(*args)
        except LayoutError as exc:
            if getattr(exc, "failed_layer", None) is not None:
                raise
            named = LayoutError(f"layer {layer.name}: {exc}")
            named.failed_layer = layer.name  # type: ignore[attr-defined]
            raise named from None
        except Exception as exc:
            if getattr(exc, "failed_layer", None) is None:
                exc.failed_layer = layer.name  # type: ignore[attr-defined]
            raise
    return call


def attention_blocks(model: nn.Module) -> dict[str, tuple[str, int]]:
    """Recognised attention blocks: module path -> (output projection path, number of heads)."""
    return find_attention_blocks(model).blocks


class ModelView:
    """The layers of a model that the audit can address, in the order the forward pass runs them."""

    def __init__(self, model: nn.Module, layers: list[Layer], skipped: dict[str, str] | None = None,
                 notes: dict[str, str] | None = None) -> None:
        self.model = model
        self.layers = layers
        #: Modules left out of the audit: module path -> why (see the module docstring).
        self.skipped = dict(skipped or {})
        #: Module path -> why it is not audited as it might be expected (attention whose heads are not split).
        self.notes = dict(notes or {})
        self._by_name = {layer.name: layer for layer in layers}
        self._modules = dict(model.named_modules())

    @classmethod
    def discover(cls, model: nn.Module, sample: torch.Tensor, only: tuple[str, ...] = ()) -> "ModelView":
        """Run ``sample`` through ``model`` once, recording which Linear/Conv layers and attention blocks run and
        in what order (an attention block when its output projection runs); once more, on the samples reordered,
        when an output's samples are not surely on axis 0 (:func:`_layouts`)."""
        modules = dict(model.named_modules())
        scripted = _scripted(modules)
        inside = [name for name in only if any(name == s or name.startswith(f"{s}.") or not s for s in scripted)]
        if inside:
            raise InputError("layers", f"'{inside[0]}' is inside a TorchScript module: {SCRIPTED}")
        candidates = {name: m for name, m in modules.items() if name and layer_kind(m)}
        found = find_attention_blocks(model)
        blocks = found.blocks
        streams = [name for name in only if name not in candidates and name not in blocks and name in modules]
        unknown = [name for name in only if name not in candidates and name not in blocks and name not in streams]
        if unknown:
            raise InputError("layers", f"'{unknown[0]}' is not a module of the model")
        tuples: set[str] = set()  # the named streams whose module returns a tuple: only they need the autograd check

        def recorded(inputs: torch.Tensor, names: set[str] | None = None) -> tuple[list[Recorded], object]:
            """Each module's output on ``inputs`` (only those of ``names``, when given), and the model's."""
            seen: list[tuple[str, torch.Tensor | None]] = []
            wanted = (lambda name: True) if names is None else names.__contains__
            handles = [m.register_forward_hook(_recorder(name, seen)) for name, m in candidates.items() if wanted(name)]
            handles += [modules[name].register_forward_hook(_recorder(name, seen, tuples)) for name in streams
                        if wanted(name)]
            handles += [modules[site].register_forward_pre_hook(_head_recorder(name, seen))
                        for name, (site, _) in blocks.items() if wanted(name)]
            with installed(handles), torch.no_grad(), without_fast_path():
                return seen, model(inputs)
        seen, output = recorded(sample)
        layouts, unchecked = _layouts(seen, sample, recorded)
        skipped = {name or "(the whole model)": SCRIPTED for name in scripted}
        skipped.update(_unauditable(seen, sample.shape[0], layouts, candidates))
        skipped.update(unchecked)
        named = [name for name in only if name in skipped]
        if named:
            raise InputError("layers", f"'{named[0]}' cannot be audited: {skipped[named[0]]}")
        unread = _unread_streams(model, sample, {name: modules[name] for name in streams if name in tuples})
        if unread:
            raise InputError("layers", f"'{unread[0]}' cannot be audited: the model's output does not read the first "
                                       "element of its output tuple, the stream mechaudit reads and intervenes on (it "
                                       "reads another, as a classifier of an RNN's final state h_n)")
        skipped.update({name: RECURRENT.format(type(module).__name__) for name, module in modules.items()
                        if isinstance(module, nn.RNNBase) and name not in only and name not in skipped})
        seen = [item for item in seen if item[0] not in skipped]
        order: dict[str, int] = {}
        for name, _ in seen:
            order.setdefault(name, len(order))
        missing = [name for name in streams if name not in order]
        if missing:
            raise InputError("layers", f"'{missing[0]}' is not a Linear or Conv module, an attention block, nor a "
                                       "module whose output is one vector per token (samples, tokens, width)")
        last = next((item for item in reversed(seen) if item[0] not in blocks and item[0] not in streams), None)
        layers = []
        for name, index in order.items():
            if name in blocks:
                layers.append(Layer(name, "heads", blocks[name][1], index, site=blocks[name][0],
                                    layout=layouts.get(name, SAMPLES_FIRST)))
                continue
            if name in streams:
                layers.append(Layer(name, "stream", int(dict(seen)[name].shape[-1]), index,
                                    layout=layouts.get(name, SAMPLES_FIRST)))
                continue
            module = candidates[name]
            kind = layer_kind(module)
            size = linear_maps.out_features(module) if kind == "linear" else module.out_channels
            layout = layouts.get(name, SAMPLES_FIRST)
            is_output = last is not None and name == last[0] and isinstance(output, torch.Tensor) and (
                layout.fits(last[1], sample.shape[0])) and (  # its logits, in any layout
                layout.samples_first(last[1], sample.shape[0]).shape == output.shape)
            layers.append(Layer(name, kind, size, index, is_output, layout=layout))
        if only:
            layers = [layer for layer in layers if layer.name in only]
        return cls(model, layers, skipped, found.notes)

    @property
    def hidden_layers(self) -> list[Layer]:
        """Layers whose units are internal (the output layer's units are the model's outputs)."""
        return [layer for layer in self.layers if not layer.is_output]

    def module(self, layer: Layer | str) -> nn.Module:
        return self._modules[layer if isinstance(layer, str) else layer.name]

    def site(self, layer: Layer) -> nn.Module:
        """The module whose forward is hooked for ``layer`` (itself, or a head block's output projection)."""
        return self._modules[layer.site or layer.name]

    def hook(self, layer: Layer, fn: LayerHook) -> torch.utils.hooks.RemovableHandle:
        """:func:`register_hook` at ``layer``'s site; for a layer not samples first, with the model's batch size
        recorded on every forward (:class:`~.layouts.BatchSize`), so that an output holding another number of
        rows per sample than at discovery raises (naming the layer) instead of splitting the samples wrongly."""
        if layer.layout.is_samples_first:
            return register_hook(self.site(layer), layer, fn)
        batch = BatchSize()
        return _Handles(*batch.track(self.model), register_hook(self.site(layer), layer, fn, batch))

    def layer(self, name: str) -> Layer:
        if name not in self._by_name:
            raise KeyError(name)
        return self._by_name[name]

    def resolve(self, address: str) -> tuple[Layer, int | None]:
        """Parse ``features.3`` or ``features.3:ch17`` into (layer, unit index or None)."""
        try:
            parsed = parse_address(address)
        except ValueError:
            parsed = None
        if parsed is None or parsed.layer not in self._by_name:
            raise InputError(f"address '{address}'", "names no auditable layer of the model")
        layer = self._by_name[parsed.layer]
        if parsed.index is None:
            return layer, None
        unit = parsed.index
        if parsed.prefix != layer.prefix or unit >= layer.size:
            raise InputError(f"address '{address}'", f"layer {layer.name} has units {layer.prefix}0..{layer.prefix}"
                                                    f"{layer.size - 1}")
        return layer, unit

    def describe(self) -> list[dict]:
        """One entry per layer; a layer inside an attention block whose heads are not split carries its note."""
        return [{"layer": layer.name, "kind": layer.kind, "units": layer.size, "unit_prefix": layer.prefix,
                 "output": layer.is_output, **({"note": note} if (note := self.note(layer.name)) else {}),
                 **({} if layer.layout.is_samples_first else {"layout": layer.layout.describe()})}
                for layer in self.layers]

    def layouts(self) -> dict[str, str]:
        """Each layer not samples first, and where its output holds the samples (:class:`~.layouts.Layout`)."""
        return {layer.name: layer.layout.describe() for layer in self.layers if not layer.layout.is_samples_first}

    def note(self, name: str) -> str | None:
        """The note on the attention block that holds (or is) the module ``name``, if any."""
        for block, note in self.notes.items():
            if name == block or name.startswith(f"{block}."):
                return f"{block} {note}"
        return None


SCRIPTED = ("ScriptModules refuse forward hooks, so no layer inside a TorchScript archive can be audited; rules "
            "on inputs and outputs still run (load the model from its Python code, a factory plus weights, to audit "
            "its layers)")


RECURRENT = ("a recurrent layer ({}): audited only when named in [audit] layers, as a stream of its output sequence "
             "(samples, tokens, width), for a model that reads that sequence")


def _unread_streams(model: nn.Module, sample: torch.Tensor, streams: dict[str, nn.Module]) -> list[str]:
    """The streams whose module returns a tuple and whose first element (what a stream hook reads and replaces) the
    model's output does not depend on (an RNN whose final state is read): by autograd, on ``sample``, through a
    zero added to each first element (the graph stays whole, so a stream read through another named one counts)."""
    leaves: dict[str, torch.Tensor] = {}

    def replace(name: str):
        def hook(_module, _inputs, output):
            if _tuple_stream(output):
                leaves[name] = torch.zeros_like(output[0], requires_grad=True)
                return (output[0] + leaves[name], *output[1:])
            return None
        return hook

    if not streams:
        return []
    handles = [module.register_forward_hook(replace(name)) for name, module in streams.items()]
    try:
        with installed(handles), torch.enable_grad():
            output = model(sample)
            if not leaves or not isinstance(output, torch.Tensor):
                return []
            if not output.requires_grad:  # no leaf reaches the output (frozen parameters leave nothing else)
                return list(leaves)
            grads = torch.autograd.grad(output.float().sum(), list(leaves.values()), allow_unused=True)
    except Exception:  # noqa: BLE001 - a model autograd cannot run through keeps its streams as they are
        return []
    return [name for name, grad in zip(leaves, grads) if grad is None]


def _tuple_stream(output: object) -> bool:
    """Whether a stream module's ``output`` is a tuple whose first element is a floating tensor."""
    return isinstance(output, tuple) and bool(output) and isinstance(output[0], torch.Tensor) and (
        output[0].is_floating_point())


def _scripted(modules: dict[str, nn.Module]) -> list[str]:
    """The outermost TorchScript modules (path "" for a whole scripted model)."""
    found: list[str] = []
    for name, module in modules.items():
        if isinstance(module, torch.jit.ScriptModule) and not any(
                not outer or name.startswith(f"{outer}.") for outer in found):
            found.append(name)
    return found


def _layouts(seen: list[Recorded], sample: torch.Tensor, recorded: Callable[..., tuple[list[Recorded], object]]
             ) -> tuple[dict[str, Layout], dict[str, str]]:
    """The verified layout of each output recorded once whose samples are not (or not surely) on axis 0: by one more
    forward pass on the samples in another order (:func:`~.layouts.verified_layout`), run only when one is needed,
    recording only the outputs in doubt, with the RNG state restored after it (the audit's draws do not move).
    Also, for the outputs in doubt that cannot be checked because the discovery samples are all the same, why."""
    batch = sample.shape[0]
    counts: dict[str, int] = {}
    for name, _ in seen:
        counts[name] = counts.get(name, 0) + 1
    unsure = {name: output for name, output in seen if counts[name] == 1 and output is not None and output.dim()
              and any(not layout.is_samples_first for layout in candidates(tuple(output.shape), batch))}
    if batch < 2 or not unsure:
        return {}, {}
    order = torch.arange(batch).roll(1)
    reordered = sample[order.to(sample.device)]
    if torch.equal(reordered, sample):
        return {}, {name: ALIKE.format(tuple(output.shape), batch) for name, output in unsure.items()
                    if output.shape[0] != batch}
    devices = [sample.device] if sample.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        again = dict(recorded(reordered, set(unsure))[0])
    found = {}
    for name, output in unsure.items():
        layout = verified_layout(output, again[name], batch, order.to(output.device)) if isinstance(
            again.get(name), torch.Tensor) else None
        if layout is not None and not layout.is_samples_first:
            found[name] = layout
    return found, {}


ALIKE = ("its output {} is not samples first for the {} discovery samples, and where they are cannot be checked: "
         "the discovery samples are all the same (give distinct inputs)")


def _unauditable(seen: list[tuple[str, torch.Tensor | None]], batch: int, layouts: dict[str, Layout] | None = None,
                 modules: dict[str, nn.Module] | None = None) -> dict[str, str]:
    """Modules that ran but cannot be audited, with the reason: no batch axis (none verified in ``layouts``), a
    convolution on folded rows, or several calls per forward."""
    layouts, modules = layouts or {}, modules or {}
    calls: dict[str, int] = {}
    reasons = {}
    for name, output in seen:
        calls[name] = calls.get(name, 0) + 1
        if name in layouts and isinstance(modules.get(name), (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            reasons[name] = (f"its output {tuple(output.shape)} holds {layouts[name].describe()}: a convolution on "
                             "folded frames or windows is not audited (mechaudit audits convolutions with one row "
                             "per sample)")
        elif name not in layouts and output is not None and (output.dim() == 0 or output.shape[0] != batch):
            reasons[name] = _no_batch_axis(tuple(output.shape), batch)
    for name, count in calls.items():
        if count > 1:
            reasons.setdefault(name, f"it runs {count} times per forward pass (a shared block?): its statistics would "
                                      "mix the calls; mechaudit audits modules called once")
    return reasons


def _no_batch_axis(shape: tuple[int, ...], batch: int) -> str:
    """Why an output whose first axis is not the samples is not audited; sequence-first layouts are named."""
    if batch > 1 and len(shape) >= 3 and shape[1] == batch:
        return (f"its output {shape} has the size of the {batch} samples on axis 1, but does not follow them when "
                "they are reordered (checked at discovery; or the forward pass is not deterministic): mechaudit "
                "audits outputs whose samples it can locate")
    if batch > 1 and len(shape) >= 2 and shape[0] > batch and shape[0] % batch == 0:
        return (f"its output {shape} has {shape[0]} rows for the {batch} samples ({batch} x {shape[0] // batch}), "
                "but they do not follow the samples when these are reordered (checked at discovery): not each "
                "sample's rows together nor row by row (mixed across samples, applied to a constant, or a forward "
                "pass that is not deterministic); mechaudit audits outputs whose samples it can locate")
    return (f"its output {shape} has no batch axis (it does not follow the {batch} samples of the forward pass: "
            "applied to a constant?)")


def _recorder(name: str, seen: list, tuples: set[str] | None = None):
    """Record a module's output; for a stream (``tuples`` given), the first element of a tuple output, only if
    (samples, tokens, w), and in ``tuples`` whether it returned a tuple (:func:`_tuple_stream`)."""
    def hook(_module, _inputs, output):
        if tuples is not None:
            if _tuple_stream(output):
                tuples.add(name)
            output = output[0] if isinstance(output, tuple) and output else output
            if isinstance(output, torch.Tensor) and output.dim() == 3:
                seen.append((name, output))
        elif isinstance(output, torch.Tensor):
            seen.append((name, output))
    return hook


def _head_recorder(name: str, seen: list):
    """Record that a head block's output projection ran, with its input (the concatenated heads) for the batch-axis
    check; ``nn.MultiheadAttention`` puts its samples first itself (:mod:`mechaudit.torch_attention`)."""
    def hook(module, args):
        if args and isinstance(args[0], torch.Tensor):
            seen.append((name, None if isinstance(module, nn.MultiheadAttention) else args[0]))
    return hook
