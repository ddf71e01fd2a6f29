"""Regenerate the 'induction' example: the induction model, its control and the audit prompts.

Run ``python -m mechaudit.examples.induction.train``. Deterministic (fixed seeds, deterministic algorithms, CPU,
one thread); writes next to this file:

* ``induction.safetensors``: trained on sequences that repeat a random segment at a random period from a random
  offset (:func:`~.model.repeated_sequences`), next-token loss on the positions predictable by copying;
* ``induction-control.safetensors``: same architecture, seed and recipe, trained on uniformly random tokens (no
  repeats: nothing to copy, so no reason to grow an induction mechanism);
* ``audit_data.npz``: audit prompts whose last next token is predictable only by induction.

Both models are trained with a group-lasso penalty on each head's slice of the output projection, so that one
head per layer does the work: the previous-token head in layer 0 and the induction head in layer 1 are the planted
truth (:data:`~.model.PLANTED_HEADS`). The script confirms it by the heads' attention patterns and by ablating
every head in turn, and prints the figures quoted in the README.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ...activations import unit_statistics
from ...model_view import ModelView
from ...techniques.circuits import target_logit
from ...techniques.node_ablation import ablated
from .model import (
    D_MODEL,
    N_HEADS,
    PLANTED_HEADS,
    SEQ_LEN,
    VOCAB,
    AttentionOnlyTransformer,
    build,
    random_sequences,
    repeated_sequences,
)

HERE = Path(__file__).resolve().parent
SEED = 0
STEPS = 1500
BATCH_SIZE = 128
TRAIN_SEQUENCES = 32768
LEARNING_RATE = 3e-3
HEAD_LASSO = 0.015
PRUNE_NORM = 0.02
AUDIT_PROMPTS = 256


def _head_norms(model: AttentionOnlyTransformer) -> torch.Tensor:
    """Frobenius norm of each head's columns of the output projection: (layers, heads)."""
    return torch.stack([block.attn.out.weight.reshape(D_MODEL, N_HEADS, -1).norm(dim=(0, 2))
                        for block in model.blocks])


def train(control: bool) -> AttentionOnlyTransformer:
    torch.manual_seed(SEED)
    model = build()
    generator = torch.Generator().manual_seed(SEED)
    if control:
        data = random_sequences(TRAIN_SEQUENCES, generator)
        scored = torch.ones_like(data, dtype=torch.bool)
        scored[:, -1] = False
    else:
        data, _, scored = repeated_sequences(TRAIN_SEQUENCES, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, STEPS)
    model.train()
    for _ in range(STEPS):
        batch = torch.randint(0, TRAIN_SEQUENCES, (BATCH_SIZE,), generator=generator)
        tokens, mask = data[batch], scored[batch][:, :-1]
        logits = model(tokens)[:, :-1]
        loss = F.cross_entropy(logits[mask], tokens[:, 1:][mask])
        optimizer.zero_grad()
        (loss + HEAD_LASSO * _head_norms(model).sum()).backward()
        optimizer.step()
        schedule.step()
    return _prune(model).eval()


def _prune(model: AttentionOnlyTransformer) -> AttentionOnlyTransformer:
    """Zero the output-projection columns of every head whose norm the lasso drove below ``PRUNE_NORM``."""
    with torch.no_grad():
        for block, norms in zip(model.blocks, _head_norms(model)):
            weight = block.attn.out.weight.view(D_MODEL, N_HEADS, -1)
            weight[:, norms < PRUNE_NORM] = 0.0
    return model


def audit_data(seed: int = 1) -> dict[str, np.ndarray]:
    """Prompts (N, SEQ_LEN) whose next token (the label) continues the repeated segment, and counterfactual
    prompts in which everything before the last period is replaced by random tokens (nothing left to copy)."""
    generator = torch.Generator().manual_seed(seed)
    tokens, periods, _ = repeated_sequences(AUDIT_PROMPTS, generator, length=SEQ_LEN + 1)
    prompts, labels = tokens[:, :SEQ_LEN], tokens[:, SEQ_LEN]
    corrupted = prompts.clone()
    for i, period in enumerate(periods.tolist()):
        keep = prompts[i, SEQ_LEN - period:]
        allowed = torch.tensor([t for t in range(VOCAB) if t not in set(keep.tolist())])
        fill = allowed[torch.randint(0, len(allowed), (SEQ_LEN - period,), generator=generator)]
        corrupted[i, :SEQ_LEN - period] = fill
    return {"inputs": prompts.numpy(), "labels": labels.numpy(), "clean": prompts.numpy(),
            "corrupted": corrupted.numpy(), "periods": periods.numpy()}


