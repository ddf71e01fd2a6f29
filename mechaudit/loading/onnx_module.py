"""Turn onnx2torch's ``torch.fx.GraphModule`` into the module mechaudit audits.

* every module is renamed after its graph node, as a dotted path a user can type (:func:`readable_path`);
* a ``MatMul`` by a constant matrix becomes an ``nn.Linear``, and a following ``Add`` of a constant vector its bias;
* graph inputs bound in ``forward_kwargs`` become constants (:class:`BoundInput`), so the module takes the audited
  tensor alone, and it returns the graph's first output.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import fx, nn

from ..errors import InputError

if TYPE_CHECKING:
    from .onnx import Constant, GraphInput

_RESERVED = set(dir(fx.GraphModule)) | {"initializers", "forward_kwargs"}


def expand_batch(value: torch.Tensor, batch_dims: tuple[int, ...], batch: int) -> torch.Tensor:
    """``value`` with its ``batch_dims`` (size 1) expanded to ``batch``, without copying."""
    shape = list(value.shape)
    for dim in batch_dims:
        shape[dim] = batch
    return value.expand(shape)


class BoundInput(nn.Module):
    """A graph input bound to a constant (``forward_kwargs``), sized to the audited batch at every call."""

    def __init__(self, constant: Constant) -> None:
        super().__init__()
        self.register_buffer("value", constant.value)
        self.batch_dims = constant.batch_dims

    def forward(self, audited: torch.Tensor) -> torch.Tensor:
        return expand_batch(self.value, self.batch_dims, audited.shape[0])


def prepare_module(module: fx.GraphModule, proto, audited: GraphInput, extras: list[Constant],
                    order: list[str]) -> fx.GraphModule:
    graph = module.graph
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    by_input = dict(zip(order, placeholders))
    audited_node = by_input[audited.name]
    for constant in extras:
        placeholder = by_input[constant.name]
        target = f"forward_kwargs.{_segment(constant.name)}"
        module.add_submodule(target, BoundInput(constant))
        with graph.inserting_after(audited_node):
            bound = graph.call_module(target, (audited_node,))
        placeholder.replace_all_uses_with(bound)
        graph.erase_node(placeholder)
    if audited.dtype != np.float32:  # e.g. token ids: the audit data arrive as float32 tensors
        dtype = torch.from_numpy(np.zeros(0, dtype=audited.dtype)).dtype
        with graph.inserting_after(audited_node):
            cast = graph.call_method("to", (audited_node, dtype))
        audited_node.replace_all_uses_with(cast, delete_user_cb=lambda user: user is not cast)
    output = next(node for node in graph.nodes if node.op == "output")
    if isinstance(output.args[0], (list, tuple)):
        output.args = (output.args[0][0],)
    _fuse_linear(module)
    from .onnx_ops import replace_pads  # imports onnx2torch

    replace_pads(module)
    graph.eliminate_dead_code()
    _rename_after_nodes(module, proto)
    module.delete_all_unused_submodules()
    _drop_unused_initializers(module)
    graph.lint()
    module.recompile()
    return module


def _constant_value(module: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """The tensor a node always produces, if it is a weight (initializer) or a Constant node."""
    if node.op == "get_attr":
        value = module.get_buffer(node.target) if node.target.startswith("initializers.") else None
        return value if isinstance(value, torch.Tensor) else None
    if node.op == "call_module" and not node.args:
        value = getattr(module.get_submodule(node.target), "value", None)
        return value if isinstance(value, torch.Tensor) else None
    return None


def _fuse_linear(module: fx.GraphModule) -> None:
    """MatMul(x, W) with a constant 2-D W becomes nn.Linear; a following Add of a constant vector its bias."""
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
    from onnx2torch.node_converters.matmul import OnnxMatMul

    for node in list(module.graph.nodes):
        if node.op != "call_module" or not isinstance(module.get_submodule(node.target), OnnxMatMul):
            continue
        weight = _constant_value(module, node.args[1])
        if weight is None or weight.dim() != 2 or not weight.is_floating_point():
            continue
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=False, dtype=weight.dtype)
        linear.weight.data = weight.detach().t().contiguous()
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            add = users[0]
            op = module.get_submodule(add.target)
            other = add.args[1] if add.args[0] is node else add.args[0]
            bias = _constant_value(module, other) if isinstance(other, fx.Node) else None
            if (isinstance(op, OnnxBinaryMathOperation) and op.math_op_function is torch.add and op.broadcast is None
                    and bias is not None and bias.shape == (weight.shape[1],)):
                linear.bias = nn.Parameter(bias.detach().clone().to(weight.dtype))
                add.replace_all_uses_with(node)
                module.graph.erase_node(add)
        _replace_submodule(module, node.target, linear)
        node.args = (node.args[0],)


def _replace_submodule(module: fx.GraphModule, target: str, replacement: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, replacement)


def readable_path(node_name: str, op_type: str) -> str:
    """A node's module path: ``/features/features.0/Conv`` -> ``features.0.Conv``, ``node:1`` -> ``node_1``.

    Slashes and dots separate path parts; a scope that repeats its parent's path keeps only the longer one (as
    ``torch.onnx.export`` writes them, so the path is the PyTorch module's plus the operator); other characters
    become ``_``; an unnamed node is named by its operator; a first part that is an attribute of GraphModule gets
    a trailing ``_``."""
    kept: list[str] = []
    for segment in (s for s in node_name.split("/") if s):
        if kept and segment.startswith(kept[-1] + "."):  # torch.onnx scopes repeat the parent's path
            kept[-1] = segment
        else:
            kept.append(segment)
    parts = [_segment(part) for segment in kept or [op_type] for part in segment.split(".")]
    if parts[0] in _RESERVED:
        parts[0] += "_"
    return ".".join(parts)


def _segment(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text) or "_"


def _rename_after_nodes(module: fx.GraphModule, proto) -> None:
    """Give every module converted from a node the readable path of that node."""
    from onnx2torch.onnx_graph import OnnxGraph

    nodes = OnnxGraph(proto.graph).nodes
    taken: set[str] = set()
    for node in module.graph.nodes:
        if node.op != "call_module" or node.target not in nodes:
            continue
        onnx_node = nodes[node.target].proto
        path = _unique(readable_path(onnx_node.name, onnx_node.op_type), taken)
        submodule = module.get_submodule(node.target)
        module.delete_submodule(node.target)
        if not module.add_submodule(path, submodule):
            raise InputError(f"ONNX node '{onnx_node.name}'", f"its module path '{path}' clashes with another")
        node.target = path


def _unique(path: str, taken: set[str]) -> str:
    """``path``, or ``path_1``, ``path_2``, ... : neither a taken path, nor one's parent or child."""
    candidate, count = path, 0
    while candidate in taken or any(t.startswith(candidate + ".") or candidate.startswith(t + ".") for t in taken):
        count += 1
        candidate = f"{path}_{count}"
    taken.add(candidate)
    return candidate


def _drop_unused_initializers(module: fx.GraphModule) -> None:
    used = {node.target for node in module.graph.nodes if node.op == "get_attr"}
    container = getattr(module, "initializers", None)
    for name in [n for n, _ in container.named_buffers()] if container is not None else ():
        if f"initializers.{name}" not in used:
            delattr(container, name)
