"""L202's pooled screen against exact mean ablation, unit by unit, on a reduced GPT-2-small shape and on `digits`.

    python benchmarks/l202_screen.py [--blocks 2] [--prompts 64] [--tokens 32] [--sample 192] [--top 48]
    python benchmarks/l202_screen.py --digits

GPT-2: ``transformers.GPT2Config(n_layer=blocks)`` at full width (768 wide, 12 heads, 3,072 ``mlp.c_fc`` neurons per
block, vocabulary 50,257), seeded random weights, the prompts of ``benchmarks/gpt2_small.py`` labelled, as its
default ``--labels predicted``, with the model's own prediction at the last position (``--last-token``: the last
prompt token, its ``--labels random``). The model returns the logits of the last position only (the audited
position), which changes no audited quantity and makes each exact ablation 4x cheaper. Every ``mlp.c_fc`` neuron is
screened; a seeded random sample of ``--sample`` of them (an unbiased calibration sample) and each screen's
``--top`` units are ablated exactly (mean ablation, batched hooks), so every screen is compared on the same exact
values.

Prints, per screen (:mod:`mechaudit.techniques.ablation_screen`), the Spearman correlation with the exact accuracy
drop and with the exact mean change of the label margin over the random sample (with a 95% bootstrap interval over
the units), over the units L202 would check (its top 16 plus the first 16 of the random sample), and the recall of
the exact top-16 (of all units ablated exactly) by the screen's top 16. ``--digits``: every unit of the embedded
`digits` example, all ablated exactly (top-10 recall, as ``benchmarks/atp_screen.py``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from mechaudit.techniques import ablation_screen, atp
from mechaudit.techniques.ablation_scan import AblationScanner

CPU = torch.device("cpu")


class LastLogits(nn.Module):
    """A Hugging Face GPT-2 returning the logits of the last position only, (samples, vocabulary)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.transformer, self.lm_head = model.transformer, model.lm_head

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.transformer(input_ids=input_ids.long()).last_hidden_state[:, -1])


def rho(a: np.ndarray, b: np.ndarray) -> float | None:
    return float(spearmanr(a, b).correlation) if np.ptp(a) > 0 and np.ptp(b) > 0 else None


def rho_interval(a: np.ndarray, b: np.ndarray) -> str:
    """L202's interval (:func:`~mechaudit.techniques.ablation_screen.agreement`): none where over 5% of the
    resamples have no rho (a constant side), with that share."""
    found = ablation_screen.agreement(a, b)
    if found["spearman_interval"] is None:
        return f"none ({found['undefined_resamples']:.0%} undefined)" if found["undefined_resamples"] else ""
    low, high = found["spearman_interval"]
    return f"[{low:.2f}, {high:.2f}]"


def fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.2f}"


def scanned_clean(scanner: AblationScanner, layers: list, inputs: torch.Tensor, batch_size: int, reduce
                  ) -> dict[str, torch.Tensor]:
    """Per layer, the clean margins from the scanner's own passes (its first unit replaced by its own activation),
    as L202 takes them: an ablation that changes nothing then loses exactly 0."""
    return {name: margins[0] for name, margins in scanner.scan(
        inputs, {"clean": (None, inputs)}, batch_size, reduce=reduce,
        units={layer.name: [0] for layer in layers})["clean"].items()}


def first_order(view, layers: list, inputs: torch.Tensor, labels: torch.Tensor, modes: dict, batch_size: int,
                raw: dict | None = None) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """The first-order screens: L202's predicted accuracy drop (relative error 0.15), the same with 0.5, and the
    predicted mean loss of label margin; and the clean margins."""
    measured: list[torch.Tensor] = []
    estimates = atp.ablation_estimates(view, layers, inputs, labels, atp.label_margin, modes, batch_size, CPU,
                                       measured)["mean"]
    margins = torch.cat(measured)
    every = torch.cat([estimates[layer.name] for layer in layers])
    if raw is not None:
        raw.update(first_order=every.numpy(), margins=margins.numpy())
    return {"first order (L202, r=0.15)": atp.predicted_accuracy_drop(every, margins).numpy(),
            "first order, r=0.5": atp.predicted_accuracy_drop(every, margins, 0.5).numpy(),
            "first-order margin loss": (-every.mean(1)).numpy()}, margins


