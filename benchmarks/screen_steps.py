"""Screen against exact, by the number of gradient points along the path (EAP-IG), for L207 and R304.

    python benchmarks/screen_steps.py [--models digits,induction,minilm,gpt2] [--steps 1,2,3,5,10] [--sample 48]

Per model and rule, each screen (``screen_steps`` points, :mod:`mechaudit.techniques.path_attribution`; for R304
also the former screen, |edge attribution node score| towards the corrupted input; for L207 where the metric is
stationary on the corrupted run, MiniLM's, also the second-order screen, :mod:`mechaudit.techniques.second_order`,
with 4 and 16 probes, its Jacobian at the corrupted run alone or averaged with the clean run's, ``both``) scores
every hidden component;
the exact intervention (L207: patching the clean activation into the corrupted run, summed over the pairs; R304:
mean ablation at the rule's ablation sites, mean |per-sample change|) runs on every component where there are at
most 256, else on the union of each screen's top k and one seeded random sample of ``--sample`` components (the
same for every screen). Printed per screen: Spearman over the random sample (all components when all are exact)
with a 95% percentile-bootstrap interval over the components, Spearman over the rule's own checked set (its top k
and its seeded calibration sample of 16, as the audit reports it), the recall of the exact top k among the exactly
measured components by the screen's top k (:func:`mechaudit.techniques.atp.top_k_recall`), and the screen's CPU
seconds relative to one step (the former R304 screen reuses the circuit rules' shared scores: 0).
``gpt2``: ``benchmarks/shapes.gpt2(quick=True)`` (2 blocks, 64 wide, 4 heads, 256
MLP neurons per block: 520 components) on 64 random prompts of 16 tokens from ``gpt2_small.prompts``, labelled with
their own last token (``gpt2_small.py --labels random``, not its default predicted labels); with
``--gpt2-blocks N`` the first N blocks of the full GPT-2-small shape (12 heads and 3,072 neurons per block).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from mechaudit.engine import prepare
from mechaudit.examples import example_spec
from mechaudit.spec import load_spec
from mechaudit.techniques import atp
from mechaudit.techniques.uncertainty import bootstrap

sys.path.insert(0, str(Path(__file__).parent))


def gpt2_spec(folder: Path, blocks: int) -> Path:
    """``blocks`` 0: the quick GPT-2 (2 blocks of 64); else the first ``blocks`` of the GPT-2-small shape."""
    from gpt2_small import MODEL, SPEC, layer_list, prompts
    from realsize import write_spec

    quick = blocks == 0
    units = [f"transformer.h.{i}.{part}" for i in range(blocks or 2) for part in ("attn", "mlp.c_fc")]
    return write_spec(folder, SPEC.format(quick=str(quick).lower(), layers=layer_list(units)),
                      prompts(64, 16, 1000 if quick else 50257), MODEL)


def rho(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a, b).correlation) if np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")


def rho_interval(a: np.ndarray, b: np.ndarray) -> str:
    found = bootstrap(lambda idx: rho(a[idx], b[idx]), len(a), over="components", seed=0)
    return "" if found is None else f"[{found.low:.2f}, {found.high:.2f}]"


def compare(label: str, screens: dict[str, tuple[torch.Tensor, float]], exact_of, k: int, sample: int,
            calibration: int = 16, seed: int = 0, carrier_at: float | None = None,
            union: tuple[str, str] | None = None) -> None:
    """``screens`` {name: (scores of every component, seconds)}; ``exact_of(indices) -> {index: exact}``.
    ``carrier_at``: also measure each screen's top 3k exactly and count, per screen (and for the ``union`` of two
    screens' top k, as L207 checks where its metric is stationary), the components measured at or above it (L207's
    carriers) that its top k holds."""
    count = len(next(iter(screens.values()))[0])
    everything = count <= atp.SCREEN_ABOVE
    if everything:
        randoms = list(range(count))
    else:
        randoms = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 1))[:sample].tolist()
    selections = {name: atp.select(scores, k, calibration, seed) for name, (scores, _) in screens.items()}
    needed = set(randoms) | {i for s in selections.values() for i in s.checked}
    tops = {name: scores.argsort(descending=True, stable=True)[:k].tolist() for name, (scores, _) in screens.items()}
    if carrier_at is not None:
        needed |= {i for scores, _ in screens.values() for i in scores.argsort(descending=True)[:3 * k].tolist()}
    started = time.process_time()
    exact = exact_of(sorted(needed))
    exact_seconds = time.process_time() - started
    base = next(seconds for name, (_, seconds) in screens.items() if name.endswith("steps=1"))
    print(f"\n{label}: {count} components, exact on {len(needed)} ({exact_seconds:.1f}s CPU); k = {k}")
    print(f"{'screen':<28} {'spearman (sample)':>26} {'rule-set':>9} {'recall':>7} {'seconds':>8} {'ratio':>6}")
    for name, (scores, seconds) in screens.items():
        a = np.array([float(scores[i]) for i in randoms])
        b = np.array([exact[i] for i in randoms])
        checked = selections[name].checked
        rule_rho = rho(np.array([float(scores[i]) for i in checked]), np.array([exact[i] for i in checked]))
        top = scores.argsort(descending=True, stable=True)[:k].tolist()
        recall = atp.top_k_recall(top, {i: exact[i] for i in needed})
        print(f"{name:<28} {rho(a, b):>8.3f} {rho_interval(a, b):>17} {rule_rho:>9.3f} {recall:>7.2f} "
              f"{seconds:>8.2f} {seconds / max(base, 1e-9):>5.1f}x")
    if carrier_at is not None:
        carriers = sorted((i for i in needed if exact[i] >= carrier_at), key=lambda i: -exact[i])
        ranks = {name: {i: r for r, i in enumerate(scores.argsort(descending=True, stable=True).tolist())}
                 for name, (scores, _) in screens.items()}
        print(f"carriers (exact >= {carrier_at:.3g}) among the {len(needed)} measured: {len(carriers)}; each "
              "screen's rank of them: " + "; ".join(f"{name} {[ranks[name][i] for i in carriers]}"
                                                     for name in screens))
        if union:
            held = sum(i in set(tops[union[0]]) | set(tops[union[1]]) for i in carriers)
            print(f"top {k} of {union[0]} and of {union[1]} together: {held} of {len(carriers)} carriers")


def timed(run):
    started = time.process_time()
    result = run()
    return result, time.process_time() - started


def l207(name: str, context, steps: list[int], k: int, sample: int) -> None:
    from mechaudit.checks.patching import PatchingParams, _problem
    from mechaudit.techniques import second_order
    from mechaudit.techniques.patching import attribution_patching, exact_patching, metric_totals

    clean, corrupted, targets, metric, _ = _problem(context, PatchingParams(samples=10_000))
    view, layers = context.view, context.view.hidden_layers
    # ranked by recovered fraction (effect / total effect) as the rule ranks them: the sign of the total matters
    totals = metric_totals(view, clean, corrupted, targets, metric, first_order=True)
    sign = 1.0 if totals.effect >= 0 else -1.0
    components = [(layer, unit) for layer in layers for unit in range(layer.size)]
    screens = {}
    for n in steps:
        scores, seconds = timed(lambda n=n: attribution_patching(view, layers, clean, corrupted, targets, metric,
                                                                 context.batch_size, context.device, n))
        screens[f"steps={n}"] = (sign * torch.cat([scores[layer.name] for layer in layers]), seconds)
    print(f"{name}: first-order share {totals.first_order_share:.2g} (second-order screen below "
          f"{second_order.STATIONARY})")
    if totals.first_order_share < second_order.STATIONARY:
        for probes in (second_order.PROBES, 4 * second_order.PROBES):
            for both in (False, True):
                scores, seconds = timed(lambda p=probes, b=both: second_order.second_order_patching(
                    view, layers, corrupted, clean, targets, metric, p, context.batch_size, context.device,
                    both_ends=b))
                screens[f"2nd order {probes} probes{', both' if both else ''}"] = (
                    sign * torch.cat([scores[layer.name].double().sum(1).float() for layer in layers]), seconds)

    def exact_of(indices: list[int]) -> dict[int, float]:
        chosen: dict[str, list[int]] = {}
        for i in indices:
            chosen.setdefault(components[i][0].name, []).append(components[i][1])
        found = exact_patching(view, [la for la in layers if la.name in chosen], clean, corrupted, targets, metric,
                               chosen, context.batch_size, context.device)
        by = {(n, u): sign * float(found[n][r]) for n, us in chosen.items() for r, u in enumerate(us)}
        return {i: by[(components[i][0].name, components[i][1])] for i in indices}
    stationary = totals.first_order_share < second_order.STATIONARY
    compare(f"{name} L207 (patching)", screens, exact_of, k, sample,
            carrier_at=PatchingParams().min_recovered * abs(totals.effect),
            union=(f"2nd order {second_order.PROBES} probes", "steps=3") if stationary and 3 in steps else None)


def r304(name: str, context, steps: list[int], k: int, sample: int) -> None:
    from mechaudit.checks.circuit_common import (
        ablation_sites,
        circuit_problem,
        circuit_scores,
        hidden_nodes,
        mean_values,
    )
    from mechaudit.checks.single_points import SinglePointsParams, ablation_screen
    from mechaudit.techniques.node_ablation import behaviour_under_ablation

    samples = SinglePointsParams().samples
    problem = circuit_problem(context, samples)
    values, sites = mean_values(context), ablation_sites(context, samples)
    nodes = hidden_nodes(context)
    scores = circuit_scores(context, samples)  # shared with R301-R303 and the ablation sites: no cost of its own
    screens = {"edge scores (former)": (torch.tensor([abs(scores.nodes.get(n, 0.0)) for n in nodes]), 0.0)}
    for n in steps:
        screens[f"mean-ablation steps={n}"] = timed(lambda n=n: ablation_screen(context, problem, values, sites, n))

    def run(ablate: list[str]) -> torch.Tensor:
        return behaviour_under_ablation(context.view, problem.inputs, problem.targets, problem.behaviour, ablate,
                                        values, context.batch_size, context.device, sites)
    intact = run([])

    def exact_of(indices: list[int]) -> dict[int, float]:
        return {i: float((run([nodes[i]]) - intact).abs().mean()) for i in indices}
    compare(f"{name} R304 (mean ablation)", screens, exact_of, k, sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,induction,minilm,gpt2")
    parser.add_argument("--rules", default="L207,R304")
    parser.add_argument("--steps", default="1,2,3,5,10")
    parser.add_argument("--gpt2-blocks", type=int, default=0,
                        help="gpt2: audit the first N blocks of the full GPT-2-small shape (0: the quick model)")
    parser.add_argument("--sample", type=int, default=48, help="random components measured exactly (screened)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = [int(s) for s in args.steps.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            spec = gpt2_spec(Path(tmp), args.gpt2_blocks) if name == "gpt2" else example_spec(name)
            context, _ = prepare(load_spec(spec))
            k = 2 if name == "induction" else 10
            if "L207" in args.rules:
                l207(name, context, steps, k, args.sample)
            if "R304" in args.rules:
                r304(name, context, steps, k, args.sample)


if __name__ == "__main__":
    main()
