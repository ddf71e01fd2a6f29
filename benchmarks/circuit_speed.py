"""Edge attribution patching versus exact activation patching of every edge, on the embedded examples.

    python benchmarks/circuit_speed.py

Prints, per example, the number of edges, both times, the speed ratio (target >= 50x) and the Spearman rank
correlation of the two edge scorings (target >= 0.9). Behaviour: the logit of the predicted class; reference:
the mean activations over the audit data; the watermark region is an input node.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from safetensors.torch import load_file
from scipy.stats import spearmanr

from mechaudit.examples import EXAMPLES
from mechaudit.examples.digits.model import build
from mechaudit.model_view import ModelView
from mechaudit.techniques.circuits import edge_attribution, target_logit
from mechaudit.techniques.edge_patching import exact_edge_effects


def main() -> None:
    torch.set_num_threads(2)
    for name in ("digits", "digits-control"):
        folder = EXAMPLES[name].spec.parent
        data = np.load(folder / "audit_data.npz")
        inputs, mask = torch.from_numpy(data["inputs"]), torch.from_numpy(data["watermark_mask"])
        model = build()
        model.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
        model.eval()
        targets = model(inputs).argmax(1).detach()
        view = ModelView.discover(model, inputs[:2])
        started = time.perf_counter()
        scores = edge_attribution(view, inputs, targets, target_logit, masks={"watermark": mask})
        approx_seconds = time.perf_counter() - started
        edges = list(scores.edges)
        regions = {"input:watermark": mask, "input:rest": 1 - mask}
        started = time.perf_counter()
        exact = exact_edge_effects(view, edges, inputs, targets, target_logit, regions=regions)
        exact_seconds = time.perf_counter() - started
        rho = spearmanr([scores.edges[e] for e in edges], [exact[e] for e in edges]).correlation
        print(f"{name}: {len(edges)} edges, {len(inputs)} samples; attribution patching {approx_seconds:.3f} s, "
              f"exact patching {exact_seconds:.2f} s, ratio {exact_seconds / approx_seconds:.0f}x (target >= 50x); "
              f"Spearman {rho:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