def compare(screens: dict[str, np.ndarray], drop: dict[int, float], change: dict[int, float], sample: list[int],
            k: int) -> None:
    """Agreement of every screen with the exact drops and margin changes ({unit: value}) of the units measured."""
    measured = sorted(drop)
    ties = np.mean([drop[i] == 0 for i in sample])
    print(f"random sample: {len(sample)} units, {ties:.0%} of exact drops exactly 0; exact drops in sample: "
          f"{np.unique(np.round([drop[i] for i in sample], 4), return_counts=True)}")
    print(f"{'screen':<26} {'rho(drop) sample':>22} {'rho(margin) sample':>22} {'rho(drop) L202-set':>18} "
          f"{'recall@' + str(k):>9} {'at kth':>7}")
    for name, score in screens.items():
        s = np.array([score[i] for i in sample])
        d = np.array([drop[i] for i in sample])
        c = np.array([change[i] for i in sample])
        top = list(np.argsort(-score, kind="stable")[:k])
        audit_set = sorted(set(top) | set(sample[:16]))
        a = np.array([score[i] for i in audit_set])
        b = np.array([drop[i] for i in audit_set])
        effects = {i: drop[i] for i in measured}
        print(f"{name:<26} {fmt(rho(s, d))} {rho_interval(s, d):>16} {fmt(rho(s, -c))} {rho_interval(s, -c):>16} "
              f"{fmt(rho(a, b)):>18} {fmt(atp.top_k_recall(top, effects)):>9} "
              f"{fmt(atp.top_k_recall_at_kth(top, effects)):>7}")


def ceilings(estimates: np.ndarray, clean: list[np.ndarray], drop: dict[int, float],
             after: dict[int, np.ndarray], sample: list[int], offsets: np.ndarray) -> None:
    """What limits the screen's rank agreement on the random sample: the per-sample first-order margin change
    against the exact one (units ablated exactly; ``clean``: each layer's clean margins from the scanner), the rho of
    a screen that ranks the exact drops perfectly (ties in the exact drops broken at random), and of L202's predicted
    drop fed the exact per-sample margin changes (a perfect per-sample estimate)."""
    base = {i: clean[int(np.searchsorted(offsets, i, side="right")) - 1] for i in after}
    exact_change = np.concatenate([after[i] - base[i] for i in sorted(after)])
    estimated = np.concatenate([estimates[i] for i in sorted(after)])
    relative = np.abs(estimated - exact_change) / np.maximum(np.abs(exact_change), 1e-12)
    d = np.array([drop[i] for i in sample])
    rng = np.random.default_rng(0)
    tie_break = np.mean([rho(d + 1e-9 * rng.random(len(d)), d) for _ in range(50)])
    perfect = atp.predicted_accuracy_drop(torch.from_numpy(np.stack([after[i] - base[i] for i in sample])),
                                          torch.from_numpy(np.stack([base[i] for i in sample]))[0]).numpy()
    print(f"per-sample first-order margin change vs exact: rho {rho(estimated, exact_change):.2f}, median relative "
          f"error {np.median(relative):.2f}; rho ceilings on the sample: exact drops with ties broken at random "
          f"{tie_break:.2f}, L202's drop from exact per-sample changes {rho(perfect, d):.2f}")


def gpt2(blocks: int, prompts: int, tokens: int, sample_size: int, top: int, k: int, last_token: bool,
         save: str = "") -> None:
    import transformers

    from mechaudit.activations import unit_statistics
    from mechaudit.model_view import ModelView

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=blocks)
    config._attn_implementation = "eager"
    model = LastLogits(transformers.GPT2LMHeadModel(config).eval())
    rng = np.random.default_rng(0)  # benchmarks/gpt2_small.py's prompts
    inputs = torch.from_numpy(rng.integers(1, config.vocab_size, (prompts, tokens)))
    with torch.no_grad():
        labels = inputs[:, -1].clone() if last_token else model(inputs).argmax(-1)
    names = tuple(f"transformer.h.{i}.mlp.c_fc" for i in range(blocks))
    view = ModelView.discover(model, inputs[:2], names)
    layers = view.layers
    stats = unit_statistics(view, layers, inputs, 64, CPU)
    means = {n: s.mean_map.float() for n, s in stats.items()}
    modes = {"mean": (means, None)}
    started = time.perf_counter()
    raw: dict = {}
    screens, margins = first_order(view, layers, inputs, labels, modes, 64, raw)
    seconds = time.perf_counter() - started
    print(f"gpt2 {blocks} blocks x 3072 c_fc, {prompts} prompts of {tokens}: base accuracy "
          f"{float((margins > 0).float().mean()):.3f}, screen {seconds:.1f}s")
    for steps in (2,):
        started = time.perf_counter()
        est = ablation_screen.interpolated_estimates(view, layers, inputs, labels, atp.label_margin, modes, steps, 64,
                                                     CPU)["mean"]
        est = torch.cat([est[layer.name] for layer in layers])
        raw[f"path_{steps}"] = est.numpy()
        print(f"path, {steps} points: {time.perf_counter() - started:.1f}s")
        screens[f"path {steps} points"] = atp.predicted_accuracy_drop(est, margins).numpy()
        screens[f"path {steps} points margin loss"] = (-est.mean(1)).numpy()
    total = sum(layer.size for layer in layers)
    sample = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:sample_size].tolist()
    chosen = set(sample)
    for score in screens.values():
        chosen |= set(np.argsort(-score, kind="stable")[:top].tolist())
    offsets = np.cumsum([0] + [layer.size for layer in layers])
    units = {layer.name: [i - offsets[j] for i in sorted(chosen) if offsets[j] <= i < offsets[j + 1]]
             for j, layer in enumerate(layers)}

    def reduce(outputs: torch.Tensor, samples: slice) -> torch.Tensor:
        copies, n = outputs.shape[:2]
        return atp.label_margin(outputs.flatten(0, 1).float(), labels[samples].repeat(copies)).reshape(copies, n)
    started = time.perf_counter()
    scanner = AblationScanner(view, layers, CPU, inputs[:2])
    exact = scanner.scan(inputs, modes, 64, max_batch=1024, reduce=reduce, units=units)["mean"]
    print(f"exact: {len(chosen)} units in {time.perf_counter() - started:.1f}s")
    clean = scanned_clean(scanner, layers, inputs, 64, reduce)
    drop, change, after = {}, {}, {}
    for j, layer in enumerate(layers):
        base = float((clean[layer.name] > 0).float().mean())
        for row, unit in enumerate(units[layer.name]):
            drop[offsets[j] + unit] = base - float((exact[layer.name][row] > 0).float().mean())
            change[offsets[j] + unit] = float((exact[layer.name][row] - clean[layer.name]).mean())
            after[offsets[j] + unit] = exact[layer.name][row].numpy()
    compare(screens, drop, change, sample, k)
    ceilings(raw["first_order"], [clean[layer.name].numpy() for layer in layers], drop, after,
             sample, offsets)
    if save:
        np.savez(save, sample=sample, units=sorted(drop), drop=[drop[i] for i in sorted(drop)],
                 change=[change[i] for i in sorted(drop)], after=np.stack([after[i] for i in sorted(drop)]),
                 clean=np.stack([clean[layer.name].numpy() for layer in layers]), labels=labels.numpy(),
                 **raw, **{name: score for name, score in screens.items()})


