"""A RASP program compiled to transformer weights by tracr (``pip install tracr-pypi==1.0.0``), copied into a torch
transformer, with an exactly known circuit (R301 nodes, L207 heads). Skipped when tracr is not installed.

Program: ``reverse`` (tracr's ``lib.make_reverse``: ``length`` by selector width, ``opp_idx = length - index - 1``
in MLPs, and one attention head that moves the token at ``opp_idx``). tracr allocates every layer an attention and
an MLP block and leaves the ones the program does not need at exactly zero. The audit data is every word of 1 to 4
letters (padded); the behaviour is the logit of the correct output at position 1 (the word's last letter), and the
pairs change that letter. The truth comes from the program and the weights: the RASP expressions whose values
depend on the token values (``token_dependent``: ``length`` selects with the always-true comparison and
``opp_idx`` reads positions, so for reverse only ``reverse`` itself), and the heads and neurons whose output
weights write those expressions' residual dimensions (``true_units``): the one head of the final Aggregate; every
other head and neuron is a true negative.
The torch copy reproduces tracr's outputs exactly (checked on every audit sequence before auditing).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from mechaudit.api import audit
from mechaudit.loading import AuditData

from .table import Row, Verdict, auroc, findings, rule_status

VOCAB, MAX_LEN = ("a", "b", "c"), 4


class TracrAttention(nn.Module):
    """tracr's attention: softmax(q k^T / sqrt(head_dim)) per head, non-causal, padding keys masked out; heads
    concatenated before ``out``."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.q, self.k, self.v = (nn.Linear(d_model, n_heads * head_dim) for _ in range(3))
        self.out = nn.Linear(n_heads * head_dim, d_model)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = (proj(x).reshape(n, t, self.n_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        weights = scores.masked_fill(~keep[:, None, None, :], -1e30).softmax(-1)
        return self.out((weights @ v).transpose(1, 2).reshape(n, t, -1))


class TracrMLP(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, hidden)
        self.proj = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.fc(x)))


class TracrBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, head_dim: int, hidden: int) -> None:
        super().__init__()
        self.attn, self.mlp = TracrAttention(d_model, n_heads, head_dim), TracrMLP(d_model, hidden)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, keep)
        return x + self.mlp(x)


