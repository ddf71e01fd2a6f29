"""Synthetic subject -> attribute facts (24 subjects of two tokens, 6 attributes, 3 phrasings) and a tiny
three-block transformer that learns them in seconds.

Vocabulary: tokens 1-6 are phrasing tokens (two per phrasing), 7 is "is", subject ``i`` is the two tokens
``8 + 2i, 9 + 2i``, attribute ``a`` is token ``56 + a``. A prompt reads ``[phrase, subject, subject, phrase, is]``
and its next token is the subject's attribute.
"""

from __future__ import annotations

import torch
from torch import nn

SUBJECTS, ATTRIBUTES, TEMPLATES = 24, 6, 3
TEMPLATE_TOKENS = [(1, 2), (3, 4), (5, 6)]
SUBJECT_BASE = 8  # subject i: tokens SUBJECT_BASE + 2i, +2i+1
ATTR_BASE = SUBJECT_BASE + 2 * SUBJECTS
VOCAB = ATTR_BASE + ATTRIBUTES
REL = 7  # "is"
POSITIONS = 5


def prompt(subject: int, template: int) -> list[int]:
    """Phrasing ``template`` of "<subject> is": [phrase, subject, subject, phrase, is]."""
    a, b = TEMPLATE_TOKENS[template]
    return [a, SUBJECT_BASE + 2 * subject, SUBJECT_BASE + 2 * subject + 1, b, REL]


def subject_tokens(subject: int) -> list[int]:
    return [SUBJECT_BASE + 2 * subject, SUBJECT_BASE + 2 * subject + 1]


def facts(seed: int = 0) -> torch.Tensor:
    """The attribute (0-5) of each subject."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, ATTRIBUTES, (SUBJECTS,), generator=g)


class Block(nn.Module):
    """Pre-LayerNorm causal self-attention and an MLP, each added to the residual stream."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), 1)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class FactModel(nn.Module):
    """Token and position embeddings, ``layers`` blocks, a final LayerNorm and an unembedding."""

    def __init__(self, d: int = 32, layers: int = 3, positions: int = POSITIONS) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(positions, d) * 0.1)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln(x))


def build() -> FactModel:
    """The untrained architecture (the spec loads ``facts.safetensors`` into it)."""
    return FactModel().eval()


def train(seed: int = 0, steps: int = 250) -> tuple[FactModel, torch.Tensor, torch.Tensor]:
    """The model trained on every fact in every phrasing (seconds on one CPU core), the prompts (subject-major:
    row ``3 s + t`` is subject ``s`` in phrasing ``t``) and their attribute tokens."""
    torch.manual_seed(seed)
    model = FactModel()
    truth = facts()
    x = torch.tensor([prompt(s, t) for s in range(SUBJECTS) for t in range(TEMPLATES)])
    y = torch.tensor([ATTR_BASE + int(truth[s]) for s in range(SUBJECTS) for t in range(TEMPLATES)])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x)[:, -1], y).backward()
        optimiser.step()
    return model.eval(), x, y
