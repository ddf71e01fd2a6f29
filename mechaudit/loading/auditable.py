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

from ..errors import InputError
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
    """``model`` in a :class:`LogitsField` when it returns a mapping with ``logits``; ``data`` with integer inputs
    when they are token ids (at most two forward passes, on 2 samples). A forward pass that fails leaves both as
    they are, for model discovery to report. ``model`` is already eager (:func:`eager`, at load time)."""
    if isinstance(model, torch.jit.ScriptModule):
        return model, data
    sample = data.inputs[:2].to(device)
    named_ids = getattr(model, "main_input_name", None) == "input_ids"
    output = FAILED if named_ids and sample.is_floating_point() else _forward(model, sample)
    if output is FAILED and sample.is_floating_point() and _whole_numbers(data):
        as_ids = _forward(model, sample.clamp_min(0).long())  # negative ids are refused below, by name
        if as_ids is not FAILED or named_ids:
            data, output = as_token_ids(data), as_ids
    if isinstance(output, Mapping) and isinstance(output.get(FIELD), torch.Tensor):
        return LogitsField(model), data
    return model, data


def eager(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) holds, else ``model``: unwrapped where the
    model is loaded, before its forward keyword arguments, dtype and input guard are attached to it."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) and type(model).__name__ == "OptimizedModule" else model


def _whole_numbers(data: AuditData) -> bool:
    """Whether every input, pair and cue pair (all of them, not only the probed samples) holds finite whole
    numbers (``inf == round(inf)``, so finiteness is checked apart)."""
    return all(bool((torch.isfinite(tensor) & (tensor == tensor.round())).all())
               for _, tensor in _tensors(data) if tensor.is_floating_point())


def _tensors(data: AuditData) -> list[tuple[str, torch.Tensor]]:
    """``data``'s inputs, pairs and cue pairs, each with the name an error message gives it."""
    named = [("inputs", data.inputs)]
    for what, pair in (("pairs", data.pairs), ("cues", data.cues)):
        named += [(f"{what}[{index}]", tensor) for index, tensor in enumerate(pair or ())]
    return named


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
    """A copy of ``data`` whose inputs, pairs and cue pairs are integer token ids; raises :class:`InputError`,
    naming them, if some are negative."""
    for what, tensor in _tensors(data):
        negative = (tensor < 0).nonzero()
        if len(negative):
            where = tuple(negative[0].tolist())
            raise InputError(f"audit data {what}", f"are token ids for this model, but {len(negative)} are negative "
                                                   f"(first: {tensor[where].item():g} at index {list(where)}): "
                                                   "token ids are >= 0")

    def ids(pair: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if pair is None else (pair[0].long(), pair[1].long())

    return dataclasses.replace(data, inputs=data.inputs.long(), pairs=ids(data.pairs), cues=ids(data.cues))
