"""Previous-token and induction heads (L207 patching, L202 head ablation) on the embedded ``induction`` example and
its control twin (the same architecture trained without repeated segments).

Truth, read from the model's own weights and attention patterns on the audit prompts: a layer-0 head is a
previous-token head when its mean attention from each position to the one before is above ``PATTERN_THRESHOLD``; a
layer-1 head is an induction head when its mean attention from a repeated token to the position after that token's
previous occurrence is above it; either counts only if its output-projection columns write into the residual stream
(norm above 5 % of the largest head's: the training's group lasso zeroes the others). Whether the copying
behaviour is there at all is the mean gap of the correct token's logit between the clean and the corrupted
prompts, against 3 standard errors (computed here with plain forward passes).
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from mechaudit.api import audit
from mechaudit.examples import EXAMPLES
from mechaudit.examples.induction.model import build
from mechaudit.loading import AuditData

from .table import Row, Verdict, auroc, findings, rule_status

PATTERN_THRESHOLD = 0.4
WRITE_THRESHOLD = 0.05  # of the largest head's output-projection norm; the training prunes the others to zero
LAYERS = ["blocks.0.attn", "blocks.1.attn"]


def load(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    folder = EXAMPLES[name].spec.parent
    model = build()
    model.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
    with np.load(folder / "audit_data.npz") as arrays:
        data = {key: torch.from_numpy(arrays[key]).long() for key in ("inputs", "labels", "clean", "corrupted")}
    return model.eval(), data


@torch.no_grad()
def head_scores(model: torch.nn.Module, tokens: torch.Tensor) -> dict[str, float]:
    """Previous-token score of each layer-0 head and induction score of each layer-1 head."""
    scores = {}
    for layer, block in enumerate(model.blocks):
        pattern = block.attn.pattern(model.residual(tokens, layer))          # (n, heads, query, key)
        if layer == 0:
            per_head = pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, 2))
        else:
            per_head = _induction_score(pattern, tokens)
        scores.update({f"{LAYERS[layer]}:h{h}": float(v) for h, v in enumerate(per_head)})
    return scores


def _induction_score(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean attention from each repeated token to the position after its most recent previous occurrence."""
    positions = tokens.shape[1]
    earlier = torch.ones(positions, positions, dtype=torch.bool).tril(-1)
    same = (tokens[:, :, None] == tokens[:, None, :]) & earlier                     # (n, query, earlier key)
    last = (same * torch.arange(1, positions + 1)).argmax(-1)                        # most recent occurrence
    repeated = same.any(-1)                                                         # (n, query)
    after = (last + 1).clamp(max=positions - 1)[:, None, :, None].expand(-1, pattern.shape[1], -1, 1)
    attention = pattern.gather(-1, after)[..., 0]                                   # (n, heads, query)
    return (attention * repeated[:, None]).sum((0, 2)) / repeated.sum()


def writes(model: torch.nn.Module) -> dict[str, float]:
    """Norm of each head's columns of the output projection (what the head can write into the residual)."""
    norms = {}
    for layer, block in enumerate(model.blocks):
        columns = block.attn.out.weight.detach().reshape(block.attn.out.out_features, block.attn.n_heads, -1)
        norms.update({f"{LAYERS[layer]}:h{h}": float(v) for h, v in enumerate(columns.norm(dim=(0, 2)))})
    return norms


def true_heads(model: torch.nn.Module, tokens: torch.Tensor) -> set[str]:
    """Heads with the previous-token (layer 0) or induction (layer 1) pattern that also write into the residual."""
    norms = writes(model)
    return {head for head, score in head_scores(model, tokens).items()
            if score > PATTERN_THRESHOLD and norms[head] > WRITE_THRESHOLD * max(norms.values())}


@torch.no_grad()
def behaviour_present(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> bool:
    """Is the correct token's last-position logit higher on clean than on corrupted prompts, beyond 3 SE?"""
    labels = data["labels"][:, None]
    gap = (model(data["clean"])[:, -1].gather(1, labels) - model(data["corrupted"])[:, -1].gather(1, labels))[:, 0]
    return bool(gap.mean().abs() > 3 * gap.std() / len(gap) ** 0.5)


def _audit(model: torch.nn.Module, data: dict[str, torch.Tensor], seed: int):
    audit_data = AuditData(inputs=data["inputs"], labels=data["labels"], pairs=(data["clean"], data["corrupted"]))
    return audit(model, audit_data, task="next-token", behaviour={"kind": "label_logit", "position": -1},
                 layers=LAYERS, select=["L202", "L207"], seed=seed)


def rows(quick: bool = False, seed: int = 0) -> list[Row]:
    model, data = load("induction")
    control, control_data = load("induction-control")
    planted = true_heads(model, data["inputs"])
    heads = list(writes(model))
    truth = [h in planted for h in heads]
    result, control_result = _audit(model, data, seed), _audit(control, control_data, seed)
    control_truth = "fail" if not behaviour_present(control, control_data) else None  # L207: behaviour absent
    (patching,) = findings(result, "L207")
    recovered = {row["component"]: row["recovered_fraction"] for row in patching.evidence.get("components", [])}
    drops = {f.location.component: f.value for f in findings(result, "L202") if f.status == "fail"}
    control_l202 = "fail" if true_heads(control, control_data["inputs"]) else "pass"
    planted_l207 = "pass" if behaviour_present(model, data) else "fail"
    return [
        Row("heads", "induction", "L207", "head AUROC (recovered fraction)",
            auroc(truth, [abs(recovered.get(h, 0.0)) for h in heads]),
            Verdict(rule_status(control_result, "L207"), control_truth),
            Verdict(rule_status(result, "L207"), planted_l207)),
        Row("heads", "induction", "L202", "head AUROC (ablation drop)",
            auroc(truth, [drops.get(h, 0.0) for h in heads]),
            Verdict(rule_status(control_result, "L202"), control_l202),
            Verdict(rule_status(result, "L202"), "fail" if any(truth) else "pass")),
    ]
