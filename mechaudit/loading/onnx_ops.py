"""Where onnx2torch 1.5.15 falls short: a converter for ``LSTM``, which it lacks, and a ``Pad`` for any rank.

The LSTM converter is registered through onnx2torch's own converter registry (``add_converter``) when
:mod:`mechaudit.loading.onnx` imports this module. It covers what ``torch.onnx.export`` writes for ``nn.LSTM``:
constant weights, forward or bidirectional, default activations, no peepholes, no clipping, ``layout = 0``, no
``sequence_lens``; anything else is refused with a line naming what is not supported. The result is an
``nn.LSTM`` (weights in torch's gate order), so an ONNX LSTM runs as torch's own; the conversion check compares it
with onnxruntime like every other node.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.pad import OnnxPadDynamic
from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult
from torch import nn

#: ONNX stores the gates as (input, output, forget, cell); torch as (input, forget, cell, output).
_TORCH_GATE_ORDER = (0, 2, 3, 1)
_DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")


class OnnxLSTM(nn.Module, OnnxToTorchModule):
    """ONNX LSTM semantics on an ``nn.LSTM``: X (seq, batch, input) -> (Y (seq, directions, batch, hidden), Y_h,
    Y_c); a missing initial state is zeros."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: torch.Tensor, initial_h: torch.Tensor | None = None,
                initial_c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        directions = 2 if self.lstm.bidirectional else 1
        shape = (directions, x.shape[1], self.lstm.hidden_size)
        h = initial_h if initial_h is not None else x.new_zeros(shape)
        c = initial_c if initial_c is not None else x.new_zeros(shape)
        y, (h_n, c_n) = self.lstm(x, (h.contiguous(), c.contiguous()))
        y = y.reshape(x.shape[0], x.shape[1], directions, self.lstm.hidden_size).transpose(1, 2)
        return y, h_n, c_n


def _gates(weight: torch.Tensor, hidden: int) -> torch.Tensor:
    return torch.cat([weight[g * hidden:(g + 1) * hidden] for g in _TORCH_GATE_ORDER])


