"""Attribution patching (L207's fast default) against exact activation patching of every component.

    python benchmarks/patching_speed.py

On the embedded examples' counterfactual pairs: `digits` and `digits-control` (every test image with and without
the watermark; metric: the logit difference between the clean and the corrupted prediction, as L207 measures it
without a [behaviour]) over their 56 units, and `induction` / `induction-control` (prompts with and without a
segment to copy; metric: the logit of the correct next token) over their 8 attention heads. Prints both times,
the speed ratio and the Spearman rank correlation of the two scorings (target >= 0.9), or says that no component
changes the metric (the controls: nothing to rank). Times are the best CPU time of ``REPEATS`` runs on one thread;
exact patching runs on the fast ablation scan, so the ratio is against that, not against one forward pass per
component.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.stats import spearmanr

from mechaudit.engine import prepare
from mechaudit.examples import example_spec
from mechaudit.spec import load_spec
from mechaudit.techniques.patching import attribution_patching, exact_patching

REPEATS = 3


def best(run):
    fastest, result = float("inf"), None
    for _ in range(REPEATS):
        started = time.process_time()
        result = run()
        fastest = min(fastest, time.process_time() - started)
    return fastest, result


def problem(name: str):
    """The view, the pairs, the targets and the metric, as L207 builds them for the example."""
    from mechaudit.checks.patching import PatchingParams, _problem

    context, _ = prepare(load_spec(example_spec(name)))
    clean, corrupted, targets, metric, description = _problem(context, PatchingParams(samples=10_000))
    return context, clean, corrupted, targets, metric, description


def main() -> None:
    torch.set_num_threads(1)
    for name in ("digits", "digits-control", "induction", "induction-control"):
        context, clean, corrupted, targets, metric, description = problem(name)
        view, layers = context.view, context.view.hidden_layers
        approx_seconds, approx = best(lambda: attribution_patching(view, layers, clean, corrupted, targets, metric))
        exact_seconds, exact = best(lambda: exact_patching(view, layers, clean, corrupted, targets, metric))
        a = np.concatenate([approx[layer.name].numpy() for layer in layers])
        b = np.concatenate([exact[layer.name].numpy() for layer in layers])
        ratio = exact_seconds / approx_seconds
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            print(f"{name}: {len(a)} components, {len(clean)} pairs; no component changes the {description} "
                  f"(exact effects all {b[0]:.3g}): nothing to rank; times {approx_seconds:.3f} s and "
                  f"{exact_seconds:.3f} s")
            continue
        rho = spearmanr(a, b).correlation
        print(f"{name}: {len(a)} components, {len(clean)} pairs, {description}; attribution patching "
              f"{approx_seconds:.3f} s, exact patching {exact_seconds:.3f} s, ratio {ratio:.1f}x; "
              f"Spearman {rho:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
