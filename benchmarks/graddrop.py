"""AtP*'s GradDrop (:mod:`mechaudit.techniques.graddrop`) against plain attribution patching, on every component.

    python benchmarks/graddrop.py [--skip-gpt2] [--cost LAYERS]

For L202's screen (mean ablation): the predicted accuracy drop of plain AtP and of GradDrop (the larger of plain's
and GradDrop's, as L202 ranks) against the exact accuracy drop of every unit, and AtP*'s own GradDrop magnitude
(mean over blocks of mean_x |AtP_GD|) against the exact mean |change of the label margin|. Prints Spearman over
every unit, the recall of the exact top-k by each screen's top-k (:func:`mechaudit.techniques.atp.top_k_recall`),
the rank of the planted unit, and CPU seconds of each screen with GradDrop's cost ratio to plain AtP. On:

* ``cancelling``: :class:`Cancelling`, a unit whose direct path and side path cancel at first order (plain AtP
  ranks it among the last, its exact ablation drops class 2 entirely); ``control``: the same without the side path.
* the embedded ``digits`` (a sequential CNN: no block has a skip around it, GradDrop cannot change the ranking)
  and ``induction`` (a 2-layer attention-only transformer with a residual stream) over all their hidden units.
* a random-weight 2-layer, 128-wide GPT-2 (heads and 512 ``c_fc`` neurons): the cost ratio at a real layout.

L207 rows: the path screen (3 points, the rule's default) with and without GradDrop against exact patching, summed
over the pairs (``cancelling``: clean inputs with the planted unit off, corrupted twins with it on).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from mechaudit.activations import batches
from mechaudit.model_view import Layer, ModelView
from mechaudit.techniques import ablation_screen, atp, graddrop, second_order
from mechaudit.techniques.ablation_scan import AblationScanner
from mechaudit.techniques.circuits import logit_difference
from mechaudit.techniques.patching import attribution_patching, exact_patching

CPU = torch.device("cpu")
WIDTH, CRITICAL = 300, 137


class Cancelling(nn.Module):
    """300 hidden units; every unit but one adds a little to class 0; unit 137 writes ``2 h`` into class 2 directly
    and ``-2 relu(h - 1)`` through a side path (``mid``, ``mid_out``), so class 2 reads ``2 min(h, 1)``: where the
    unit is on (h >= 2) both paths' gradients cancel exactly, yet ablating it to its mean (below 1) removes class 2.
    ``cancel=False``: no side path (the control: class 2 reads ``2 h``)."""

    def __init__(self, cancel: bool = True) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, WIDTH), nn.Linear(WIDTH, 3)
        self.mid, self.mid_out = nn.Linear(WIDTH, 1), nn.Linear(1, 3, bias=False)
        with torch.no_grad():
            for tensor in (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self.mid.weight,
                           self.mid_out.weight):
                tensor.zero_()
            for unit in range(WIDTH):
                if unit != CRITICAL:
                    self.fc1.weight[unit, 0] = 1.0
                    self.fc2.weight[0, unit] = 1.0 / (WIDTH - 1)
            self.fc2.bias[0], self.fc2.bias[1] = 0.6, 0.2
            self.fc1.weight[CRITICAL, 2] = 1.0
            self.fc2.weight[2, CRITICAL] = 2.0
            self.mid.weight[0, CRITICAL], self.mid.bias[0] = 1.0, -1.0
            self.mid_out.weight[2, 0] = -2.0 if cancel else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc1(x))
        side = self.mid_out(torch.relu(self.mid(hidden)))  # before fc2, so that fc2 is the output layer
        return self.fc2(hidden) + side


def planted_inputs(samples: int = 600) -> torch.Tensor:
    """Gaussian inputs whose third feature is 0, or (on 15% of the samples) uniform in [2, 3]."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, 4, generator=generator)
    on = torch.rand(samples, generator=generator) < 0.15
    inputs[:, 2] = on * (2 + torch.rand(samples, generator=generator))
    return inputs


def timed(run):
    started = time.process_time()
    result = run()
    return time.process_time() - started, result


def _agreement(screen: np.ndarray, exact: np.ndarray, k: int) -> tuple[str, float | None]:
    varied = np.ptp(screen) > 0 and np.ptp(exact) > 0
    rho = f"{spearmanr(screen, exact).correlation:.3f}" if varied else "n/a"
    top = np.argsort(-screen, kind="stable")[:k].tolist()
    return rho, atp.top_k_recall(top, dict(enumerate(exact.tolist())))


