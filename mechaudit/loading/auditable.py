"""The form of a model and its data that mechaudit audits, for common idioms that would otherwise hide its layers
or fail its first forward pass.

* A model compiled with ``torch.compile`` is audited as the eager module it wraps (the same parameters and the same
  function): compiled graphs do not run forward hooks, and its module paths keep no ``_orig_mod.`` prefix.
* Token ids that arrive as floats (a classification task's inputs are read as float32) are given to the model as
  integers when it takes token ids: a Hugging Face model whose main input is ``input_ids``, or one whose forward
  runs on the ids as integers only (an ``nn.Embedding`` first). The audit data then holds integers, so rules that
  perturb real-valued inputs are skipped with that reason instead of perturbing ids.
* A model whose forward returns a Hugging Face ``ModelOutput`` (or another mapping) holding ``logits`` is audited on
  those logits: ``BertForSequenceClassification``, ``ViTForImageClassification`` or ``LlamaForCausalLM`` need no
  wrapper of the user's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from ..interrupts import Interrupted
from .data import AuditData
from .huggingface import _Transparent

FIELD = "logits"


class LogitsField(_Transparent):
    """``model`` whose forward returns only the ``logits`` of its output mapping; module paths are unchanged."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.training = model.training

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.hf_model(inputs)[FIELD]


def auditable(model: nn.Module, data: AuditData, device: torch.device) -> tuple[nn.Module, AuditData]:
    """``model`` without a ``torch.compile`` wrapper, in a :class:`LogitsField` when it returns a mapping with
    ``logits``; ``data`` with integer inputs when they are token ids. A forward pass that fails leaves both as they
    are, for model discovery to report."""
    model = eager(model)
    if isinstance(model, torch.jit.ScriptModule):
        return model, data
    if takes_token_ids(model, data.inputs[:2].to(device)):
        data = as_token_ids(data)
    output = _forward(model, data.inputs[:2].to(device))
    if isinstance(output, Mapping) and isinstance(output.get(FIELD), torch.Tensor):
        return LogitsField(model), data
    return model, data


def eager(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) holds, else ``model``."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) and type(model).__name__ == "OptimizedModule" else model


def takes_token_ids(model: nn.Module, sample: torch.Tensor) -> bool:
    """Whether ``sample`` holds float token ids for ``model``: whole numbers, and ``model`` a Hugging Face model
    whose main input is ``input_ids`` or one whose forward fails on them as floats and runs on them as integers."""
    if not sample.is_floating_point() or not bool((sample == sample.round()).all()) or not bool((sample >= 0).all()):
        return False
    if getattr(model, "main_input_name", None) == "input_ids":
        return True
    return _forward(model, sample) is FAILED and _forward(model, sample.long()) is not FAILED


FAILED = object()


def _forward(model: nn.Module, inputs: torch.Tensor) -> object:
    """``model(inputs)``, or :data:`FAILED` when it raises (even ``sys.exit``): model discovery runs the forward
    pass again and reports its failure in context. An interrupt by the user, or a time-out, is not caught."""
    try:
        with torch.no_grad():
            return model(inputs)
    except Interrupted:
        raise
    except (Exception, KeyboardInterrupt, SystemExit):  # noqa: BLE001 - reported by the discovery's forward pass
        return FAILED


def as_token_ids(data: AuditData) -> AuditData:
    """A copy of ``data`` whose inputs, pairs and cue pairs are integer token ids."""
    def ids(pair: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if pair is None else (pair[0].long(), pair[1].long())

    return dataclasses.replace(data, inputs=data.inputs.long(), pairs=ids(data.pairs), cues=ids(data.cues))