def digits(k: int) -> None:
    from mechaudit.engine import prepare
    from mechaudit.examples import example_spec
    from mechaudit.spec import load_spec

    context, _ = prepare(load_spec(example_spec("digits")))
    indices = context.sample_indices()
    inputs, labels = context.data.inputs[indices], context.data.labels[indices]
    layers = context.view.hidden_layers
    modes = {"mean": ({n: s.mean_map.float() for n, s in context.unit_stats.items()}, None)}
    screens, margins = first_order(context.view, layers, inputs, labels, modes, 256)

    def reduce(outputs: torch.Tensor, samples: slice) -> torch.Tensor:
        copies, n = outputs.shape[:2]
        return atp.label_margin(outputs.flatten(0, 1).float(), labels[samples].repeat(copies)).reshape(copies, n)
    scanner = AblationScanner(context.view, layers, CPU, inputs[:2])
    exact = scanner.scan(inputs, modes, 256, reduce=reduce)["mean"]
    clean = scanned_clean(scanner, layers, inputs, 256, reduce)
    base = float((margins > 0).float().mean())
    drops = torch.cat([(clean[layer.name] > 0).float().mean() - (exact[layer.name] > 0).float().mean(1)
                       for layer in layers]).tolist()
    changes = torch.cat([(exact[layer.name] - clean[layer.name]).mean(1) for layer in layers]).tolist()
    est = ablation_screen.interpolated_estimates(context.view, layers, inputs, labels, atp.label_margin, modes, 2,
                                                 256, CPU)["mean"]
    est = torch.cat([est[layer.name] for layer in layers])
    screens["path 2 points"] = atp.predicted_accuracy_drop(est, margins).numpy()
    screens["path 2 points margin loss"] = (-est.mean(1)).numpy()
    print(f"digits: {len(drops)} units, base accuracy {base:.3f}")
    compare(screens, dict(enumerate(drops)), dict(enumerate(changes)), list(range(len(drops))), k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--sample", type=int, default=192, help="random units ablated exactly")
    parser.add_argument("--top", type=int, default=48, help="each screen's top units ablated exactly")
    parser.add_argument("--last-token", action="store_true",
                        help="label = the last prompt token (gpt2_small.py; 0-3%% base accuracy) instead of the "
                             "model's own prediction (100%%)")
    parser.add_argument("--save", default="", help="write the screens, their per-sample margin estimates, the clean "
                                                   "margins and the exact values (per unit and sample) to this .npz")
    parser.add_argument("--digits", action="store_true", help="the embedded digits example instead")
    args = parser.parse_args()
    if args.digits:
        digits(10)
    else:
        gpt2(args.blocks, args.prompts, args.tokens, args.sample, args.top, 16, args.last_token, args.save)


if __name__ == "__main__":
    main()
