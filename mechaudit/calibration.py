"""Calibration of the cost model on this machine: the audit's :class:`~mechaudit.cost.Sizes` (each audited
layer's activation size) and the seconds a sample-forward, a sample-backward, a model call and a floating-point
operation take here (:class:`~mechaudit.cost.Calibration`), and the free memory."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from .cost import Calibration, LayerSize, Sizes

#: Samples in the calibration batch (at most; the audit's batch size below that): per-sample time depends on the
#: batch size (on a CPU, measured on digits: 8.5 us per sample-forward in batches of 64, 43 us in batches of 256).
CALIBRATION_SAMPLES = 256
#: Seconds one calibration forward pass should take, at most, where one sample already takes long (a large model):
#: its batch is cut to about this, down to two samples.
CALIBRATION_SECONDS = 2.0
#: Timings of the forward passes and of the matrix product whose median is taken (robust to a stray slow one).
TIMINGS = 3
#: The smallest calibration batch from which a model call's fixed overhead is told apart from its per-sample time.
OVERHEAD_SAMPLES = 16


def measure(context: Any, isolate: Callable[[Callable[[], Any]], Any] = lambda run: run()) -> tuple[Sizes, Calibration]:
    """The audit's :class:`Sizes` and this machine's :class:`Calibration`: forward passes of a batch (the first
    hooked: it records each layer's activation size) and of one sample (medians of :data:`TIMINGS`), one backward
    pass from the outputs to the first audited activation (or to float inputs), and timed matrix products.
    ``isolate(run)`` runs the calls the audit has not made before (one sample; gradients) and returns None where
    they fail: a model may do, under gradients, what it never did in the first forward passes (the engine bounds
    and isolates them like a rule)."""
    from .model_view import units_view

    view, data = context.view, context.data
    largest = max(1, min(context.batch_size, len(data), CALIBRATION_SAMPLES))
    first = data.inputs[:1].to(context.device)
    with torch.no_grad():
        single = isolate(lambda: statistics.median(_timed(lambda: view.model(first), context.device)
                                                   for _ in range(TIMINGS)))
    # a batch that takes about CALIBRATION_SECONDS (a large model's per-sample time is steady from a few samples)
    size = largest if not single else max(2, min(largest, int(CALIBRATION_SECONDS / single)))
    batch = data.inputs[:size].to(context.device)
    values: dict[str, int] = {}
    reached: dict[str, list[float]] = {}  # when each layer's activation was ready, in each timed pass

    def record(layer):
        def hook(activation, _args):
            _sync(context.device)
            reached.setdefault(layer.name, []).append(time.perf_counter())
            values[layer.name] = int(units_view(activation, layer)[0].numel())
        return hook
    from .model_view import installed

    outputs: list = []
    timings: list[tuple[float, float]] = []  # (start, seconds) of each timed pass

    def run() -> None:
        outputs[:] = [view.model(batch)]  # the last output only

    def timed() -> None:
        start = time.perf_counter()
        timings.append((start, _timed(run, context.device)))
    with torch.no_grad(), installed(view.hook(layer, record(layer)) for layer in view.layers):
        for _ in range(TIMINGS):
            timed()
    whole = statistics.median(seconds for _, seconds in timings)
    output = outputs[0]
    if single is None or len(batch) < OVERHEAD_SAMPLES:  # a large model: one sample is mostly compute
        forward, call = max(whole / len(batch), 1e-9), 0.0
    else:  # t(b) = call + b * per_sample, from a batch of b and of one sample
        forward = max((whole - single) / (len(batch) - 1), whole / len(batch) / 4, 1e-9)
        call = max(single - forward, 0.0)
    layers = tuple(LayerSize(layer.name, layer.kind, layer.size, values.get(layer.name, layer.size),
                             not layer.is_output, _share(reached.get(layer.name, []), timings))
                   for layer in view.layers)
    sizes = Sizes(len(data), context.max_samples, context.batch_size, layers, int(data.inputs[0].numel()),
                  int(output[0].numel()) if isinstance(output, torch.Tensor) else 0, len(data.masks))
    backward = isolate(lambda: _backward_seconds(context, batch))
    calibration = Calibration(forward, backward if backward is not None else 2 * forward, _flop_seconds(), call,
                              backward is not None, torch.get_num_threads())
    return sizes, calibration


def _share(reached: list[float], timings: list[tuple[float, float]]) -> float | None:
    """The median share of a timed forward pass spent when a layer's activation was ready (its first call in each
    pass: a module called more than once is hooked at its first call), or None where it did not run each time."""
    if len(reached) < len(timings) or len(reached) % len(timings):
        return None
    calls = len(reached) // len(timings)
    shares = [(reached[i * calls] - start) / seconds for i, (start, seconds) in enumerate(timings) if seconds > 0]
    return min(1.0, max(0.0, statistics.median(shares))) if shares else None


def _backward_seconds(context: Any, batch: torch.Tensor) -> float | None:
    """Seconds per sample of a backward pass: the gradient of the summed outputs with respect to float inputs, or
    where they do not reach the outputs (token ids stored as floats), to the first audited activation; None where
    there is nothing to differentiate."""
    seconds = _gradient_seconds(context, batch, to_inputs=True) if batch.is_floating_point() else None
    if seconds is None and context.view.layers:
        seconds = _gradient_seconds(context, batch, to_inputs=False)
    return None if seconds is None else max(seconds / len(batch), 1e-9)


def _gradient_seconds(context: Any, batch: torch.Tensor, to_inputs: bool) -> float | None:
    """Seconds of one backward pass of ``batch`` to its inputs or to the first audited activation, or None when
    that leaf does not reach the outputs."""
    view = context.view
    leaves: list[torch.Tensor] = []

    def leaf(activation, _args):
        if leaves:
            return None
        leaves.append(activation.detach().requires_grad_(True))
        return leaves[-1]
    if to_inputs:
        batch = batch.clone().requires_grad_(True)
        leaves.append(batch)
    from .model_view import installed

    try:
        with torch.enable_grad(), installed([] if to_inputs else [view.hook(view.layers[0], leaf)]):
            output = view.model(batch)
        if not isinstance(output, torch.Tensor) or not output.is_floating_point() or not leaves:
            return None
        total = output.float().sum()
        if not total.requires_grad:
            return None
        grads: list = []
        seconds = _timed(lambda: grads.extend(torch.autograd.grad(total, leaves, allow_unused=True)), context.device)
        return None if grads[0] is None else seconds
    except RuntimeError:  # no path from the leaf to the outputs (e.g. integer operations in between)
        return None


def _flop_seconds(size: int = 512, repeats: int = 2) -> float:
    """Seconds per floating-point operation of a float32 matrix product on the CPU (where mechaudit's own
    arithmetic, dictionaries and similarity, mostly runs): the median of :data:`TIMINGS` timings of ``repeats``
    products each (a single short timing varied 70-fold between processes on a loaded machine)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up

    def once() -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return time.perf_counter() - start
    return max(statistics.median(once() for _ in range(TIMINGS)) / (repeats * 2 * size ** 3), 1e-15)


def _timed(run: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``run()`` takes (waiting for the GPU to finish)."""
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def available_bytes(device: torch.device) -> int:
    """Free memory where the rules' tensors live: the device's on CUDA, else the machine's available memory
    (Linux's ``MemAvailable``, else the free pages; without either, no memory budget)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return 2**62