class TracrTransformer(nn.Module):
    """Token ids (samples, positions) -> logits over the output vocabulary (samples, positions, outputs)."""

    def __init__(self, params: dict, config, unembed: np.ndarray, pad: int) -> None:
        super().__init__()
        self.pad = pad
        token, pos = params["token_embed"]["embeddings"], params["pos_embed"]["embeddings"]
        d_model, hidden = token.shape[1], config.mlp_hidden_size
        self.embed, self.pos = nn.Embedding(*token.shape), nn.Embedding(*pos.shape)
        self.blocks = nn.ModuleList(TracrBlock(d_model, config.num_heads, config.key_size, hidden)
                                    for _ in range(config.num_layers))
        self.unembed = nn.Linear(d_model, unembed.shape[1], bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(torch.tensor(np.asarray(token)))
            self.pos.weight.copy_(torch.tensor(np.asarray(pos)))
            self.unembed.weight.copy_(torch.tensor(unembed.T))
            for index, block in enumerate(self.blocks):
                prefix = f"transformer/layer_{index}"
                for name, linear in (("query", block.attn.q), ("key", block.attn.k), ("value", block.attn.v),
                                     ("linear", block.attn.out)):
                    _copy(linear, params[f"{prefix}/attn/{name}"])
                _copy(block.mlp.fc, params[f"{prefix}/mlp/linear_1"])
                _copy(block.mlp.proj, params[f"{prefix}/mlp/linear_2"])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        keep = tokens != self.pad
        for block in self.blocks:
            x = block(x, keep)
        return self.unembed(x)


def _copy(linear: nn.Linear, weights: dict) -> None:
    linear.weight.copy_(torch.tensor(np.asarray(weights["w"])).T)
    linear.bias.copy_(torch.tensor(np.asarray(weights["b"])))


def compile_reverse():
    """tracr's compiled ``reverse`` program, its torch copy and the input/output encodings."""
    from tracr.compiler import compiling, lib
    from tracr.rasp import rasp

    program = lib.make_reverse(rasp.tokens)
    compiled = compiling.compile_rasp_to_model(program, vocab=set(VOCAB), max_seq_len=MAX_LEN, compiler_bos="BOS")
    outputs = [label for label in compiled.residual_labels if label.startswith(f"{program.label}:")]
    unembed = np.zeros((len(compiled.residual_labels), len(outputs)), np.float32)
    for column, label in enumerate(outputs):
        unembed[compiled.residual_labels.index(label), column] = 1.0
    pad = compiled.input_encoder.encoding_map["compiler_pad"]
    model = TracrTransformer(compiled.params, compiled.model_config, unembed, pad).eval()
    return program, compiled, model, compiled.input_encoder.encoding_map, [label.split(":", 1)[1]
                                                                             for label in outputs]


def sequences() -> list[list[str]]:
    """Every word of length 1 to MAX_LEN, after BOS, padded to MAX_LEN."""
    return [["BOS", *word, *["compiler_pad"] * (MAX_LEN - length)]
            for length in range(1, MAX_LEN + 1) for word in itertools.product(VOCAB, repeat=length)]


def token_dependent(expr) -> set[str]:
    """Labels of the RASP expressions whose values depend on the token values (not only on positions or BOS): a
    Select with the always-true comparison ignores the values it compares; everything else depends on its
    children."""
    from tracr.rasp import rasp

    found: set[str] = set()

    def visit(node) -> bool:
        if node is rasp.tokens:
            depends = True
        elif isinstance(node, rasp.Select) and node.predicate == rasp.Comparison.TRUE:
            depends = False
        else:
            depends = any([visit(child) for child in node.children])
        if depends:
            found.add(node.label)
        return depends

    visit(expr)
    return found


def true_units(model: TracrTransformer, residual_labels: list[str], dependent_labels: set[str]) -> dict[str, bool]:
    """Every head and MLP neuron, and whether it writes the value of a token-dependent expression into the
    residual stream (its output weights are non-zero on that expression's dimensions)."""
    dependent = torch.tensor([label.split(":", 1)[0] in dependent_labels for label in residual_labels])
    truth = {}
    for index, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        for head in range(attn.n_heads):
            rows = slice(head * attn.head_dim, (head + 1) * attn.head_dim)
            truth[f"blocks.{index}.attn:h{head}"] = bool(attn.out.weight[dependent][:, rows].abs().sum() > 0)
        for unit in range(mlp.fc.out_features):
            truth[f"blocks.{index}.mlp.fc:u{unit}"] = bool(mlp.proj.weight[dependent, unit].abs().sum() > 0)
    return truth


def rows(quick: bool = False, seed: int = 0) -> list[Row]:
    try:
        program, compiled, model, encoding, outputs = compile_reverse()
    except ImportError:
        return [Row("tracr", "reverse (not run: tracr-pypi not installed)", "R301", "node AUROC", None, None, None)]
    words = sequences()
    tokens = torch.tensor([[encoding[s] for s in word] for word in words])
    lengths = [sum(s in VOCAB for s in word) for word in words]
    with torch.no_grad():
        ours = model(tokens).argmax(-1)
    for word, row, length in zip(words, ours.tolist(), lengths):
        if [outputs[i] for i in row[1:length + 1]] != compiled.apply(word[:length + 1]).decoded[1:]:
            raise AssertionError(f"the torch copy of the tracr model differs from tracr on {word}")
    last = torch.tensor(lengths)  # position 1 reads back the last token, at position `length`
    labels = torch.tensor([outputs.index(word[length]) for word, length in zip(words, lengths)])
    corrupted = tokens.clone()
    rows_ = torch.arange(len(words))
    corrupted[rows_, last] = torch.tensor([encoding[VOCAB[(VOCAB.index(word[length]) + 1) % len(VOCAB)]]
                                           for word, length in zip(words, lengths)])
    layers = [f"blocks.{i}.attn" for i in range(len(model.blocks))] + [f"blocks.{i}.mlp.fc"
                                                                       for i in range(len(model.blocks))]
    data = AuditData(inputs=tokens, labels=labels, pairs=(tokens, corrupted))
    result = audit(model, data, task="next-token", behaviour={"kind": "label_logit", "position": 1},
                   layers=layers, select=["R301", "L207"], seed=seed,
                   rules={"R301": {"max_edges": 100000, "top_nodes": 100000}})
    truth = true_units(model, compiled.residual_labels, token_dependent(program))
    units = list(truth)
    (discovery,) = findings(result, "R301") or [None]
    node_scores = {row["component"]: row["score"] for row in (discovery.evidence.get("top_nodes") or [])} \
        if discovery is not None else {}
    patching = findings(result, "L207")
    recovered = {row["component"]: row["recovered_fraction"]
                 for f in patching for row in (f.evidence or {}).get("components", [])}
    heads = [u for u in units if ".attn:" in u]
    return [Row("tracr", "reverse (compiled RASP)", "R301", "node AUROC (heads + MLP neurons)",
                auroc([truth[u] for u in units], [abs(node_scores.get(u, 0.0)) for u in units]), None,
                Verdict(rule_status(result, "R301"), None)),
            Row("tracr", "reverse (compiled RASP)", "L207", "head AUROC (recovered fraction)",
                auroc([truth[u] for u in heads], [abs(recovered.get(u, 0.0)) for u in heads]), None,
                Verdict(rule_status(result, "L207"), "pass"))]
