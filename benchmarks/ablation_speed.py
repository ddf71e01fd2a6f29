"""The fast exact ablation scan (L202) against the plain loop of one full forward pass per unit.

    python benchmarks/ablation_speed.py

Every unit of every hidden layer of the embedded `digits` models is ablated alone, by zero, mean and resample
ablation (the three modes L202 measures), over the whole audit set (360 images, batches of 256 as in an audit).
Prints both times, the speed ratio (target >= 10x) and the largest absolute difference between the two sets of
model outputs (target <= 1e-5). Times are the best CPU time of ``REPEATS`` runs, on one thread (``THREADS=2``
in the environment to change it). glibc gives large freed blocks back to the system and page-faults them in again
on the next allocation, which made the fast scan's times (it works on tensors of several MB) vary two-fold from
run to run on a shared machine; the benchmark asks glibc to keep freed memory (``mallopt``), for both methods.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time

import numpy as np
import torch
from safetensors.torch import load_file

from mechaudit.activations import unit_statistics
from mechaudit.examples import EXAMPLES
from mechaudit.examples.digits.model import build
from mechaudit.model_view import ModelView
from mechaudit.techniques.ablation import ablation_loop
from mechaudit.techniques.ablation_scan import AblationScanner

REPEATS = 5
THREADS = int(os.environ.get("THREADS", "1"))
BATCH = 256
MODES = ("zero", "mean", "resample")


def keep_freed_memory() -> None:
    """glibc: no mmap for large blocks, no trimming of the heap, room to grow (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD,
    M_TOP_PAD)."""
    name = ctypes.util.find_library("c")
    if name:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "mallopt"):
            libc.mallopt(-3, 1 << 30)
            libc.mallopt(-1, 1 << 30)
            libc.mallopt(-2, 1 << 27)


def best_time(run) -> tuple[float, list[torch.Tensor]]:
    """The best CPU time of ``REPEATS`` runs (CPU time, not wall time: the machine is shared, and a run that is
    descheduled for a while must not count that while)."""
    best, result = float("inf"), None
    for _ in range(REPEATS):
        started = time.process_time()
        result = run()
        best = min(best, time.process_time() - started)
    return best, result


def main() -> None:
    keep_freed_memory()
    torch.set_num_threads(THREADS)
    device = torch.device("cpu")
    for name in ("digits", "digits-control"):
        folder = EXAMPLES[name].spec.parent
        inputs = torch.from_numpy(np.load(folder / "audit_data.npz")["inputs"])
        model = build()
        model.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
        model.eval()
        view = ModelView.discover(model, inputs[:2])
        stats = unit_statistics(view, view.hidden_layers, inputs, BATCH, device)
        source = inputs[torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))]
        jobs = [(layer, mode) for layer in view.hidden_layers for mode in MODES]

        def replacement(layer, mode):
            mean = stats[layer.name].mean_map.float()
            return {"zero": (torch.zeros_like(mean), None), "mean": (mean, None), "resample": (None, source)}[mode]

        layers = view.hidden_layers
        scanner = AblationScanner(view, layers, device, inputs[:2])
        modes = {"zero": ({layer.name: torch.zeros_like(stats[layer.name].mean_map.float()) for layer in layers},
                          None),
                 "mean": ({layer.name: stats[layer.name].mean_map.float() for layer in layers}, None),
                 "resample": (None, source)}

        def fast() -> list[torch.Tensor]:
            outputs = scanner.scan(inputs, modes, batch_size=BATCH)
            return [outputs[mode][layer.name] for layer, mode in jobs]

        def loop() -> list[torch.Tensor]:
            return [ablation_loop(model, view.site(layer), layer, inputs, list(range(layer.size)),
                                  replacement(layer, mode)[0], BATCH, device, source=replacement(layer, mode)[1])
                    for layer, mode in jobs]

        fast_seconds, fast_outputs = best_time(fast)
        loop_seconds, loop_outputs = best_time(loop)
        difference = max(float((a - b).abs().max()) for a, b in zip(fast_outputs, loop_outputs))
        units = sum(layer.size for layer in view.hidden_layers)
        methods = "\n".join(f"  {layer.name}: {scanner.method(layer)}" for layer in layers)
        print(f"{name}: {units} units x 3 modes, {len(inputs)} samples; plain loop {loop_seconds:.3f} s, fast scan "
              f"{fast_seconds:.3f} s, ratio {loop_seconds / fast_seconds:.1f}x (target >= 10x); max abs difference "
              f"{difference:.1e} (target <= 1e-5)\n{methods}")


if __name__ == "__main__":
    main()
