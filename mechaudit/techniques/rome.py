"""Causal tracing and rank-one model editing (ROME; Meng, Bau, Andonian, Belinkov 2022) for next-token models.

Causal tracing: the subject's token embeddings are corrupted with Gaussian noise (3 times the embeddings' standard
deviation) and, one (layer, position) at a time, the clean output of a module (a block: the hidden state; or the
MLP's output projection) is restored in the corrupted run; the probability of the true attribute it brings back
locates where the model stores the association (the paper: the MLPs at the subject's last token, in middle
layers). The edit: the MLP output projection ``W`` of the chosen layer gets the rank-one update
``W + (v* - W k*) (C^-1 k*)^T / ((C^-1 k*)^T k*)``, where ``k*`` is the projection's input at the subject's last
token (averaged over the prompts given), ``C`` the second moment of its inputs over the data (the keys it must
keep), and ``v*`` the output, found by gradient descent, that makes the model predict the new attribute; as in
the paper, ``v* - W k*`` is kept within ``clamp`` times the norm of ``W k*``.

Measured on the planted fact model (:mod:`mechaudit.examples.facts`, ``benchmarks/rome_facts.py``: each of its
24 subjects edited alone to another attribute, at the block whose restored hidden state at the subject's last
token brings back the most of the true attribute, the first block for 23 of 24): efficacy 71% (17 of 24 edited
prompts predict the new attribute), generalisation to the two other phrasings 71%, specificity 100% (the other 23
subjects keep theirs). Variants: the layer picked by the MLP-output trace instead, 62.5%, 62.5%, 100% (it points
to later blocks for 4 subjects); without the norm clamp, the same as with it; with an L2 penalty of 1e-3 on
``v* - W k*`` (the first version), 71%, 50%, 100%; ``C`` estimated on 2048 random token sequences (ROME's
statistics over much text) instead of the audit prompts, 71%, 73%, 100%; on the prompts cut after the subject,
75%, 71%, 99.4%: one subject either way, so the audit prompts stay the default; the edit at the last block,
where the trace shows no effect, 0%, 0%, 100%. Averaging ``k*`` and ``v*`` over variants of the prompt's context
(its first token replaced by each other phrasing token, ROME's random prefixes for a model of 5 positions) gave
no gain (71%, 67%, 100%, measured on the test fixture's weights), and neither did editing at the subject's first
token (58% at the first block).
Five of the 7 failures ask for attribute 4, which only one of the 24 subjects has in the training facts: the
edited output ``v*`` does not reach it even while it replaces the MLP output during its optimisation, so what
fails is the model's capacity to produce a rare attribute from one position, not the choice of ``k*`` or ``C``;
one (subject 7) is the subject whose trace points to the second block, where no edit takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import linear_maps
from ..errors import InputError
from ..model_view import installed


def last_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The logits of the next token after ``tokens`` (samples, positions): the output at the last position."""
    output = model(tokens)
    output = getattr(output, "logits", output)
    return output[:, -1] if output.dim() == 3 else output


def _logprob(model: nn.Module, tokens: torch.Tensor, target: int) -> torch.Tensor:
    return last_logits(model, tokens).log_softmax(-1)[:, target]


def _hidden(output):
    """A module's output tensor (Hugging Face blocks return a tuple whose first element is the hidden state)."""
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def causal_trace(model: nn.Module, embedding: nn.Module, modules: Sequence[nn.Module], tokens: torch.Tensor,
                 subject: list[int], target: int, seed: int = 0, runs: int = 8) -> dict:
    """``{clean, corrupted, restored (modules, positions)}``: the probability of ``target`` after ``tokens``
    (1, positions), clean, with the ``subject`` positions' embeddings noised, and with each module's clean output
    restored at each position in the noised run (averaged over ``runs`` noise draws)."""
    clean, clean_states = _clean_run(model, modules, tokens, target)
    weight = embedding.weight.detach()
    scale = 3 * float(weight.float().std())
    generator = torch.Generator().manual_seed(seed)
    noises = [(torch.randn(len(subject), weight.shape[1], generator=generator) * scale).to(weight.device, weight.dtype)
              for _ in range(runs)]

    def noised(noise: torch.Tensor):
        def hook(_module, _inputs, output):
            output = output.clone()
            output[:, subject] += noise
            return output
        return embedding.register_forward_hook(hook)

    def probability(restore: tuple[int, int] | None) -> float:
        total = 0.0
        for noise in noises:
            handles = [noised(noise)]
            if restore is not None:
                layer, position = restore

                def put_back(_module, _inputs, output, layer=layer, position=position):
                    hidden = _hidden(output).clone()
                    hidden[:, position] = clean_states[layer][:, position]
                    return _with_hidden(output, hidden)
                handles.append(modules[layer].register_forward_hook(put_back))
            try:
                with torch.no_grad():
                    total += float(_logprob(model, tokens, target).exp())
            finally:
                for handle in handles:
                    handle.remove()
        return total / len(noises)

    restored = torch.tensor([[probability((layer, position)) for position in range(tokens.shape[1])]
                             for layer in range(len(modules))])
    return {"clean": clean, "corrupted": probability(None), "restored": restored}


