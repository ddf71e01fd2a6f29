"""Load an ONNX file as a torch module whose Conv, Gemm and MatMul nodes are addressable layers.

Needs the optional extra ``pip install "mechaudit[onnx]"`` (``onnx``, ``onnx2torch``, ``onnxruntime``). An ONNX
file is data: loading it runs nothing of the user's. The file is read with ``onnx`` (no external data files),
validated by ``onnx.checker``, and converted by ``onnx2torch`` into a ``torch.fx.GraphModule``; then

* every module is renamed after its graph node, as a dotted path a user can type: the node
  ``/features/features.0/Conv`` becomes ``features.0.Conv`` (a scope that repeats its parent's path keeps only
  the longer one, as ``torch.onnx.export`` writes them; characters other than letters, digits and ``_`` become
  ``_``; unnamed nodes are named by their operator, ``Conv``, ``Conv_1``); a unit is ``features.0.Conv:ch3``;
* a ``MatMul`` by a constant matrix (how ``torch.onnx.export`` writes a Linear layer on 3-D inputs) becomes an
  ``nn.Linear`` named after the MatMul node, and a following ``Add`` of a constant vector its bias, so transformer
  projections are Linear layers like ``Gemm`` nodes already are;
* graph inputs other than the audited tensor are bound to the constants ``[model] forward_kwargs`` gives (a
  state, a sample rate), and the module returns the graph's first output.

:func:`conversion_check` then compares the module with ``onnxruntime`` on the audit inputs; a difference beyond
``ATOL + RTOL * |onnxruntime|`` is an error, never a silent audit of a different model.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..errors import InputError
from .files import DEFAULT_MAX_BYTES, check_input_file
from .hashing import sha256_file

INSTALL = 'pip install "mechaudit[onnx]"'
#: Operators that make the graph's structure depend on data: no module with fixed layers can represent them.
CONTROL_FLOW = ("If", "Loop", "Scan")
#: Conversion check: the module's output may differ from onnxruntime's by at most ATOL + RTOL * |onnxruntime's|,
#: elementwise. Measured on float32 models: differences of 1e-5 at most (README, 'ONNX models').
ATOL, RTOL = 1e-4, 1e-3
#: The newest default-domain opset whose operator versions onnx2torch 1.5.15 converts (but GreaterOrEqual and
#: LessOrEqual, at version 16); a newer file is moved to it with onnx.version_converter when it needs to be.
CONVERTER_OPSET = 17
#: A constant given in forward_kwargs may hold at most this many elements.
MAX_KWARG_ELEMENTS = 2**26
_RESERVED = set(dir(fx.GraphModule)) | {"initializers", "forward_kwargs"}


def require_onnx() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """``(onnx, onnx2torch, onnxruntime)``, or an :class:`InputError` saying how to install them."""
    missing = [name for name in ("onnx", "onnx2torch", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(missing[0], f"is not installed: {INSTALL}")
    import onnx
    import onnxruntime

    return onnx, _import_onnx2torch(), onnxruntime


def _import_onnx2torch() -> types.ModuleType:
    """onnx2torch imports torchvision for its NonMaxSuppression and RoiAlign converters only. A torchvision built
    for another torch (a CUDA wheel beside a CPU torch) fails to import; then those two converters are left out
    (the operators are reported as unsupported) and every other converter works."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        for name in ("nms", "roialign"):
            stub = types.ModuleType(f"onnx2torch.node_converters.{name}")
            stub.__all__ = []
            sys.modules[stub.__name__] = stub
    module = importlib.import_module("onnx2torch")
    from . import onnx_ops  # noqa: F401  (registers the LSTM converter onnx2torch lacks)

    return module


@dataclass(frozen=True)
class GraphInput:
    name: str
    dtype: np.dtype
    #: A symbolic dimension is its name ("batch"), an unknown one ""; None when the graph declares no shape.
    dims: tuple[int | str, ...] | None