def compare(label: str, view: ModelView, layers: list[Layer], inputs: torch.Tensor, labels: torch.Tensor,
            means: dict, logits=lambda out: out, k: int = 10, batch_size: int = 256, planted: int | None = None
            ) -> None:
    """Plain AtP and GradDrop against exact mean ablation of every unit of ``layers``."""
    def margin(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return atp.label_margin(logits(outputs), targets)
    modes = {"mean": (means, None)}
    sites = second_order.patch_sites(view, layers, inputs, None, batch_size, CPU, rule="L202: the screen")
    plain_seconds, plain = timed(lambda: ablation_screen.interpolated_estimates(
        view, layers, inputs, labels, margin, modes, 1, batch_size, CPU, sites=sites)["mean"])
    both_seconds, (_, terms, _) = timed(lambda: graddrop.site_screen("on", view, layers, inputs, labels, margin,
                                                                     modes, sites, 1, batch_size, CPU))
    drop_seconds = max(both_seconds - plain_seconds, 0.0)
    print(f"{label}: {len(sites)} of {len(layers)} layer(s) at their reader's input (as L202)")
    with torch.no_grad():
        margins = torch.cat([margin(view.model(b).float(), labels[s:s + len(b)])
                             for s, b in batches(inputs, batch_size, CPU)])

    def reduce(outputs: torch.Tensor, samples: slice) -> torch.Tensor:
        copies, n = outputs.shape[:2]
        return margin(outputs.flatten(0, 1), labels[samples].repeat(copies)).reshape(copies, n)
    exact_seconds, exact = timed(lambda: AblationScanner(view, layers, CPU, inputs[:2]).scan(
        inputs, modes, batch_size, reduce=reduce)["mean"])

    def drop(estimate: torch.Tensor) -> torch.Tensor:
        return atp.predicted_accuracy_drop(estimate, margins)
    join = lambda parts: np.concatenate([p.numpy() for p in parts])  # noqa: E731
    rows = {
        "L202 drop, plain AtP": join(drop(plain[layer.name]) for layer in layers),
        "L202 drop, with GradDrop": join(terms.ranked("mean", layer, plain[layer.name], drop) for layer in layers),
        "|margin change|, plain": join(plain[layer.name].abs().mean(1) for layer in layers),
        "|margin change|, AtP*_GD": join(terms.magnitude("mean", layer, plain[layer.name]) for layer in layers),
    }
    base = (margins > 0).float().mean()
    exact_drop = join(base - (exact[layer.name] > 0).float().mean(1) for layer in layers)
    exact_change = join((exact[layer.name] - margins).abs().mean(1) for layer in layers)
    ratio = (plain_seconds + drop_seconds) / max(plain_seconds, 1e-9)
    print(f"{label}: {len(exact_drop)} units, {terms.passes} GradDrop pass(es) per batch over {len(terms.blocks)} "
          f"blocks; CPU s: plain screen {plain_seconds:.2f}, with GradDrop {plain_seconds + drop_seconds:.2f} "
          f"({ratio:.1f}x), exact {exact_seconds:.2f}")
    _print_rows({what: screen for what, screen in rows.items() if what.startswith("L202")}, exact_drop, k, planted)
    _print_rows({what: screen for what, screen in rows.items() if not what.startswith("L202")}, exact_change, k,
                planted)


def compare_patching(label: str, view: ModelView, layers: list[Layer], clean: torch.Tensor,
                     corrupted: torch.Tensor, targets: torch.Tensor, metric, k: int = 10, steps: int = 3,
                     planted: int | None = None) -> None:
    """L207: the path screen (``steps`` points, the rule's default) with and without GradDrop against exact patching
    of every component, each summed over the pairs."""
    plain_seconds, plain = timed(lambda: attribution_patching(view, layers, clean, corrupted, targets, metric,
                                                              steps=steps))
    drop_seconds, (terms, _) = timed(lambda: graddrop.path_screen("on", view, layers, lambda: attribution_patching(
        view, layers, clean, corrupted, targets, metric, steps=steps), 0.0))
    exact_seconds, exact = timed(lambda: exact_patching(view, layers, clean, corrupted, targets, metric))
    total = lambda e: e.sum(1)  # noqa: E731
    rows = {"L207 patch, plain AtP": np.concatenate([plain[layer.name].numpy() for layer in layers]),
            "L207 patch, with GradDrop": np.concatenate([terms.ranked("patch", layer, plain[layer.name].unsqueeze(1),
                                                                      total).numpy() for layer in layers])}
    truth = np.concatenate([exact[layer.name].numpy() for layer in layers])
    ratio = (plain_seconds + drop_seconds) / max(plain_seconds, 1e-9)
    print(f"{label} (L207): {len(truth)} components, {terms.passes} GradDrop pass(es); CPU s: path screen "
          f"{plain_seconds:.2f}, with GradDrop {plain_seconds + drop_seconds:.2f} ({ratio:.1f}x), exact "
          f"{exact_seconds:.2f}")
    _print_rows(rows, truth, k, planted)


def _print_rows(rows: dict, truth: np.ndarray, k: int, planted: int | None) -> None:
    for what, screen in rows.items():
        rho, recall = _agreement(screen, truth, k)
        order = np.argsort(-screen, kind="stable").tolist()  # ties in index order, as the screen's selection
        rank = "" if planted is None else f"  planted unit ranked {order.index(planted) + 1}/{len(screen)}"
        print(f"  {what:<28} spearman {rho:>6}  recall@{k} {recall:.2f}{rank}")


def planted_pairs(samples: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean inputs with the planted unit off, corrupted twins with it on (h in [2, 3])."""
    clean = planted_inputs(samples)
    clean[:, 2] = 0.0
    corrupted = clean.clone()
    corrupted[:, 2] = 2 + torch.rand(samples, generator=torch.Generator().manual_seed(1))
    return clean, corrupted


def planted() -> None:
    for label, cancel in (("cancelling", True), ("control", False)):
        model, inputs = Cancelling(cancel).eval(), planted_inputs()
        labels = model(inputs).argmax(-1)
        view = ModelView.discover(model, inputs[:2])
        with torch.no_grad():
            means = {"fc1": torch.relu(model.fc1(inputs)).mean(0).unsqueeze(-1)}
        compare(label, view, [view.layer("fc1")], inputs, labels, means, k=4, planted=CRITICAL)
        clean, corrupted = planted_pairs()
        with torch.no_grad():
            ranked = model(corrupted).argsort(-1, descending=True)
            first = model(clean).argmax(-1)
        targets = torch.stack([first, torch.where(ranked[:, 0] == first, ranked[:, 1], ranked[:, 0])], 1)
        compare_patching(label, view, [view.layer("fc1")], clean, corrupted, targets, logit_difference, k=4,
                         planted=CRITICAL)


class ResidualMlp(nn.Module):
    """A random residual MLP: embed, ``depth`` blocks ``h + down(relu(up(h)))``, a 4-class readout."""

    def __init__(self, width: int = 16, hidden: int = 64, depth: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.out = nn.Linear(8, width), nn.Linear(width, 4)
        self.up = nn.ModuleList(nn.Linear(width, hidden) for _ in range(depth))
        self.down = nn.ModuleList(nn.Linear(hidden, width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for up, down in zip(self.up, self.down):
            h = h + down(torch.relu(up(h)))
        return self.out(h)


def residual(k: int = 10) -> None:
    """GradDrop on a residual net (where it can exceed plain AtP): every ``up`` neuron, read by ``down`` after the
    ReLU (at its reader's input, as L202 moves it), blocks ``up`` and ``down`` of every layer."""
    model, inputs = ResidualMlp().eval(), torch.randn(512, 8, generator=torch.Generator().manual_seed(0))
    names = tuple(f"{part}.{i}" for i in range(3) for part in ("up", "down"))
    view = ModelView.discover(model, inputs[:2], names)
    with torch.no_grad():
        labels = model(inputs).argmax(-1)
        means = {f"up.{i}": model.up[i](_stream(model, inputs, i)).mean(0).unsqueeze(-1) for i in range(3)}
    compare("residual mlp", view, [view.layer(f"up.{i}") for i in range(3)], inputs, labels, means, k=k)


def _stream(model: ResidualMlp, x: torch.Tensor, upto: int) -> torch.Tensor:
    h = model.embed(x)
    for up, down in list(zip(model.up, model.down))[:upto]:
        h = h + down(torch.relu(up(h)))
    return h


def example(name: str, k: int) -> None:
    from mechaudit.checks.patching import PatchingParams, _problem
    from mechaudit.engine import prepare
    from mechaudit.examples import example_spec
    from mechaudit.spec import load_spec

    context, _ = prepare(load_spec(example_spec(name)))
    indices = context.sample_indices()
    means = {n: s.mean_map.float() for n, s in context.unit_stats.items()}
    compare(name, context.view, context.view.hidden_layers, context.data.inputs[indices],
            context.data.labels[indices], means, context.logits, k)
    clean, corrupted, targets, metric, _ = _problem(context, PatchingParams(samples=10_000))
    compare_patching(name, context.view, context.view.hidden_layers, clean, corrupted, targets, metric, k)


def gpt2(layers_count: int = 2, width: int = 128, prompts: int = 32, tokens: int = 8, k: int = 16) -> None:
    import transformers

    from mechaudit.activations import unit_statistics
    from mechaudit.loading.huggingface import LogitsOnly

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=layers_count, n_embd=width, n_head=4, vocab_size=2048,
                                     n_positions=tokens, attn_implementation="eager")
    model = LogitsOnly(transformers.GPT2LMHeadModel(config).eval())
    inputs = torch.randint(0, 2048, (prompts, tokens), generator=torch.Generator().manual_seed(0))
    names = [f"transformer.h.{i}.{part}" for i in range(layers_count) for part in ("attn", "mlp.c_fc")]
    view = ModelView.discover(model, inputs[:2], tuple(names))
    last = lambda out: out[:, -1]  # noqa: E731  next-token logits at the last position
    with torch.no_grad():
        labels = last(model(inputs)).argmax(-1)
    means = {n: s.mean_map.float() for n, s in unit_statistics(view, view.layers, inputs, 64, CPU).items()}
    label = f"gpt2 {layers_count}x{width} random"
    compare(label, view, view.layers, inputs, labels, means, last, k, 64)
    corrupted = torch.randint(0, 2048, (prompts, tokens), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ranked = last(model(corrupted)).argsort(-1, descending=True)
    targets = torch.stack([labels, torch.where(ranked[:, 0] == labels, ranked[:, 1], ranked[:, 0])], 1)

    def metric(outputs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        return logit_difference(outputs[:, -1] if outputs.dim() == 3 else outputs, chosen)
    compare_patching(label, view, view.layers, inputs, corrupted, targets, metric, k)


def gpt2_cost(layers_count: int, prompts: int = 16, tokens: int = 32) -> None:
    """CPU seconds of L202's first-order screen and of its GradDrop passes on a random GPT2Config()-shaped model
    (768 wide, 12 heads, 3,072 ``c_fc`` neurons per layer) of ``layers_count`` layers: heads and all neurons."""
    import transformers

    from mechaudit.activations import unit_statistics
    from mechaudit.loading.huggingface import LogitsOnly

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=layers_count, n_positions=tokens, attn_implementation="eager")
    model = LogitsOnly(transformers.GPT2LMHeadModel(config).eval())
    inputs = torch.randint(0, config.vocab_size, (prompts, tokens), generator=torch.Generator().manual_seed(0))
    names = [f"transformer.h.{i}.{part}" for i in range(layers_count) for part in ("attn", "mlp.c_fc")]
    view = ModelView.discover(model, inputs[:2], tuple(names))
    last = lambda out: out[:, -1]  # noqa: E731
    with torch.no_grad():
        labels = last(model(inputs)).argmax(-1)
    means = {n: s.mean_map.float() for n, s in unit_statistics(view, view.layers, inputs, 16, CPU).items()}

    def margin(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return atp.label_margin(last(outputs), targets)
    modes = {"mean": (means, None)}
    plain_seconds, _ = timed(lambda: atp.ablation_estimates(view, view.layers, inputs, labels, margin, modes, 16))
    both_seconds, (_, terms, _) = timed(lambda: graddrop.site_screen("on", view, view.layers, inputs, labels, margin,
                                                                     modes, {}, 1, 16, CPU))
    drop_seconds = max(both_seconds - plain_seconds, 0.0)
    print(f"gpt2 {layers_count}x768 (GPT2Config shape), {prompts} prompts x {tokens} tokens: "
          f"{sum(layer.size for layer in view.layers)} units, {terms.passes} GradDrop passes; CPU s: screen "
          f"{plain_seconds:.1f}, GradDrop {drop_seconds:.1f} ({drop_seconds / max(plain_seconds, 1e-9):.1f}x the "
          "screen)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--cost", type=int, metavar="LAYERS", help="only the screen's and GradDrop's CPU time on a "
                                                                   "GPT2Config()-shaped model of LAYERS layers")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.cost:
        gpt2_cost(args.cost)
        return
    planted()
    residual()
    example("digits", 10)
    example("induction", 2)
    if not args.skip_gpt2:
        gpt2()


if __name__ == "__main__":
    main()
