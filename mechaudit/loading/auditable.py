"""The form of a model that mechaudit audits, for two common idioms that would otherwise hide its layers.

* A model compiled with ``torch.compile`` is audited as the eager module it wraps (the same parameters and the same
  function): compiled graphs do not run forward hooks, and its module paths keep no ``_orig_mod.`` prefix.
* A model whose forward returns a Hugging Face ``ModelOutput`` (or another mapping) holding ``logits`` is audited on
  those logits: ``BertForSequenceClassification``, ``ViTForImageClassification`` or ``LlamaForCausalLM`` need no
  wrapper of the user's own. Token ids that arrive as floats (the audit data of a classification task is float32)
  are given back to such a model as integers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .huggingface import _Transparent

FIELD = "logits"


class LogitsField(_Transparent):
    """``model`` whose forward returns only the ``logits`` of its output mapping; module paths are unchanged."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.training = model.training
        self.token_ids = takes_token_ids(model)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.hf_model(as_token_ids(inputs) if self.token_ids else inputs)[FIELD]


def auditable_model(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """``model`` without a ``torch.compile`` wrapper, and in a :class:`LogitsField` when its forward on ``sample``
    returns a mapping with a ``logits`` tensor. A forward pass that fails leaves it as it is, for model discovery
    to report."""
    model = eager(model)
    if isinstance(model, torch.jit.ScriptModule):
        return model
    try:
        with torch.no_grad():
            output = model(as_token_ids(sample) if takes_token_ids(model) else sample)
    except Exception:  # noqa: BLE001 - the discovery's forward pass reports it, with its context
        return model
    if isinstance(output, Mapping) and isinstance(output.get(FIELD), torch.Tensor):
        return LogitsField(model)
    return model


def takes_token_ids(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face model whose main input is token ids."""
    return getattr(model, "main_input_name", None) == "input_ids"


def as_token_ids(inputs: torch.Tensor) -> torch.Tensor:
    return inputs.long() if inputs.is_floating_point() else inputs


def eager(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) holds, else ``model``."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) and type(model).__name__ == "OptimizedModule" else model
