"""Time and peak memory of L207's screens on a toy with GPT-2's output shape, where the output dominates.

    python benchmarks/second_order_cost.py [--prompts 64] [--screens path,second-order,totals]

The toy: 32-token prompts, a 32-wide token embedding, one audited 64-unit ReLU layer, an unembedding to GPT-2's
50,257-token vocabulary (outputs prompts x 32 x 50,257, 412 MB in float32 at 64 prompts), the similarity behaviour
(the cosine similarity of each prompt's output to its corrupted twin's, stationary on the corrupted run). Each screen
runs in its own process, one batch of every prompt (as L207 with ``batch_size`` >= prompts): its wall seconds and its
peak resident memory above the process's after the model, the prompts and the targets (``ru_maxrss``).
``path``: attribution patching at 3 points (L207's default path screen); ``second-order``:
:func:`mechaudit.techniques.second_order.second_order_patching` with ``PROBES``; ``totals``:
:func:`mechaudit.techniques.patching.metric_totals` with the first-order share.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import torch
from torch import nn

VOCABULARY, TOKENS = 50257, 32


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc1, self.out = nn.Embedding(VOCABULARY, 32), nn.Linear(32, 64), nn.Linear(64, VOCABULARY)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc1(self.emb(x))))


def measure(screen: str, prompts: int) -> str:
    from mechaudit.model_view import ModelView
    from mechaudit.techniques.circuits import cosine_similarity
    from mechaudit.techniques.patching import attribution_patching, metric_totals
    from mechaudit.techniques.second_order import PROBES, second_order_patching

    torch.manual_seed(0)
    model = Toy().eval()
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCABULARY, (prompts, TOKENS), generator=generator)
    corrupted = clean.clone()
    corrupted[:, -3:] = torch.randint(0, VOCABULARY, (prompts, 3), generator=generator)
    view = ModelView.discover(model, clean[:2])
    layers = [view.layer("fc1")]
    with torch.no_grad():
        targets = model(corrupted)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if screen == "path":
        attribution_patching(view, layers, clean, corrupted, targets, cosine_similarity, prompts, steps=3)
    elif screen == "second-order":
        second_order_patching(view, layers, corrupted, clean, targets, cosine_similarity, PROBES, prompts)
    else:
        metric_totals(view, clean, corrupted, targets, cosine_similarity, prompts, first_order=screen == "totals")
    seconds = time.perf_counter() - started
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024 ** 2  # KiB on Linux
    return f"{screen}: {seconds:.1f} s, peak +{extra:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--screens", default="path,second-order,totals")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(measure(args.one, args.prompts))
        return
    print(f"# {args.prompts} prompts x {TOKENS} tokens x {VOCABULARY:,} outputs, similarity behaviour")
    for screen in args.screens.split(","):
        done = subprocess.run([sys.executable, __file__, "--prompts", str(args.prompts), "--one", screen],
                              capture_output=True, text=True, check=False)
        print(done.stdout.strip() or done.stderr.strip()[-500:])


if __name__ == "__main__":
    main()
