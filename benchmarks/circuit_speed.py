"""Edge scoring: tensor-based (now) versus dense per-edge (before), and attribution patching versus exact patching.

    python benchmarks/circuit_speed.py            # all parts; WIDTHS=64,256 to shorten the sweep

1. Width sweep. An MLP (input 64, three hidden Linear layers of ``width`` units, 10 outputs; 256 samples, mean
   reference) and a CNN (three 3x3 conv layers of ``width / 8`` channels on 8x8 inputs, a Linear head): per width,
   the time of the old dense edge scoring (``tests/fixtures/dense_edges.py``, the implementation this one replaced:
   a (samples, U, V, positions) tensor per pair and one Python dict entry per edge) and of the new one, their
   ratio, the largest relative difference of the scores (target <= 1e-5), and then the growth exponent of each in
   the width (slope of log time against log width). The old method is skipped where its dense tensor alone would
   exceed 2 GiB. Also per width: R303's per-unit source shares (old: one dict flow per unit; new: one pass) and
   R302's connected circuit (old: dict graph; new: tensors).
2. Wide pairs scored by autograd: two pre-LayerNorm transformer blocks (``d_model = width / 4``, MLP ``width``),
   the pair (block 0's MLP neurons -> block 1's MLP neurons, across the residual stream and LayerNorm): before,
   wider than 128 on both sides, it was left unconnected; now the edges into block 1's 128 best-scored neurons
   are scored (time per width, and how many edges).
3. Exactness, on the embedded ``digits`` models: attribution patching against exact activation patching of every
   edge (speed ratio, target >= 50x; Spearman rank correlation, target >= 0.9).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from scipy.stats import spearmanr
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures.dense_edges import dense_edge_attribution, dict_attribution_flow, dict_connected_circuit  # noqa: E402

from mechaudit.examples import EXAMPLES  # noqa: E402
from mechaudit.examples.digits.model import build  # noqa: E402
from mechaudit.model_view import ModelView  # noqa: E402
from mechaudit.techniques.circuits import edge_attribution, source_shares, target_logit  # noqa: E402
from mechaudit.techniques.connected_circuits import connected_circuit  # noqa: E402
from mechaudit.techniques.edge_patching import exact_edge_effects  # noqa: E402

WIDTHS = [int(w) for w in os.environ.get("WIDTHS", "64,128,256,512,1024,2048").split(",")]
SAMPLES = 256
DENSE_LIMIT = 2 * 2 ** 30  # bytes of the old method's largest tensor beyond which it is not run


def mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def cnn(width: int) -> nn.Module:
    channels = max(8, width // 8)
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(channels * 64, 10))


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def dense_bytes(view: ModelView, positions: int) -> int:
    sizes = [layer.size for layer in view.layers]
    return max(a * b for a, b in zip(sizes, sizes[1:])) * SAMPLES * positions * 4


def sweep(name: str, factory, shape: tuple[int, ...], positions: int) -> None:
    print(f"\n{name}: edge scoring of {SAMPLES} samples (seconds; ratio = old / new)")
    print(f"{'width':>6} {'edges':>10} {'old':>8} {'new':>8} {'ratio':>7} {'max rel diff':>12} "
          f"{'shares old':>10} {'new':>8} {'circuit old':>11} {'new':>8}")
    rows = []
    for width in WIDTHS:
        torch.manual_seed(0)
        model = factory(width).eval()
        x = torch.rand(SAMPLES, *shape)
        targets = model(x).argmax(1).detach()
        view = ModelView.discover(model, x[:2])
        new, new_s = timed(lambda: edge_attribution(view, x, targets, target_logit, batch_size=SAMPLES))
        old_s = diff = shares_old = circuit_old = math.nan
        hidden = [n for n in new.nodes if new.node_layer[n] != view.layers[-1].name]
        shares, shares_s = timed(lambda: source_shares(new, "input"))
        units = hidden[:: max(1, len(hidden) // 16)][:16]  # old: one flow per unit; timed on 16, scaled
        size = max(1, len(hidden) // 10)
        circuit, circuit_s = timed(lambda: connected_circuit(new, hidden, size))
        if dense_bytes(view, positions) <= DENSE_LIMIT:
            (_, old_edges, _), old_s = timed(lambda: dense_edge_attribution(view, x, targets, target_logit,
                                                                            batch_size=SAMPLES))
            old = torch.tensor([old_edges[e] for e in new.edges], dtype=torch.float64)
            diff = float(((torch.tensor(new.edges.values()) - old).abs().max() / old.abs().max()))
            _, flow_s = timed(lambda: [dict_attribution_flow(new.layers, new.node_layer, old_edges, {u: 1.0})
                                       for u in units])
            shares_old = flow_s * len(hidden) / len(units)
            if len(new.edges) <= 2 ** 20:
                expected, circuit_old = timed(lambda: dict_connected_circuit(new, hidden, size))
                assert expected == circuit, "connected circuits differ"
        rows.append((width, old_s, new_s))
        print(f"{width:>6} {len(new.edges):>10} {old_s:>8.3f} {new_s:>8.3f} {old_s / new_s:>6.1f}x {diff:>12.1e} "
              f"{shares_old:>10.3f} {shares_s:>8.4f} {circuit_old:>11.3f} {circuit_s:>8.3f}")
    for label, column in (("old", 1), ("new", 2)):
        points = [(math.log(r[0]), math.log(r[column])) for r in rows if not math.isnan(r[column])]
        if len(points) >= 2:
            slope = np.polyfit(*zip(*points), 1)[0]
            print(f"growth exponent in width, {label}: {slope:.2f} (over widths "
                  f"{', '.join(str(r[0]) for r in rows if not math.isnan(r[column]))})")


class Block(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        d = width // 4
        self.embed = nn.Embedding(64, d)
        self.blocks = nn.Sequential(Block(d, width), Block(d, width))
        self.unembed = nn.Linear(d, 64)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.blocks(self.embed(tokens)))[:, -1]


def wide_pairs() -> None:
    print("\nwide autograd pair (MLP neurons -> next block's MLP neurons), 32 prompts of 16 tokens")
    for width in [w for w in WIDTHS if w >= 256][:3]:
        torch.manual_seed(0)
        model = Transformer(width).eval()
        tokens = torch.randint(0, 64, (32, 16))
        targets = model(tokens).argmax(1).detach()
        view = ModelView.discover(model, tokens[:2], only=("blocks.0.mlp.0", "blocks.1.mlp.0"))
        scores, seconds = timed(lambda: edge_attribution(view, tokens, targets, target_logit,
                                                          reference=tokens.roll(1, 0)))
        (choice,) = scores.edge_choice()
        print(f"{width:>6} units per side: {seconds:.2f} s, {choice['edges']} of {width * width} edges scored, "
              f"unconnected pairs: {len(scores.unconnected)}; {choice['method'][:60]}...")


def exactness() -> None:
    print("\nattribution patching versus exact patching of every edge (digits)")
    for name in ("digits", "digits-control"):
        folder = EXAMPLES[name].spec.parent
        data = np.load(folder / "audit_data.npz")
        inputs, mask = torch.from_numpy(data["inputs"]), torch.from_numpy(data["watermark_mask"])
        model = build()
        model.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
        model.eval()
        targets = model(inputs).argmax(1).detach()
        view = ModelView.discover(model, inputs[:2])
        scores, approx_seconds = timed(lambda: edge_attribution(view, inputs, targets, target_logit,
                                                                masks={"watermark": mask}))
        edges = list(scores.edges)
        regions = {"input:watermark": mask, "input:rest": 1 - mask}
        exact, exact_seconds = timed(lambda: exact_edge_effects(view, edges, inputs, targets, target_logit,
                                                                regions=regions))
        rho = spearmanr([scores.edges[e] for e in edges], [exact[e] for e in edges]).correlation
        print(f"{name}: {len(edges)} edges, {len(inputs)} samples; attribution patching {approx_seconds:.3f} s, "
              f"exact patching {exact_seconds:.2f} s, ratio {exact_seconds / approx_seconds:.0f}x (target >= 50x); "
              f"Spearman {rho:.3f} (target >= 0.9)")


def main() -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    sweep("MLP (3 hidden Linear layers of `width` units)", mlp, (64,), 1)
    sweep("CNN (3 conv layers of width/8 channels, 8x8)", cnn, (1, 8, 8), 64)
    wide_pairs()
    exactness()


if __name__ == "__main__":
    main()