def _clean_run(model: nn.Module, modules: Sequence[nn.Module], tokens: torch.Tensor,
               target: int) -> tuple[float, list[torch.Tensor]]:
    """The probability of ``target`` after ``tokens`` and, from the same forward pass, each of ``modules``' output
    (a block's: its hidden state), in the order given; one hook per distinct module."""
    known = {id(module) for module in model.modules()}
    for index, module in enumerate(modules):
        if id(module) not in known:
            raise InputError("causal trace", f"module {index} ({type(module).__name__}) is not part of the model")
    distinct = {id(module): module for module in modules}
    seen: dict[int, torch.Tensor] = {}

    def keep(key: int):
        return lambda _module, _inputs, output: seen.__setitem__(key, _hidden(output).detach().clone())
    with installed(module.register_forward_hook(keep(key)) for key, module in distinct.items()), torch.no_grad():
        clean = float(_logprob(model, tokens, target).exp())
    for index, module in enumerate(modules):
        if id(module) not in seen:
            raise InputError("causal trace", f"module {index} ({type(module).__name__}) does not run on the prompt")
        _per_token("causal trace", f"module {index} ({type(module).__name__})", seen[id(module)], tokens)
    return clean, [seen[id(module)] for module in modules]


def _per_token(what: str, module: str, value: torch.Tensor, tokens: torch.Tensor) -> None:
    """Refuse a module whose tensor is not one vector per token, samples first, (samples, positions, width):
    OPT's ``fc2`` runs on its rows folded into (samples x positions, width), where ``value[:, position]`` would
    be a feature, not a token."""
    if value.dim() < 3 or tuple(value.shape[:2]) != tuple(tokens.shape[:2]):
        raise InputError(what, f"{module} reads or writes {tuple(value.shape)} for prompts {tuple(tokens.shape)}, "
                               "not one vector per token with the prompts first (rows folded, or sequence-first): "
                               "tracing and editing need (prompts, positions, width); name a module that has it "
                               "([edit].projection)")


@dataclass(frozen=True)
class RankOneEdit:
    """The update of one projection (a Linear, or Hugging Face's Conv1D): ``weight + outer(delta, key_direction)``
    in (out, in) layout."""

    delta: torch.Tensor
    key_direction: torch.Tensor

    def apply(self, projection: nn.Module) -> None:
        with torch.no_grad():
            weight = linear_maps.weight(projection)
            weight += torch.outer(self.delta, self.key_direction).to(weight.device, weight.dtype)


def projection_inputs(model: nn.Module, projection: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The projection's inputs on ``tokens`` (samples, positions, features)."""
    seen: list[torch.Tensor] = []
    with installed([projection.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach()))]), \
            torch.no_grad():
        model(tokens)
    _per_token("ROME", f"projection {type(projection).__name__}", seen[0], tokens)
    return seen[0]


def second_moment(keys: torch.Tensor, regularisation: float = 1e-2) -> torch.Tensor:
    """``C = E[k k^T] + regularisation * I`` (float64) over ``keys`` (..., features)."""
    keys = keys.flatten(0, -2).double()
    moment = keys.T @ keys / len(keys)
    return moment + regularisation * torch.eye(len(moment), dtype=torch.float64, device=moment.device)


def key_second_moment(model: nn.Module, projection: nn.Module, tokens: torch.Tensor, batch_size: int = 64,
                      regularisation: float = 1e-2) -> torch.Tensor:
    """:func:`second_moment` of ``projection``'s inputs at every position of ``tokens``, accumulated over batches
    of ``batch_size`` sequences (one forward pass per batch, never the whole set at once)."""
    total, count = None, 0
    for start in range(0, len(tokens), batch_size):
        keys = projection_inputs(model, projection, tokens[start:start + batch_size]).flatten(0, -2).double()
        total = keys.T @ keys if total is None else total + keys.T @ keys
        count += len(keys)
    moment = total / count
    return moment + regularisation * torch.eye(len(moment), dtype=torch.float64, device=moment.device)


def rank_one_edit(model: nn.Module, projection: nn.Module, prompts: torch.Tensor, subject_position: int,
                  new_target: int, key_data: torch.Tensor | None = None, steps: int = 200, lr: float = 0.1,
                  regularisation: float = 1e-2, clamp: float = 4.0, moment: torch.Tensor | None = None,
                  value_penalty: float = 0.0) -> RankOneEdit:
    """ROME's update of ``projection`` so that ``prompts`` (n, positions; the same subject, several phrasings)
    predict ``new_target``: ``k*`` is the mean input at ``subject_position``, ``C`` is ``moment`` or the second
    moment of the projection's inputs over every position of ``key_data``; ``v* - W k*`` stays within ``clamp``
    times ``|W k*|`` (an optional L2 ``value_penalty`` on it as well)."""
    if moment is None:
        if key_data is None:
            raise ValueError("give key_data or moment")
        moment = second_moment(projection_inputs(model, projection, key_data), regularisation)
    weight = linear_maps.weight(projection).detach()
    key = projection_inputs(model, projection, prompts)[:, subject_position].mean(0).double()
    current = (weight.double() @ key).to(weight.dtype)
    bias = projection.bias.detach() if getattr(projection, "bias", None) is not None else None
    value = current.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([value], lr=lr)
    limit = clamp * float(current.norm())

    def replace(_module, _inputs, output):
        output = output.clone()
        output[:, subject_position] = value + bias if bias is not None else value
        return output

    handle = projection.register_forward_hook(replace)
    try:
        for _ in range(steps):
            loss = -_logprob(model, prompts, new_target).mean()
            if value_penalty:
                loss = loss + value_penalty * (value - current).pow(2).sum()
            # the gradient of ``value`` only: backward() would also fill every parameter's .grad (a model's worth)
            (value.grad,) = torch.autograd.grad(loss, [value])
            optimiser.step()
            with torch.no_grad():
                shift = value - current
                if float(shift.norm()) > limit > 0:
                    value.copy_(current + shift * (limit / float(shift.norm())))
    finally:
        handle.remove()
    solved = torch.linalg.solve(moment.to(key.device), key)
    direction = solved / (solved @ key)
    return RankOneEdit((value.detach().double() - current.double()).float(), direction.float())
