"""Attention patterns of heads: which token attends to which, read from the model's own attention computation.

Models compute attention in many ways, so the weights are captured at the one operation they all share, while
the attention block's forward runs (a :class:`torch.overrides.TorchFunctionMode` opened by hooks on the block):

* a softmax whose output is ``(samples, heads, queries, keys)`` (hand-written attention, Hugging Face "eager");
* ``F.scaled_dot_product_attention``, whose weights are never materialised: they are recomputed from its query,
  key, mask and scale (Hugging Face "sdpa", fused kernels);
* ``F.multi_head_attention_forward`` (torch's ``nn.MultiheadAttention``), asked for per-head weights.

The weights are read only; the block's output is unchanged. Looking at attention patterns of the heads a circuit
runs through is the practice of Elhage et al. 2021 and Olsson et al. 2022 (induction heads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..model_view import installed
from ..torch_attention import without_fast_path

SOFTMAXES = {torch.softmax, F.softmax, torch.Tensor.softmax}


class _Capture(TorchFunctionMode):
    """Records the attention weights ``(samples, heads, queries, keys)`` computed while it is open."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.weights: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.multi_head_attention_forward:
            kwargs.update(need_weights=True, average_attn_weights=False)
            output = func(*args, **kwargs)
            if isinstance(output, tuple) and isinstance(output[1], torch.Tensor):
                self._keep(output[1])
            return output
        output = func(*args, **kwargs)
        if func in SOFTMAXES:
            self._keep(output)
        elif func is F.scaled_dot_product_attention:
            self._keep(_sdpa_weights(*args, **kwargs))
        return output

    def _keep(self, weights: torch.Tensor) -> None:
        if isinstance(weights, torch.Tensor) and weights.dim() == 4 and weights.shape[1] == self.heads:
            self.weights.append(weights.detach().float().cpu())


def _sdpa_weights(query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False) -> torch.Tensor | None:
    """The weights ``softmax(q k^T * scale + mask)`` that ``F.scaled_dot_product_attention`` applies."""
    if query.dim() != 4 or key.dim() != 4:
        return None
    with torch.no_grad():
        if key.shape[1] != query.shape[1]:  # grouped-query attention: each key head serves several query heads
            key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        scores = query.float() @ key.float().transpose(-1, -2) * (scale or 1 / math.sqrt(query.shape[-1]))
        if is_causal:
            causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        if attn_mask is not None:
            scores = (scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                      else scores + attn_mask.float())
        return scores.softmax(-1)


def head_patterns(model: nn.Module, block: nn.Module, heads: int, inputs: torch.Tensor,
                  device: str | torch.device = "cpu") -> torch.Tensor | None:
    """The attention weights of every head of ``block`` (a module with ``heads`` heads) on ``inputs`` (one batch),
    ``(samples, heads, queries, keys)`` on the CPU; None when the block computes none that can be read."""
    mode, open_ = _Capture(heads), []

    def enter(_module, _args):
        mode.__enter__()
        open_.append(True)

    def leave(_module, _args, _output):
        mode.__exit__(None, None, None)
        open_.pop()

    try:
        hooks = (register(hook) for register, hook in ((block.register_forward_pre_hook, enter),
                                                       (block.register_forward_hook, leave)))
        with installed(hooks), \
                without_fast_path(), torch.no_grad():
            model(inputs.to(device))
    finally:
        if open_:  # the block raised: close the mode it opened
            mode.__exit__(None, None, None)
    usable = [w for w in mode.weights if w.shape[0] == inputs.shape[0]]
    return usable[-1] if usable else None
