"""A 2-layer attention-only transformer (no MLPs, no LayerNorm) and the repeated-segment sequences it learns.

Each block adds the output of causal multi-head attention to the residual stream; the unembedding reads the
stream after both blocks. Attention heads are addressed ``blocks.0.attn:h1``: a head is its slice of the
attention output before the output projection ``blocks.<i>.attn.out``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

VOCAB = 32
SEQ_LEN = 32
D_MODEL = 64
N_HEADS = 4
N_LAYERS = 2
MIN_PERIOD, MAX_PERIOD = 4, 12
#: The planted mechanism of ``induction.safetensors``, confirmed by ablation in ``train.py``.
PLANTED_HEADS = {"previous_token": "blocks.0.attn:h2", "induction": "blocks.1.attn:h3"}


class Attention(nn.Module):
    """Causal multi-head self-attention: ``out(concat_h softmax(q_h k_h^T / sqrt(d)) v_h)``."""

    def __init__(self, d_model: int, n_heads: int, max_len: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.register_buffer("causal", torch.ones(max_len, max_len).tril().bool(), persistent=False)

    def pattern(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights (samples, heads, query position, key position)."""
        q, k, _ = self._split(x)
        return self._pattern(q, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(x)
        z = self._pattern(q, k) @ v                                  # (n, heads, T, head_dim)
        return self.out(z.transpose(1, 2).reshape(x.shape))          # heads concatenated before `out`

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def _pattern(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        t = q.shape[2]
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        return scores.masked_fill(~self.causal[:t, :t], float("-inf")).softmax(-1)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, max_len: int) -> None:
        super().__init__()
        self.attn = Attention(d_model, n_heads, max_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(x)


class AttentionOnlyTransformer(nn.Module):
    """Token ids (samples, positions) -> next-token logits (samples, positions, vocabulary)."""

    def __init__(self, vocab: int = VOCAB, d_model: int = D_MODEL, n_heads: int = N_HEADS,
                 n_layers: int = N_LAYERS, max_len: int = SEQ_LEN) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, max_len) for _ in range(n_layers))
        self.unembed = nn.Linear(d_model, vocab)

    def residual(self, tokens: torch.Tensor, upto: int) -> torch.Tensor:
        """The residual stream entering block ``upto``."""
        x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks[:upto]:
            x = block(x)
        return x

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.residual(tokens, len(self.blocks)))


def build() -> nn.Module:
    """A fresh, untrained model (the factory named in the example's audit specs)."""
    return AttentionOnlyTransformer()


def repeated_sequences(n: int, generator: torch.Generator, length: int = SEQ_LEN,
                       vocab: int = VOCAB) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences that repeat a random segment of distinct tokens at a random period from a random offset.

    A sequence is ``prefix + segment + segment + ...`` (cut at ``length``), where the prefix (random tokens not in
    the segment) has a random length, so neither the period nor the place where the repetition starts is fixed.
    Returns the tokens (n, length), the period (n,) and a mask (n, length) of the positions whose *next* token is
    predictable by induction (the current token occurred one period earlier); the last position always is.
    """
    tokens = torch.empty(n, length, dtype=torch.long)
    periods = torch.randint(MIN_PERIOD, MAX_PERIOD + 1, (n,), generator=generator)
    mask = torch.zeros(n, length, dtype=torch.bool)
    for i, period in enumerate(periods.tolist()):
        longest = length - 2 * period
        offset = int(torch.randint(0, longest + 1, (1,), generator=generator))
        order = torch.randperm(vocab, generator=generator)
        segment, others = order[:period], order[period:]
        tokens[i, :offset] = others[torch.randint(0, len(others), (offset,), generator=generator)]
        tokens[i, offset:] = segment[torch.arange(length - offset) % period]
        mask[i, offset + period:length - 1] = True
    return tokens, periods, mask


def random_sequences(n: int, generator: torch.Generator, length: int = SEQ_LEN, vocab: int = VOCAB) -> torch.Tensor:
    """Uniformly random tokens: what the control model is trained on (nothing to copy)."""
    return torch.randint(0, vocab, (n, length), generator=generator)
