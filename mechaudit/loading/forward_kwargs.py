"""Extra arguments a model's forward needs (``[model] forward_kwargs``), e.g. ``forward(x, sr=16000)``.

mechaudit calls every model as ``model(inputs)``. For a Python module the keyword arguments are bound to its own
``forward`` (the module keeps its addresses; a deep copy, as attribution sanity makes, keeps them too; torch.fx
traces with them as constants). A TorchScript archive cannot take a new method, so it is wrapped in a module that
passes them on (:class:`ScriptWithKwargs`).
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import torch
from torch import nn

from ..errors import InputError

#: Instance attribute holding the bound keyword arguments (read by mechaudit's torch.fx tracer).
ATTRIBUTE = "_mechaudit_forward_kwargs"


def bind_forward_kwargs(module: nn.Module, kwargs: dict[str, Any], where: str = "[model] forward_kwargs") -> nn.Module:
    """``module``, called as ``module(inputs)``, runs ``forward(inputs, **kwargs)``."""
    if not kwargs:
        return module
    _check_names(module, kwargs, where)
    if isinstance(module, torch.jit.ScriptModule):
        return ScriptWithKwargs(module, kwargs)
    setattr(module, ATTRIBUTE, dict(kwargs))
    module.forward = types.MethodType(_forward_with_kwargs, module)
    return module


def _forward_with_kwargs(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return type(self).forward(self, *args, **{**getattr(self, ATTRIBUTE), **kwargs})


class ScriptWithKwargs(nn.Module):
    """A TorchScript archive called with fixed keyword arguments. Its submodules, parameters and buffers are
    registered under their own names (``fc1``, not ``archive.fc1``), so paths read as in the archive."""

    def __init__(self, archive: torch.jit.ScriptModule, kwargs: dict[str, Any]) -> None:
        super().__init__()
        object.__setattr__(self, "archive", archive)  # not registered: its children are
        self.kwargs = dict(kwargs)
        for name, child in archive.named_children():
            self.add_module(name, child)
        for name, parameter in archive.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        for name, buffer in archive.named_buffers(recurse=False):
            self.register_buffer(name, buffer)

    def __deepcopy__(self, memo: dict) -> ScriptWithKwargs:
        """A copy whose registered parts are those the copied archive runs (attribution sanity randomises them)."""
        import copy

        return ScriptWithKwargs(copy.deepcopy(self.archive, memo), self.kwargs).train(self.training)

    def forward(self, inputs: torch.Tensor) -> Any:
        return self.archive(inputs, **self.kwargs)


def _check_names(module: nn.Module, kwargs: dict[str, Any], where: str) -> None:
    names = _parameter_names(module)
    if names is None:
        return
    unknown = [name for name in kwargs if name not in names]
    if unknown:
        raise InputError(where, f"forward() has no argument '{unknown[0]}' (it takes: {', '.join(names) or 'none'})")


def _parameter_names(module: nn.Module) -> list[str] | None:
    """The names forward accepts after the inputs, or None when it takes ``**kwargs`` or cannot be read."""
    if isinstance(module, torch.jit.ScriptModule):
        try:
            return [argument.name for argument in module.forward.schema.arguments[2:]]  # self, inputs
        except (AttributeError, RuntimeError):
            return None
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters[1:] if p.kind is not inspect.Parameter.VAR_POSITIONAL]