@add_converter(operation_type="LSTM", version=7)
@add_converter(operation_type="LSTM", version=14)
def _convert_lstm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attributes = node.attributes
    inputs = list(node.input_values) + [""] * (8 - len(node.input_values))
    x, w, r, b, sequence_lens, initial_h, initial_c, peepholes = inputs
    refused = [reason for reason, present in (
        ("sequence_lens", bool(sequence_lens)), ("peepholes (P)", bool(peepholes)),
        ("clip", "clip" in attributes), ("input_forget", attributes.get("input_forget", 0) != 0),
        ("layout = 1", attributes.get("layout", 0) != 0),
        ("direction = reverse", attributes.get("direction", "forward") == "reverse"),
        ("non-default activations", tuple(attributes.get("activations", _DEFAULT_ACTIVATIONS))[:3]
         != _DEFAULT_ACTIVATIONS),
        ("weights computed in the graph", any(name not in graph.initializers for name in (w, r) + ((b,) if b else ()))),
    ) if present]
    if refused:
        raise NotImplementedError(f"LSTM node '{node.name}' uses {refused[0]}, which is not supported")
    weight_ih, weight_hh = graph.initializers[w].to_torch(), graph.initializers[r].to_torch()
    directions, gates4, input_size = weight_ih.shape
    hidden = attributes.get("hidden_size", gates4 // 4)
    bias = graph.initializers[b].to_torch() if b else torch.zeros(directions, 8 * hidden, dtype=weight_ih.dtype)
    lstm = nn.LSTM(input_size, hidden, bidirectional=directions == 2, dtype=weight_ih.dtype)
    for direction, suffix in enumerate(("", "_reverse")[:directions]):
        with torch.no_grad():
            getattr(lstm, f"weight_ih_l0{suffix}").copy_(_gates(weight_ih[direction], hidden))
            getattr(lstm, f"weight_hh_l0{suffix}").copy_(_gates(weight_hh[direction], hidden))
            getattr(lstm, f"bias_ih_l0{suffix}").copy_(_gates(bias[direction, :4 * hidden], hidden))
            getattr(lstm, f"bias_hh_l0{suffix}").copy_(_gates(bias[direction, 4 * hidden:], hidden))
    mapping = OnnxMapping(inputs=(x, initial_h, initial_c), outputs=node.output_values)
    return OperationConverterResult(torch_module=OnnxLSTM(lstm), onnx_mapping=mapping)


_TORCH_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


class PadAnyRank(nn.Module, OnnxToTorchModule):
    """ONNX ``Pad`` (pads, and from opset 18 axes, given as inputs) on a tensor of any rank, in every mode
    (``wrap`` is torch's ``circular``). onnx2torch's own refuses to reflect-pad the last axis of a 2-D tensor, as
    ``torch.onnx.export`` writes an STFT's padding: torch pads the last one to three axes, so the pairs of the
    leading axes that are not padded are dropped."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor, pads: torch.Tensor, constant_value: torch.Tensor | None = None,
                axes: torch.Tensor | None = None) -> torch.Tensor:
        rank, pads = x.dim(), [int(p) for p in pads.tolist()]
        axes = [int(a) % rank for a in axes.tolist()] if axes is not None else list(range(len(pads) // 2))
        begin, end = [0] * rank, [0] * rank
        for axis, before, after in zip(axes, pads[:len(axes)], pads[len(axes):]):
            begin[axis], end[axis] = before, after
        torch_pads = [amount for axis in reversed(range(rank)) for amount in (begin[axis], end[axis])]
        while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]
        if self.mode == "constant":
            value = float(constant_value) if constant_value is not None and constant_value.numel() else 0.0
            return F.pad(x, torch_pads, value=value)
        return F.pad(x, torch_pads, mode=self.mode)


@add_converter(operation_type="Pad", version=18)
@add_converter(operation_type="Pad", version=19)
@add_converter(operation_type="Pad", version=21)
def _convert_pad(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    mode = node.attributes.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode not in _TORCH_PAD_MODES:
        raise NotImplementedError(f"Pad node '{node.name}' uses mode '{mode}', which is not supported")
    return OperationConverterResult(torch_module=PadAnyRank(_TORCH_PAD_MODES[mode]),
                                    onnx_mapping=OnnxMapping(inputs=node.input_values, outputs=node.output_values))


def replace_pads(module: torch.fx.GraphModule) -> None:
    """Swap onnx2torch's reflect/edge ``Pad`` modules (opsets 11-17) for :class:`PadAnyRank`."""
    for name, child in list(module.named_modules()):
        if isinstance(child, OnnxPadDynamic) and child.mode in ("reflect", "replicate"):
            parent, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, leaf, PadAnyRank(child.mode))


#: Operator versions that only admitted new element types (float8, int4, bfloat16, strings) over the version
#: onnx2torch converts: the same converter serves them. The conversion check still compares every output.
TYPE_ONLY_VERSIONS = {"Cast": (19, 21), "Constant": (19, 21), "ConstantOfShape": (20, 21), "Equal": (19,),
                      "Identity": (19, 21), "Reshape": (19, 21), "Shape": (19, 21), "Flatten": (21,),
                      "Transpose": (21,), "Unsqueeze": (21,), "Squeeze": (21,), "IsInf": (20,), "IsNaN": (20,),
                      "GreaterOrEqual": (16,), "LessOrEqual": (16,)}


def _register_type_only_versions() -> None:
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    for op, versions in TYPE_ONLY_VERSIONS.items():
        known = sorted(d.version for d in _CONVERTER_REGISTRY if d.domain == "" and d.operation_type == op)
        for version in versions:
            older = [v for v in known if v < version]
            if older and OperationDescription("", op, version) not in _CONVERTER_REGISTRY:
                add_converter(operation_type=op, version=version)(
                    _CONVERTER_REGISTRY[OperationDescription("", op, older[-1])])


_register_type_only_versions()