def load_onnx(path: Path, name: str, forward_kwargs: dict[str, Any] | None = None,
              max_bytes: int = DEFAULT_MAX_BYTES):
    """A :class:`~mechaudit.loading.model.LoadedModel` for the ONNX file at ``path``, with its conversion check."""
    from .model import LoadedModel

    onnx, onnx2torch, _ = require_onnx()
    # onnx2torch's Slice indexes with a list, which torch warns about on every call: noise for the user
    warnings.filterwarnings("ignore", category=UserWarning, module=r"onnx2torch\.")
    proto = read_onnx(path, max_bytes)
    convertible = check_operators(proto, path)
    inputs = graph_inputs(proto)
    audited, extras = _bind(inputs, forward_kwargs or {}, path, max_bytes)
    try:
        module = onnx2torch.convert(convertible)
    except Exception as exc:
        raise InputError(str(path), f"cannot be converted to a torch module ({type(exc).__name__}: "
                                    f"{_first_line(exc)})") from None
    output = proto.graph.output[0].name
    module = _prepare_module(module, convertible, audited, extras, [i.name for i in inputs])
    opsets = (_default_opset(proto), _default_opset(convertible))
    check = ConversionCheck(path, proto.SerializeToString(), audited, extras, output, module, opsets)
    return LoadedModel(module.eval(), name, str(path), {str(path): sha256_file(path)}, conversion_check=check)


def read_onnx(path: Path, max_bytes: int = DEFAULT_MAX_BYTES):
    """The checked ``ModelProto`` of an ONNX file whose weights are all inside it."""
    onnx = require_onnx()[0]
    check_input_file(path, "ONNX model", max_bytes)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InputError(str(path), f"is not a readable ONNX file ({type(exc).__name__}: {_first_line(exc)})") from None
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise InputError(str(path), f"keeps weights in external data files (tensor '{external[0]}'); only "
                                    "self-contained ONNX files are read (save without external data)")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise InputError(str(path), f"fails the ONNX checker: {_first_line(exc)}") from None
    return proto


def check_operators(proto, path: Path):
    """The proto to convert (``proto``, or ``proto`` moved to opset :data:`CONVERTER_OPSET` by
    ``onnx.version_converter`` when one of its operator versions has no converter), or one line naming the first
    node that cannot be converted: control flow, or an unsupported operator."""
    for index, node in enumerate(proto.graph.node):
        if node.op_type in CONTROL_FLOW and node.domain in ("", "ai.onnx"):
            raise InputError(str(path), f"{_node(node, index)} is an '{node.op_type}' (control flow), which cannot be "
                                        "converted to a module with fixed layers; export the model without "
                                        "data-dependent control flow (one branch per file)")
    unsupported = _unsupported_node(proto)
    if unsupported is not None and _default_opset(proto) > CONVERTER_OPSET:
        from onnx import version_converter

        try:
            older = version_converter.convert_version(proto, CONVERTER_OPSET)
        except Exception:  # no adapter for some operator: report the original node
            older = None
        if older is not None and _unsupported_node(older) is None:
            return older
    if unsupported is not None:
        index, node, opset = unsupported
        domain = node.domain or ""
        op = f"{domain}::{node.op_type}" if domain not in ("", "ai.onnx") else node.op_type
        raise InputError(str(path), f"{_node(node, index)}: operator '{op}' (opset {opset}) is not supported by "
                                    f"onnx2torch {version('onnx2torch')}; see README, 'ONNX models'")
    return proto


def _default_opset(proto) -> int:
    return next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), 0)


def _unsupported_node(proto):
    """``(index, node, opset)`` of the first node onnx2torch has no converter for, or None."""
    require_onnx()
    from onnx2torch.node_converters import get_converter

    opsets = {entry.domain or "": entry.version for entry in proto.opset_import}
    for index, node in enumerate(proto.graph.node):
        domain = node.domain or ""
        try:
            get_converter(domain=domain, operation_type=node.op_type, version=opsets.get(domain, 1))
        except NotImplementedError:
            return index, node, opsets.get(domain, "?")
    return None


def _node(node, index: int) -> str:
    return f"node '{node.name}'" if node.name else f"node #{index} (unnamed)"


def graph_inputs(proto) -> list[GraphInput]:
    """The graph's inputs that are not initializers (weights), in order."""
    from onnx.helper import tensor_dtype_to_np_dtype

    weights = {t.name for t in proto.graph.initializer}
    found = []
    for value in proto.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise InputError(f"graph input '{value.name}'", "is not a tensor (sequences and maps are not supported)")
        dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim) if (
            tensor.HasField("shape")) else None
        found.append(GraphInput(value.name, np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type)), dims))
    return found


@dataclass(frozen=True)
class Constant:
    """A graph input bound to a constant; ``batch_dims`` take the audited batch's size at every call."""

    name: str
    value: torch.Tensor
    batch_dims: tuple[int, ...]

    def expanded(self, batch: int) -> torch.Tensor:
        shape = list(self.value.shape)
        for dim in self.batch_dims:
            shape[dim] = batch
        return self.value.expand(shape)


