"""Keep the audit data and the model's state safe from the model's side effects.

- Every call of the model gets copies of its tensor arguments (a forward pre-hook on the root module), so a model
  that works in place on its input (``x.relu_()``, ``x[:, 0] = 0``) cannot rewrite the audit data that later
  batches and rules read. TorchScript modules accept no hooks; their inputs are not copied.
- The model's buffers are saved once, right after loading, and put back before every rule, so a model that counts
  calls or updates running statistics in ``forward`` gives each rule the same model whichever rules ran before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _copied(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _copy_arguments(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return tuple(_copied(a) for a in args), {k: _copied(v) for k, v in kwargs.items()}


class ModelGuard:
    """Attach to a model (:meth:`attach`), put its buffers back before each rule (:meth:`restore`), and leave it
    as it was found when the audit ends (:meth:`close`)."""

    def __init__(self) -> None:
        self._model: nn.Module | None = None
        self._handle = None
        self._buffers: dict[str, torch.Tensor] = {}

    def attach(self, model: nn.Module) -> None:
        self._model = model
        self._buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
        if not isinstance(model, torch.jit.ScriptModule):
            self._handle = model.register_forward_pre_hook(_copy_arguments, with_kwargs=True)

    def restore(self) -> None:
        """Put every buffer back to its value when the model was loaded."""
        if self._model is None:
            return
        current = dict(self._model.named_buffers())
        with torch.no_grad():
            for name, saved in self._buffers.items():
                buffer = current.get(name)
                if buffer is not None and buffer.shape == saved.shape and buffer.dtype == saved.dtype:
                    buffer.copy_(saved)
                else:  # replaced by forward with a tensor of another shape: set the saved one back
                    owner, _, attribute = name.rpartition(".")
                    self._model.get_submodule(owner).register_buffer(attribute, saved.clone())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.restore()

    def __enter__(self) -> ModelGuard:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
