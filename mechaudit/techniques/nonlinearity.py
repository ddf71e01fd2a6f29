"""What follows a layer in the forward pass: a rectifying nonlinearity, or something else.

"Dead" and "dense" units are properties of a rectifier: a unit whose input to a ReLU never exceeds 0 passes nothing
and gets no gradient; one always above 0 is never switched off. A layer read by anything else (a residual sum, a
normalisation, an attention product, the model's output) has no such state, so a rule about dead units judges
only layers whose output reaches a rectifier through operations that keep each unit's sign region (dropout,
pooling, flattening, reshaping).

Found by tracing the model with ``torch.fx`` (functional and module activations alike; a model that is a
``torch.fx.GraphModule`` already, such as a converted ONNX graph, by its own graph). When the model cannot be
traced, by the order in which leaf modules run: the first one after the layer that is not a pass-through
(functional activations are invisible there, so such a layer is ``unknown``).

Rectifiers: ReLU, ReLU6, GELU, SiLU (Swish), Hardswish, Mish (near zero for negative inputs). LeakyReLU, PReLU,
ELU and the like pass negative inputs through, so nothing dies behind them: they count as "other".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from ..model_view import Layer, ModelView

_RECTIFIERS = ("relu", "relu6", "gelu", "silu", "swish", "hardswish", "mish")
_LEAKY = ("leaky", "prelu", "rrelu", "celu", "selu")
_PASS_THROUGH = ("dropout", "identity", "flatten", "view", "reshape", "contiguous", "max_pool", "avg_pool",
                 "maxpool", "avgpool", "adaptive", "squeeze", "unsqueeze")


@dataclass(frozen=True)
class Following:
    """What a layer's output reaches: ``kind`` "rectifier", "other" or "unknown", and ``what`` in words."""

    kind: str
    what: str

    @property
    def rectified(self) -> bool:
        return self.kind == "rectifier"


def _classify(name: str) -> str:
    name = name.lower().rstrip("_")
    if any(word in name for word in _LEAKY) or name in ("elu", "elu_"):
        return "other"
    if any(name.endswith(word) or f"{word}activation" in name for word in _RECTIFIERS):
        return "rectifier"
    if any(word in name for word in _PASS_THROUGH):
        return "pass"
    return "other"


def _node_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op in ("call_function", "call_method"):
        return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return node.op


def following_activations(view: ModelView, layers: list[Layer], sample: torch.Tensor) -> dict[str, Following]:
    """For each layer, what its output reaches (see the module docstring). ``sample``: a few model inputs."""
    from .model_cut import _Tracer

    found: dict[str, Following] = {}
    for layer in layers:
        if layer.kind == "stream":
            found[layer.name] = Following("other", "a residual stream (no activation function of its own)")
        elif layer.kind == "heads":
            found[layer.name] = Following("other", "attention heads (read by the output projection)")
    rest = [layer for layer in layers if layer.name not in found]
    if not rest:
        return found
    try:  # a converted graph (ONNX) is a GraphModule already: its own graph, which may not trace again
        graph = view.model.graph if isinstance(view.model, fx.GraphModule) else _Tracer().trace(view.model)
    except Exception:  # noqa: BLE001  not traceable: the order in which modules run
        return {**found, **_by_module_order(view, rest, sample)}
    modules = dict(view.model.named_modules())
    nodes = list(graph.nodes)
    for layer in rest:
        calls = [n for n in nodes if n.op == "call_module" and n.target == layer.name]
        found[layer.name] = (_walk(calls[0], modules) if len(calls) == 1
                             else Following("unknown", "the module is not called exactly once in the traced graph"))
    return found


def _walk(node: fx.Node, modules: dict[str, nn.Module]) -> Following:
    current = node
    for _ in range(8):
        users = list(current.users)
        if len(users) != 1:
            return Following("other", f"its output is read by {len(users)} operations")
        user = users[0]
        if user.op == "output":
            return Following("other", "the model's output")
        name = _node_name(user, modules)
        kind = _classify(name)
        if kind == "rectifier":
            return Following("rectifier", name)
        if kind == "other" or not user.args or user.args[0] is not current:
            return Following("other", name)
        current = user
    return Following("other", "a long chain of reshaping operations")


def _by_module_order(view: ModelView, layers: list[Layer], sample: torch.Tensor) -> dict[str, Following]:
    order: list[str] = []
    leaves = {name: module for name, module in view.model.named_modules() if name and not list(module.children())}
    handles = [module.register_forward_hook(lambda *_args, name=name: order.append(name))
               for name, module in leaves.items()]
    try:
        with torch.no_grad():
            view.model(sample)
    finally:
        for handle in handles:
            handle.remove()
    found = {}
    for layer in layers:
        found[layer.name] = Following("unknown", "the model cannot be traced, and no activation module runs "
                                                 "right after it")
        if order.count(layer.name) != 1:
            continue
        for name in order[order.index(layer.name) + 1:]:
            kind = _classify(type(leaves[name]).__name__)
            if kind == "rectifier":
                found[layer.name] = Following("rectifier", type(leaves[name]).__name__)
            if kind != "pass":
                break
    return found
