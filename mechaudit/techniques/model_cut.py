"""Cut a model's forward pass at its layers (``torch.fx``): the part before a layer runs once, the part after it can
be rerun on changed activations.

For each layer, a :class:`Cut`. Its activation is the layer module's output (for attention heads, the input of
the output projection). When only single-input unit-wise operations (activation functions, pooling, flattening)
lead from the activation to the next Linear or Conv module and nothing else reads them, the cut sits at that
module's output (*delta mode*): ``chain`` maps the activation to that module's input, and a change of one unit
reaches that input only where the unit's ``supports`` say, so the module's output changes by the change of those
elements through their weights alone. Otherwise the cut sits at the activation. ``rest`` computes the model's
output from the cut value and the values computed before the cut and read after it (``later``: skip
connections). One ``upstream`` module computes, from the model's input, every value any cut needs.

A layer is left uncut (callers fall back to forward hooks) when the module runs more than once, or a value read
after the cut does not follow the batch (a batch size read before the layer and used after it).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from .. import linear_maps
from ..loading import forward_kwargs
from ..model_view import Layer, ModelView, from_units_view, units_view


@contextlib.contextmanager
def quiet_fx() -> Iterator[None]:
    """Keep torch.fx from printing a traced module's traceback to stderr when it raises: callers catch the error
    and fall back to forward hooks, so the traceback would only alarm the user."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


