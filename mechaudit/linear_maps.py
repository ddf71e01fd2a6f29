"""Linear maps over the last axis: ``nn.Linear`` and Hugging Face's ``Conv1D`` (GPT-2's ``c_fc``, ``c_proj``,
``c_attn``), which computes ``x @ W + b`` with its weight stored transposed, (in, out).

Every place that reads or writes a linear layer's weight goes through :func:`weight`, :func:`out_in` and
:func:`stored`, so both kinds are one kind, ``linear``, everywhere: ``h.0.mlp.c_fc:u300`` is addressed, ablated,
scored in circuits and edited exactly like ``classifier.0:u42``.
"""

from __future__ import annotations

import torch
from torch import nn


def is_transposed(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D``, recognised by its attributes (``nf`` outputs, ``nx`` inputs, weight (nx, nf)),
    so that ``transformers`` need not be imported."""
    # the parameter itself: while torch.fx traces, ``module.weight`` is a Proxy, which would make it "not linear"
    weight = _own_parameter(module, "weight")
    nf, nx = getattr(module, "nf", None), getattr(module, "nx", None)
    return (isinstance(nf, int) and isinstance(nx, int) and isinstance(weight, torch.Tensor)
            and tuple(weight.shape) == (nx, nf))


def is_linear(module: nn.Module | None) -> bool:
    return isinstance(module, nn.Linear) or (module is not None and is_transposed(module))


def weight(module: nn.Module) -> torch.Tensor:
    """The weight as (out features, in features), whatever the storage (a view: gradients flow)."""
    return out_in(module, module.weight)


def out_in(module: nn.Module, stored_weight: torch.Tensor) -> torch.Tensor:
    """``stored_weight`` (``module``'s weight, or a copy of it in a state dict) viewed as (out, in): writing into
    the view writes the stored tensor."""
    return stored_weight.t() if is_transposed(module) else stored_weight


def stored(module: nn.Module, weight_out_in: torch.Tensor) -> torch.Tensor:
    """A weight given as (out, in) in ``module``'s storage layout (for state dicts)."""
    return weight_out_in.t().contiguous() if is_transposed(module) else weight_out_in


def out_features(module: nn.Module) -> int:
    return module.nf if is_transposed(module) else module.out_features


def in_features(module: nn.Module) -> int:
    return module.nx if is_transposed(module) else module.in_features


def _own_parameter(module: nn.Module, name: str) -> object:
    """``module``'s own parameter ``name`` (not the attribute, which torch.fx's tracer turns into a Proxy), else the
    attribute (TorchScript modules keep their parameters in a wrapper without that lookup)."""
    try:
        return module._parameters[name]
    except (KeyError, TypeError, AttributeError, RuntimeError):
        return getattr(module, name, None)
