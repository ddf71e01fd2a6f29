"""The conversion check: the converted module against onnxruntime on the audit inputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError

if TYPE_CHECKING:
    from .onnx import Constant, GraphInput

#: The module's output may differ from onnxruntime's by at most ATOL + RTOL * |onnxruntime's|, elementwise.
#: Measured on float32 models: differences of 1e-5 at most (README, 'ONNX models').
ATOL, RTOL = 1e-4, 1e-3


class ConversionCheck:
    """Compares the converted module with onnxruntime on the audit inputs (the graph's first output)."""

    def __init__(self, path: Path, model_bytes: bytes, audited: GraphInput, extras: list[Constant], output: str,
                 module: nn.Module, opsets: tuple[int, int]) -> None:
        self.path, self.model_bytes, self.audited = path, model_bytes, audited
        self.extras, self.output, self.module, self.opsets = extras, output, module, opsets

    def __call__(self, inputs: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
        from ..errors import first_line
        from .onnx import require_onnx

        _check_shape(self.audited, tuple(inputs.shape), self.path)
        onnxruntime = require_onnx()[2]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(self.model_bytes, options, providers=["CPUExecutionProvider"])
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
                                                     f"({type(exc).__name__}: {first_line(exc)})") from None
                try:
                    converted.append(self.module(batch).detach().cpu().numpy())
                except Exception as exc:
                    raise InputError(str(self.path), f"the converted module fails on the audit inputs "
                                                     f"({type(exc).__name__}: {first_line(exc)})") from None
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
