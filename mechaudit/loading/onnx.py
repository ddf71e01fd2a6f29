"""Load an ONNX file as a torch module whose Conv, Gemm and MatMul nodes are addressable layers.

Needs the optional extra ``pip install "mechaudit[onnx]"`` (``onnx``, ``onnx2torch``, ``onnxruntime``). An ONNX
file is data: loading it runs nothing of the user's. The file is read with ``onnx`` (no external data files),
validated by ``onnx.checker``, checked for operators that cannot be converted (control flow, operators without a
converter: one line naming the node), and converted by ``onnx2torch`` (with :mod:`.onnx_ops` for what it lacks)
into a ``torch.fx.GraphModule``, which :mod:`.onnx_module` makes addressable (``/features/features.0/Conv`` becomes
``features.0.Conv``) and binds to the constants ``[model] forward_kwargs`` gives for graph inputs other than the
audited tensor. :mod:`.onnx_check` then compares the module with onnxruntime on the audit inputs; a difference
beyond its tolerance is an error, never a silent audit of a different model.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, first_line
from .files import DEFAULT_MAX_BYTES, check_input_file
from .hashing import sha256_file
from .onnx_check import ConversionCheck
from .onnx_module import expand_batch, prepare_module

INSTALL = 'pip install "mechaudit[onnx]"'
#: Operators that make the graph's structure depend on data: no module with fixed layers can represent them.
CONTROL_FLOW = ("If", "Loop", "Scan")
#: The newest default-domain opset whose operator versions onnx2torch 1.5.15 converts (but GreaterOrEqual and
#: LessOrEqual, at version 16); a newer file is moved to it with onnx.version_converter when it needs to be.
CONVERTER_OPSET = 17
#: A constant given in forward_kwargs may hold at most this many elements.
MAX_KWARG_ELEMENTS = 2**26


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
    if "onnx2torch" not in sys.modules:
        try:
            importlib.import_module("torchvision")  # onnx2torch's dependency, not ours: only probed here
        except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
            for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[name]
            for name in ("nms", "roialign"):
                stub = types.ModuleType(f"onnx2torch.node_converters.{name}")
                stub.__all__ = []
                sys.modules[stub.__name__] = stub
    module = importlib.import_module("onnx2torch")
    from . import onnx_ops  # noqa: F401  (registers the converters onnx2torch lacks)

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
                                    f"{first_line(exc)})") from None
    output = proto.graph.output[0].name
    module = prepare_module(module, convertible, audited, extras, [i.name for i in inputs])
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
        raise InputError(str(path), f"is not a readable ONNX file ({type(exc).__name__}: {first_line(exc)})") from None
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise InputError(str(path), f"keeps weights in external data files (tensor '{external[0]}'); only "
                                    "self-contained ONNX files are read (save without external data)")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise InputError(str(path), f"fails the ONNX checker: {first_line(exc)}") from None
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
        return expand_batch(self.value, self.batch_dims, batch)


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

