"""Where and in which precision the model runs: ``--dtype`` for its forward passes, and models that accelerate
dispatched over several devices (``device_map``), which stay where they are.

Only the model's own arithmetic runs in the chosen dtype: floating inputs are cast to it on the way in and the
outputs back to float32 on the way out, and every statistic, attribution and effect mechaudit computes from hooked
activations is accumulated in float32 (float64 for streaming sums). ``bfloat16`` runs on CPU and CUDA;
``float16`` is meant for CUDA (on the CPU some PyTorch kernels have no float16 version, and the rule that needs
one reports an error finding).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

import torch
from torch import nn

from .errors import InputError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextmanager
def exact_float32() -> Iterator[None]:
    """Within the context, float32 matrix products and convolutions on CUDA run in float32, not TensorFloat-32
    (cuDNN's default allows TF32 for convolutions: its 10-bit mantissas moved digits' L205 value by 1.1e-3 relative
    to the CPU's on an H200, against 0 without): a float32 audit computes the CPU's numbers up to summation order.
    ``--dtype bfloat16`` is the fast choice."""
    backends = [torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None),
                getattr(torch.backends.cudnn, "rnn", None)]
    if not all(hasattr(backend, "fp32_precision") for backend in backends):  # torch < 2.9: the legacy flags
        legacy = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy
        return
    saved = [backend.fp32_precision for backend in backends]
    for backend in backends:
        backend.fp32_precision = "ieee"
    try:
        yield
    finally:
        for backend, precision in zip(backends, saved):
            backend.fp32_precision = precision


def dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed the model's modules on their own devices (a ``device_map``): such a model is
    neither moved nor cast; its hooks move each module's inputs to that module's device."""
    return bool(getattr(model, "hf_device_map", None)) or any(hasattr(m, "_hf_hook") for m in model.modules())


def input_device(model: nn.Module, device: torch.device) -> torch.device:
    """The device inputs go to: ``device``, or for a dispatched model the device of its first placed module."""
    device_map = getattr(model, "hf_device_map", None) or getattr(getattr(model, "hf_model", None),
                                                                    "hf_device_map", None)
    if not device_map:
        return device
    for place in device_map.values():
        if isinstance(place, int):
            return torch.device("cuda", place)
        if place not in ("disk", "meta"):
            return torch.device(place)
    return torch.device("cpu")


def cast_forward(model: nn.Module, dtype: str) -> nn.Module:
    """``model`` with its parameters in ``dtype``, taking inputs in any float dtype and returning float32."""
    target = DTYPES[dtype]
    if target == torch.float32 or getattr(model, "_mechaudit_dtype", None) == target:
        return model
    if dispatched(model):
        raise InputError("--dtype", "a model dispatched with device_map keeps the dtype it was loaded in: pass "
                                    "dtype in the factory's arguments instead")
    model = model.to(target)
    model.register_forward_pre_hook(lambda _m, args: tuple(_cast(a, target) for a in args))
    model.register_forward_hook(lambda _m, _args, output: _cast(output, torch.float32))
    object.__setattr__(model, "_mechaudit_dtype", target)
    return model


def _cast(value, dtype: torch.dtype):
    """``value``'s floating tensors in ``dtype``: a tensor, a tuple's, or a mapping's (a Hugging Face
    ``ModelOutput``, whose fields are set in place so that its attributes follow)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    if isinstance(value, MutableMapping):
        for key in list(value):
            value[key] = _cast(value[key], dtype)
        return value
    if isinstance(value, Mapping):
        return {key: _cast(item, dtype) for key, item in value.items()}
    return value