def _bind(inputs: list[GraphInput], kwargs: dict[str, Any], path: Path,
          max_bytes: int) -> tuple[GraphInput, list[Constant]]:
    """The audited input (the one graph input not in ``kwargs``) and the constants for the others."""
    names = [i.name for i in inputs]
    unknown = [key for key in kwargs if key not in names]
    if unknown:
        raise InputError(f"[model] forward_kwargs.{unknown[0]}", f"is not an input of the graph (inputs: "
                                                                  f"{', '.join(names)})")
    free = [i for i in inputs if i.name not in kwargs]
    if len(free) != 1:
        described = ", ".join(f"'{i.name}' {i.dtype} {list(i.dims)}" for i in free[1:] or free)
        problem = ("has no input left for the audit data" if not free else
                   f"has inputs beyond the audited '{free[0].name}': {described}; give them in [model] "
                   "forward_kwargs (a number, a nested list, or {{ shape = [...], fill = 0 }}; a dimension "
                   "\"batch\" takes the audit batch's size)")
        raise InputError(str(path), problem)
    extras = [_constant(i, kwargs[i.name], max_bytes) for i in inputs if i.name in kwargs]
    return free[0], extras


def _constant(graph_input: GraphInput, value: Any, max_bytes: int) -> Constant:
    where = f"[model] forward_kwargs.{graph_input.name}"
    batch_dims: tuple[int, ...] = ()
    if isinstance(value, dict):
        if set(value) - {"shape", "fill"} or "shape" not in value:
            raise InputError(where, "a table needs 'shape' (a list of sizes or \"batch\") and optionally 'fill'")
        shape = value["shape"]
        if not isinstance(shape, list) or not all(
                (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or d == "batch" for d in shape):
            raise InputError(f"{where}.shape", "must be a list of sizes (integers >= 0) or \"batch\"")
        batch_dims = tuple(i for i, d in enumerate(shape) if d == "batch")
        fill = value.get("fill", 0)
        if not isinstance(fill, (int, float)) or isinstance(fill, bool):
            raise InputError(f"{where}.fill", "must be a number")
        sizes = [1 if d == "batch" else d for d in shape]
        if int(np.prod(sizes)) > MAX_KWARG_ELEMENTS:
            raise InputError(where, f"holds more than {MAX_KWARG_ELEMENTS} elements")
        array = np.full(sizes, fill, dtype=graph_input.dtype)
    else:
        try:
            array = np.asarray(value, dtype=graph_input.dtype)
        except (TypeError, ValueError):
            raise InputError(where, f"must be a number, a nested list of numbers or a table, not {value!r}") from None
        if array.dtype == object:
            raise InputError(where, "a nested list must be rectangular")
    if array.nbytes > max_bytes or array.size > MAX_KWARG_ELEMENTS:
        raise InputError(where, f"holds more than {MAX_KWARG_ELEMENTS} elements")
    declared = graph_input.dims
    if declared is not None and (len(declared) != array.ndim or any(
            isinstance(d, int) and d > 0 and i not in batch_dims and d != array.shape[i]
            for i, d in enumerate(declared))):
        raise InputError(where, f"has shape {list(array.shape)}; the graph declares {list(declared)}")
    return Constant(graph_input.name, torch.from_numpy(array.copy()), batch_dims)


class BoundInput(nn.Module):
    """A graph input bound to a constant (``forward_kwargs``), sized to the audited batch at every call."""

    def __init__(self, constant: Constant) -> None:
        super().__init__()
        self.register_buffer("value", constant.value)
        self.batch_dims = constant.batch_dims

    def forward(self, audited: torch.Tensor) -> torch.Tensor:
        shape = list(self.value.shape)
        for dim in self.batch_dims:
            shape[dim] = audited.shape[0]
        return self.value.expand(shape)


def _prepare_module(module: fx.GraphModule, proto, audited: GraphInput, extras: list[Constant],
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
    from .onnx_ops import replace_pads

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
    """A node's module path: ``/features/features.0/Conv`` -> ``features.0.Conv``, ``node:1`` -> ``node_1``."""
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


class ConversionCheck:
    """Compares the converted module with onnxruntime on the audit inputs (the graph's first output)."""

    def __init__(self, path: Path, model_bytes: bytes, audited: GraphInput, extras: list[Constant], output: str,
                 module: nn.Module, opsets: tuple[int, int]) -> None:
        self.path, self.model_bytes, self.audited = path, model_bytes, audited
        self.extras, self.output, self.module, self.opsets = extras, output, module, opsets

    def __call__(self, inputs: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
        onnxruntime = require_onnx()[2]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(self.model_bytes, options, providers=["CPUExecutionProvider"])
        _check_shape(self.audited, tuple(inputs.shape), self.path)
        first = self.audited.dims[0] if self.audited.dims else None
        step = first if isinstance(first, int) and first > 0 else batch_size
        converted, reference = [], []
        with torch.no_grad():
            for start in range(0, len(inputs), step):
                batch = inputs[start:start + step].cpu()
                feed = {self.audited.name: batch.numpy().astype(self.audited.dtype)}
                feed |= {c.name: c.expanded(len(batch)).numpy() for c in self.extras}
                try:
                    reference.append(session.run([self.output], feed)[0])
                except Exception as exc:
                    raise InputError(str(self.path), f"onnxruntime cannot run it on the audit inputs "
                                                     f"({type(exc).__name__}: {_first_line(exc)})") from None
                try:
                    converted.append(self.module(batch).detach().cpu().numpy())
                except Exception as exc:
                    raise InputError(str(self.path), f"the converted module fails on the audit inputs "
                                                     f"({type(exc).__name__}: {_first_line(exc)})") from None
        record = compare_outputs(np.concatenate(converted), np.concatenate(reference), self.path, self.output,
                                 onnxruntime.__version__)
        record["opset"] = self.opsets[0]
        if self.opsets[0] != self.opsets[1]:
            record["converted_to_opset"] = self.opsets[1]
            record["summary"] += (f"; converted from opset {self.opsets[0]} to {self.opsets[1]} by "
                                  "onnx.version_converter")
        return record


def _check_shape(audited: GraphInput, shape: tuple[int, ...], path: Path) -> None:
    """The audit inputs must have the rank and the fixed per-sample sizes the graph declares for its input."""
    declared = audited.dims
    if declared is None:
        return
    fixed = [isinstance(d, int) and d > 0 for d in declared]
    if len(declared) != len(shape) or any(f and d != s for f, d, s in zip(fixed[1:], declared[1:], shape[1:])):
        raise InputError(str(path), f"graph input '{audited.name}' is {list(declared)}; the audit inputs are "
                                    f"{list(shape)} (samples first)")


def compare_outputs(converted: np.ndarray, reference: np.ndarray, path: Path, output: str,
                    runtime_version: str) -> dict[str, Any]:
    """The conversion check's record; an :class:`InputError` naming the largest difference beyond tolerance."""
    if converted.shape != reference.shape:
        raise InputError(str(path), f"conversion check failed: the converted module's output '{output}' has shape "
                                    f"{list(converted.shape)}, onnxruntime's {list(reference.shape)}")
    a, b = converted.astype(np.float64), reference.astype(np.float64)
    diff = np.abs(a - b)
    diff[np.isnan(a) & np.isnan(b)] = 0.0
    excess = diff - (ATOL + RTOL * np.abs(b))
    worst = np.unravel_index(int(np.nanargmax(np.nan_to_num(excess, nan=np.inf))), diff.shape) if diff.size else ()
    max_abs = float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    max_rel = max_abs / scale if scale > 0 else 0.0
    record = {"reference": f"onnxruntime {runtime_version}", "output": output, "samples": int(len(a)),
              "max_abs_diff": max_abs, "max_rel_diff": max_rel, "atol": ATOL, "rtol": RTOL, "passed": True,
              "summary": f"output '{output}' matches onnxruntime {runtime_version} on {len(a)} audit samples: "
                         f"largest difference {max_abs:.3g} ({max_rel:.3g} of the largest output; tolerance "
                         f"{ATOL:g} + {RTOL:g} x |onnxruntime|)"}
    if diff.size and not excess[worst] <= 0:
        index = ", ".join(str(int(i)) for i in worst)
        raise InputError(str(path), f"conversion check failed: the converted module differs from onnxruntime by "
                                    f"{diff[worst]:.3g} at {output}[{index}] ({a[worst]:.6g} vs {b[worst]:.6g}; "
                                    f"tolerance {ATOL:g} + {RTOL:g} x |onnxruntime|); not auditing a different model")
    return record


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