class NothingToCut(ValueError):
    """The model traces, but none of the layers can be cut: ``skipped`` says why for each."""

    def __init__(self, skipped: dict[str, str]) -> None:
        super().__init__("no layer can be cut: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        self.skipped = skipped


@dataclass
class Cut:
    """The model cut at one layer (see the module docstring)."""

    layer: Layer
    rest: fx.GraphModule
    slots: list[int]                         # upstream outputs: activation, [linear input, linear output,] later...
    batched: list[bool]                      # which later values carry the batch dimension
    chain: fx.GraphModule | None = None
    linear: nn.Module | None = None
    supports: torch.Tensor | None = None     # (units, *linear input shape): where each unit changes that input
    index: torch.Tensor | None = None        # (units, c): each unit's columns (Linear) or channels (Conv) there
    separable: bool = False                  # each element of that input depends on one unit only
    channels_last: frozenset = frozenset()   # parts ("chain", "rest") run in channels-last layout

    @property
    def delta(self) -> bool:
        return self.linear is not None

    def values(self, upstream: tuple) -> tuple:
        """This cut's values out of the upstream outputs: (activation, [linear input, linear output,] later...)."""
        return tuple(upstream[slot] for slot in self.slots)

    def later(self, values: tuple) -> tuple:
        return values[3:] if self.delta else values[1:]

    def run(self, part: str, value: torch.Tensor, *others) -> torch.Tensor:
        """Run ``chain`` or ``rest``, in channels-last layout where that gives the same values (faster on CPU)."""
        if part in self.channels_last:
            value = value.contiguous(memory_format=torch.channels_last)
        else:  # e.g. ``x.view(x.size(0), -1)`` needs the default layout the model was written for
            value = value.contiguous()
        return getattr(self, part)(value, *others)


@dataclass
class ModelCut:
    upstream: fx.GraphModule
    cuts: dict[str, Cut]
    channels_last: bool = False
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it has no cut

    def run_upstream(self, batch: torch.Tensor) -> tuple:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.upstream(batch)

    @classmethod
    def build(cls, view: ModelView, layers: list[Layer], sample: torch.Tensor) -> ModelCut:
        """Trace ``view.model`` (raises when it cannot be traced) and cut it at each of ``layers`` that allows it.
        ``sample``: a few inputs, on the model's device."""
        traced = fx.GraphModule(view.model, _Tracer().trace(view.model))
        modules = dict(traced.named_modules())
        nodes = list(traced.graph.nodes)
        plans, skipped = {}, {}
        for layer in layers:
            plan = _plan(layer, nodes, modules)
            if isinstance(plan, str):
                skipped[layer.name] = plan
            else:
                plans[layer.name] = plan
        if not plans:
            raise NothingToCut(skipped)
        exported = list(dict.fromkeys(node for plan in plans.values() for node in plan.exported))
        last = max(nodes.index(node) for node in exported)
        upstream = _upstream(traced, nodes[:last + 1], exported)
        pair = sample[:2] if len(sample) >= 2 else sample.repeat(2, *([1] * (sample.dim() - 1)))
        with torch.no_grad():
            small, large = upstream(pair[:1]), upstream(pair)
        cuts = {}
        for name, plan in plans.items():
            slots = [exported.index(node) for node in plan.exported]
            later_slots = slots[3:] if plan.linear is not None else slots[1:]
            batched = _batched([small[s] for s in later_slots], [large[s] for s in later_slots])
            if batched is None:
                skipped[name] = "a value read after the layer does not follow the batch (e.g. a batch size)"
                continue
            position = nodes.index(plan.cut)
            rest = _graph_module(traced, [plan.cut, *plan.later], nodes[position + 1:], nodes[:position + 1])
            cut = Cut(plan.layer, rest, slots, batched)
            values = tuple(large[s] for s in slots)
            if plan.linear is not None:
                cut.chain = _graph_module(traced, [plan.activation], plan.chain, [],
                                          output=plan.chain[-1]) if plan.chain else None
                cut.linear = modules[plan.linear.target]
                _supports(cut, values[0])
            checks = {"rest": (rest, values[2] if cut.delta else values[0], cut.later(values))}
            if cut.chain is not None:
                checks["chain"] = (cut.chain, values[0], ())
            cut.channels_last = frozenset(part for part, (module, first, others) in checks.items()
                                          if _same_in_channels_last(module, first, others))
            cuts[name] = cut
        layout = _same_in_channels_last(upstream, pair, ())
        return cls(upstream, cuts, layout, skipped)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping Hugging Face's Conv1D a module call (like nn.Linear) rather than its addmm."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return linear_maps.is_linear(module) or super().is_leaf_module(module, qualified_name)

    def trace(self, root, concrete_args=None):
        """Trace with the model's bound ``[model] forward_kwargs`` as constants."""
        bound = getattr(root, forward_kwargs.ATTRIBUTE, None) if isinstance(root, nn.Module) else None
        if concrete_args is not None or not bound:
            return super().trace(root, concrete_args)
        graph = super().trace(root, dict(bound))
        for node in graph.nodes:  # torch.fx keeps them as placeholders checked against the value: default to it
            base = re.sub(r"_\d+$", "", str(node.target))
            if node.op == "placeholder" and base in bound:
                node.args = (bound[base],)
        return graph


@dataclass
class _Plan:
    layer: Layer
    activation: fx.Node
    cut: fx.Node
    later: list[fx.Node]
    linear: fx.Node | None = None
    chain: list[fx.Node] = field(default_factory=list)

    @property
    def exported(self) -> list[fx.Node]:
        middle = [self.chain[-1] if self.chain else self.activation, self.cut] if self.linear is not None else []
        return [self.activation, *middle, *self.later]


def _plan(layer: Layer, nodes: list[fx.Node], modules: dict[str, nn.Module]) -> _Plan | str:
    """Where to cut for ``layer``, or why it cannot be cut."""
    if layer.kind == "stream":
        return "a residual stream may be a tuple's first element: scanned with hooks"
    if not layer.layout.is_samples_first:  # the cut's values are read and repeated samples first
        return f"its output holds {layer.layout.describe()}: scanned with hooks, which see it samples first"
    if layer.kind == "heads":
        sites = [n for n in nodes if n.op == "call_module" and n.target == layer.site]
        if len(sites) != 1 or len(sites[0].args) != 1 or sites[0].kwargs or not isinstance(sites[0].args[0], fx.Node):
            return "its output projection is not called exactly once, on one input"
        activation = sites[0].args[0]
        linear, chain = (sites[0], []) if len(activation.users) == 1 else (None, [])
    else:
        calls = [n for n in nodes if n.op == "call_module" and n.target == layer.name]
        if len(calls) != 1:
            return "the module is not called exactly once"
        activation = calls[0]
        linear, chain = _unitwise_chain(activation, modules)
    cut = linear if linear is not None else activation
    position = nodes.index(cut)
    after = set(nodes[position + 1:])
    later = [n for n in nodes[:position + 1]
             if n is not cut and n.op != "get_attr" and any(user in after for user in n.users)]
    return _Plan(layer, activation, cut, later, linear, chain)


def _unitwise_chain(activation: fx.Node, modules: dict[str, nn.Module]) -> tuple[fx.Node | None, list[fx.Node]]:
    """The next Linear/Conv call after ``activation`` when only single-input operations, each read once, lead to
    it (so a change of the activation reaches that module and nothing else); else (None, [])."""
    chain, current = [], activation
    for _ in range(16):
        users = list(current.users)
        if len(users) != 1:
            return None, []
        following = users[0]
        if following.all_input_nodes != [current] or following.op not in ("call_module", "call_function",
                                                                          "call_method"):
            return None, []
        if following.op == "call_module" and _is_linear(modules[following.target]):
            return (following, chain) if following.args == (current,) and not following.kwargs else (None, [])
        chain.append(following)
        current = following
    return None, []


def _is_linear(module: nn.Module) -> bool:
    if linear_maps.is_linear(module):
        return True
    return (isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups == 1
            and module.padding_mode == "zeros")


def _batched(small: list, large: list) -> list[bool] | None:
    """Which values follow the batch (computed on 1 and on 2 samples), or None if one changes otherwise."""
    flags = []
    for a, b in zip(small, large):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.shape == b.shape:
                flags.append(False)
            elif a.dim() and a.shape[0] == 1 and b.shape[0] == 2 and a.shape[1:] == b.shape[1:]:
                flags.append(True)
            else:
                return None
        elif not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and a == b:
            flags.append(False)
        else:
            return None
    return flags


def _graph_module(traced: fx.GraphModule, inputs: list[fx.Node], body: list[fx.Node], context: list[fx.Node],
                  output: fx.Node | None = None) -> fx.GraphModule:
    """A module computing ``body`` from placeholders for ``inputs``; parameters read in ``context`` are copied."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {node: graph.placeholder(f"cut_{i}") for i, node in enumerate(inputs)}
    body_set = set(body)
    for node in context:
        if node.op == "get_attr" and any(user in body_set for user in node.users):
            env[node] = graph.node_copy(node, lambda a: env[a])
    for node in body:
        env[node] = graph.node_copy(node, lambda a: env[a])
    if output is not None:
        graph.output(env[output])
    graph.lint()
    return fx.GraphModule(traced, graph)


def _upstream(traced: fx.GraphModule, before: list[fx.Node], exported: list[fx.Node]) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in before:
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(tuple(env[node] for node in exported))
    module = fx.GraphModule(traced, graph)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


def _same_in_channels_last(part: fx.GraphModule, first: torch.Tensor, others: tuple) -> bool:
    """Whether ``part`` gives the same results when its first input is in channels-last memory layout: the
    layout changes no value, and CPU pooling and convolution kernels are several times faster in it."""
    if not isinstance(first, torch.Tensor) or first.dim() != 4:
        return False
    try:
        with torch.no_grad():
            expected = part(first, *others)
            got = part(first.contiguous(memory_format=torch.channels_last), *others)
    except Exception:  # noqa: BLE001  e.g. a .view() that needs the default layout
        return False
    pairs = list(zip(got, expected)) if isinstance(got, tuple) else [(got, expected)]
    return all(isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
               and torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6) for a, b in pairs)


def _supports(cut: Cut, activation: torch.Tensor) -> None:
    """For each unit, the elements of the linear module's input it can change (one sample), found by driving the
    unit to large values of either sign (through activation functions and pooling alike); its columns or channels
    there; and whether the unit-wise operations are separable (each element depends on one unit, so one pass
    can serve every ablation), checked on a probe that drives every unit at once. Outside the separable case the
    scan checks every change against the supports."""
    layer = cut.layer
    generator = torch.Generator().manual_seed(0)
    units = units_view(activation, layer)

    def run(values: torch.Tensor) -> torch.Tensor:
        written = from_units_view(values, activation, layer)
        return cut.chain(written) if cut.chain is not None else written

    def driven(unit_values: torch.Tensor, sign: float) -> torch.Tensor:
        noise = torch.rand(unit_values.shape, generator=generator).to(unit_values.device, unit_values.dtype)
        return sign * (10.0 + 10.0 * noise) * (1 + unit_values.abs().amax())

    with torch.no_grad():
        base = run(units)
        plus = [driven(units[:, unit], 1.0) for unit in range(layer.size)]
        supports, alone = [], []
        for unit in range(layer.size):
            changed = []
            for values in (plus[unit], driven(units[:, unit], -1.0)):
                probe = units.clone()
                probe[:, unit] = values
                changed.append(run(probe))
            alone.append(changed[0][0])
            supports.append(((changed[0] != base) | (changed[1] != base))[0])
        cut.supports = torch.stack(supports)
        cut.separable = bool((cut.supports.sum(0) <= 1).all())
        if cut.separable:  # every unit driven at once must give, on each unit's elements, what it gives alone
            all_driven = units.clone()
            for unit in range(layer.size):
                all_driven[:, unit] = plus[unit]
            combined = run(all_driven)[0]
            cut.separable = all(torch.equal(combined[where], alone[unit][where])
                                for unit, where in enumerate(cut.supports))
    reach = _reach(cut.linear, cut.supports)
    counts = reach.sum(1)
    if bool((counts == counts[0]).all()) and int(counts[0]) > 0:
        cut.index = reach.nonzero()[:, 1].reshape(reach.shape[0], -1)
    # the one-pass update reads each unit's whole columns (channels): they must belong to that unit alone
    cut.separable = cut.separable and cut.index is not None and bool((reach.sum(0) <= 1).all())


def _reach(module: nn.Module, supports: torch.Tensor) -> torch.Tensor:
    """(units, columns or channels): which columns (Linear: last axis) or channels (Conv: first axis) of the
    linear module's input each unit reaches."""
    if linear_maps.is_linear(module):
        return supports.reshape(supports.shape[0], -1, supports.shape[-1]).any(1)
    return supports.reshape(supports.shape[0], supports.shape[1], -1).any(2)
