"""Per-token attribution of a behaviour for models whose inputs are token ids.

captum's ``IntegratedGradients`` cannot integrate over integer inputs, so the path runs over the output of the
model's input embedding instead (Sundararajan et al. 2017, as captum's ``LayerIntegratedGradients`` does): the
embedding's output is replaced, by a forward hook, with points on the straight line from the baseline's embedding
(the corrupted prompt's when pairs are declared, else zeros) to the input's; the attribution of a token is the sum
of its attributions over the embedding dimension. By completeness the scores of a sample add up to
``f(input) - f(baseline)``; the gap (captum's convergence delta) is reported with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .circuits import Behaviour

MAX_SAMPLES, MAX_TOKENS, N_STEPS = 3, 64, 32


@dataclass(frozen=True)
class TokenAttribution:
    """One sample's attribution per token (the last ``MAX_TOKENS`` positions are kept)."""

    sample: int
    tokens: list[int]
    scores: list[float]
    first_position: int  # the position of ``tokens[0]`` in the prompt
    difference: float  # f(input) - f(baseline)
    completeness_gap: float  # sum of all positions' scores minus ``difference``

    def to_evidence(self) -> dict:
        return {"sample": self.sample, "tokens": [str(t) for t in self.tokens], "scores": self.scores,
                "first_position": self.first_position, "behaviour_difference": self.difference,
                "completeness_gap": self.completeness_gap}


def takes_token_ids(model: nn.Module, inputs: torch.Tensor) -> bool:
    """Whether ``inputs`` (samples, positions) are token ids: integers, or whole numbers in a float tensor (as
    pre-tokenized ids arrive outside next-token tasks) for a Hugging Face model with input embeddings."""
    if inputs.dim() != 2:
        return False
    if not inputs.is_floating_point():
        return True
    return _hf_embeddings(model) is not None and bool((inputs == inputs.round()).all() and (inputs >= 0).all())


def input_embedding(model: nn.Module, tokens: torch.Tensor) -> nn.Module:
    """The module that embeds token ids: Hugging Face's ``get_input_embeddings()``, else the first
    ``nn.Embedding`` that the forward pass on ``tokens`` calls."""
    found = _hf_embeddings(model)
    if found is not None:
        return found
    called: list[nn.Module] = []
    handles = [module.register_forward_hook(lambda m, i, o: called.append(m))
               for module in model.modules() if isinstance(module, nn.Embedding)]
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    if not called:
        raise ValueError("the model calls no nn.Embedding on its token ids: nothing to attribute tokens through")
    return called[0]


def token_attributions(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor, behaviour: Behaviour,
                       baseline_tokens: torch.Tensor | None = None, n_steps: int = N_STEPS,
                       device: torch.device | str = "cpu", batch_size: int = N_STEPS) -> list[TokenAttribution]:
    """Integrated Gradients of ``behaviour(model(tokens), targets)`` over the input embedding, for at most
    ``MAX_SAMPLES`` samples, from the embedding of ``baseline_tokens`` (or zeros); at most ``batch_size`` points
    of the paths per forward and backward pass."""
    from captum.attr import IntegratedGradients

    tokens, targets = tokens[:MAX_SAMPLES].to(device), targets[:MAX_SAMPLES].to(device)
    embedding = input_embedding(model, tokens[:1])
    clean = _embedded(model, embedding, tokens)
    baseline = (_embedded(model, embedding, baseline_tokens[:MAX_SAMPLES].to(device))
                if baseline_tokens is not None else torch.zeros_like(clean))

    def forward(embedded: torch.Tensor, ids: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        handle = embedding.register_forward_hook(lambda m, i, o: embedded)
        try:
            return behaviour(model(ids), wanted)
        finally:
            handle.remove()

    attributions, delta = IntegratedGradients(forward).attribute(
        clean, baselines=baseline, additional_forward_args=(tokens, targets), n_steps=n_steps,
        internal_batch_size=max(1, batch_size), return_convergence_delta=True)
    with torch.no_grad():
        difference = forward(clean, tokens, targets) - forward(baseline, tokens, targets)
    per_token = attributions.sum(-1).detach().cpu()
    first = max(0, tokens.shape[1] - MAX_TOKENS)
    return [TokenAttribution(i, [int(t) for t in tokens[i, first:].tolist()], [float(s) for s in per_token[i, first:]],
                             first, float(difference[i]), float(delta[i])) for i in range(len(tokens))]


def _hf_embeddings(model: nn.Module) -> nn.Module | None:
    """``get_input_embeddings()`` of the model or of the Hugging Face model it wraps (``hf_model``, as
    :mod:`mechaudit.loading.huggingface` wraps them), if any."""
    for candidate in (model, getattr(model, "hf_model", None)):
        getter = getattr(candidate, "get_input_embeddings", None)
        found = getter() if callable(getter) else None
        if isinstance(found, nn.Module):
            return found
    return None


def _embedded(model: nn.Module, embedding: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The output of ``embedding`` in the forward pass of ``model`` on ``tokens`` (its first call)."""
    captured: list[torch.Tensor] = []
    handle = embedding.register_forward_hook(lambda m, i, o: captured.append(o.detach()) if not captured else None)
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        handle.remove()
    return captured[0]