def pattern_scores(model: AttentionOnlyTransformer, prompts: torch.Tensor,
                   periods: torch.Tensor) -> list[dict[str, float]]:
    """Per head: previous-token score (mean attention from each token to the one before it) and induction score
    (mean attention from the last token to the token after its previous occurrence)."""
    rows = []
    n, length = prompts.shape
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            pattern = block.attn.pattern(model.residual(prompts, layer))
            previous = pattern[:, :, torch.arange(1, length), torch.arange(length - 1)].mean(dim=(0, 2))
            induction = pattern[torch.arange(n), :, length - 1, length - periods].mean(0)
            rows += [{"head": f"blocks.{layer}.attn:h{h}", "previous_token": float(previous[h]),
                      "induction": float(induction[h])} for h in range(N_HEADS)]
    return rows


def ablation_effects(model: AttentionOnlyTransformer, data: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Per head: accuracy and mean correct-token logit at the last position with the head mean-ablated."""
    prompts, labels = torch.from_numpy(data["inputs"]), torch.from_numpy(data["labels"])
    view = ModelView.discover(model, prompts[:2])
    heads = [layer for layer in view.layers if layer.kind == "heads"]
    means = {name: stats.mean_map.float() for name, stats in
             unit_statistics(view, heads, prompts, 256, torch.device("cpu")).items()}
    rows = []
    for address in [""] + [layer.address(h) for layer in heads for h in range(layer.size)]:
        with ablated(view, [address] if address else [], means), torch.no_grad():
            logits = model(prompts)[:, -1]
        rows.append({"ablated": address or "none", "accuracy": float((logits.argmax(-1) == labels).float().mean()),
                     "correct_logit": float(target_logit(logits, labels).mean())})
    return rows


def main() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = audit_data()
    np.savez_compressed(HERE / "audit_data.npz", **data)
    prompts, periods = torch.from_numpy(data["inputs"]), torch.from_numpy(data["periods"])
    for name, control in (("induction", False), ("induction-control", True)):
        model = train(control)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(HERE / f"{name}.safetensors"))
        effects = ablation_effects(model, data)
        print(f"== {name}: head output-projection norms {_head_norms(model).detach().numpy().round(2).tolist()}")
        for row in pattern_scores(model, prompts, periods):
            print(f"   {row['head']}: previous-token score {row['previous_token']:.3f}, "
                  f"induction score {row['induction']:.3f}")
        for row in effects:
            print(f"   ablate {row['ablated']:>16}: accuracy {row['accuracy']:.3f}, "
                  f"correct-token logit {row['correct_logit']:.2f}")
        if not control:
            _confirm_planted(effects)
    print(f"done in {time.perf_counter() - started:.0f} s")


def _confirm_planted(effects: list[dict[str, float]]) -> None:
    """The planted heads are the two whose ablation costs the most accuracy, each more than any other head."""
    ranked = sorted(effects[1:], key=lambda row: row["accuracy"])
    top = {row["ablated"] for row in ranked[:2]}
    if top != set(PLANTED_HEADS.values()):
        raise SystemExit(f"the heads with the largest ablation effect are {sorted(top)}, not the planted "
                         f"{sorted(PLANTED_HEADS.values())}: update PLANTED_HEADS after checking the patterns")
    print(f"confirmed: ablating {', '.join(sorted(top))} costs the most accuracy "
          f"({ranked[0]['accuracy']:.3f}, {ranked[1]['accuracy']:.3f}; next {ranked[2]['accuracy']:.3f})")


if __name__ == "__main__":
    main()
