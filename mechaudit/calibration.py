"""Calibration of the cost model on this machine: the audit's :class:`~mechaudit.cost.Sizes` (each audited
layer's activation size) and the seconds a sample-forward, a sample-backward, a model call and a floating-point
operation take here (:class:`~mechaudit.cost.Calibration`), and the free memory."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from . import distributed
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
    """The audit's :class:`Sizes` and this machine's :class:`Calibration`: a hooked forward pass of a batch (each
    layer's activation size and when it is ready), unhooked timed forward passes of the batch and of one sample
    (medians of :data:`TIMINGS`), one backward pass from the outputs to the first audited activation (or to float
    inputs), and timed matrix products.
    ``isolate(run)`` runs the calls the audit has not made before (one sample; gradients) and returns None where
    they fail: a model may do, under gradients, what it never did in the first forward passes (the engine bounds
    and isolates them like a rule)."""
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
    widths: dict[str, int] = {}
    with torch.no_grad():
        whole = statistics.median(_timed(lambda: view.model(batch), context.device) for _ in range(TIMINGS))
        output, reached = _readiness(view, batch, context.device, values, widths)  # after the others: a warm model
    if single is None or len(batch) < OVERHEAD_SAMPLES:  # a large model: one sample is mostly compute
        forward, call = max(whole / len(batch), 1e-9), 0.0
    else:  # t(b) = call + b * per_sample, from a batch of b and of one sample
        forward = max((whole - single) / (len(batch) - 1), whole / len(batch) / 4, 1e-9)
        call = max(single - forward, 0.0)
    layers = tuple(LayerSize(layer.name, layer.kind, layer.size, values.get(layer.name, layer.size),
                             not layer.is_output, reached.get(layer.name), widths.get(layer.name, 0))
                   for layer in view.layers)
    sizes = Sizes(len(data), context.max_samples, context.batch_size, layers, int(data.inputs[0].numel()),
                  int(output[0].numel()) if isinstance(output, torch.Tensor) else 0, len(data.masks),
                  context.behaviour.kind if context.behaviour is not None else "")
    backward = isolate(lambda: _backward_seconds(context, batch))
    calibration = Calibration(forward, backward if backward is not None else 2 * forward, _flop_seconds(), call,
                              backward is not None, torch.get_num_threads())
    return sizes, calibration


def agreed(sizes: Sizes, calibration: Calibration, memory: int) -> tuple[Sizes, Calibration, int]:
    """What every rank plans from under torchrun, so that every rank plans alike (a rule reduced on one rank and
    run in full on another would hang their collectives): the slowest rank's seconds, the least free memory,
    whether every rank timed a backward pass, and each layer's readiness share averaged over the ranks (None where
    any rank did not time it). On one process, the arguments unchanged."""
    if not distributed.active():
        return sizes, calibration, memory
    slowest = distributed.reduce(torch.tensor([calibration.forward_seconds, calibration.backward_seconds,
                                               calibration.flop_seconds, calibration.call_seconds],
                                              dtype=torch.float64), "max").tolist()
    least = distributed.reduce(torch.tensor([memory, float(calibration.backward_measured)],
                                            dtype=torch.float64), "min").tolist()
    timed = distributed.reduce(torch.tensor([float(layer.at is not None) for layer in sizes.layers],
                                            dtype=torch.float64), "min").tolist()
    total = distributed.reduce(torch.tensor([layer.at or 0.0 for layer in sizes.layers],
                                            dtype=torch.float64)).tolist()
    layers = tuple(replace(layer, at=total[i] / distributed.world_size() if timed[i] else None)
                   for i, layer in enumerate(sizes.layers))
    calibration = replace(calibration, forward_seconds=slowest[0], backward_seconds=slowest[1],
                          flop_seconds=slowest[2], call_seconds=slowest[3], backward_measured=bool(least[1]))
    return replace(sizes, layers=layers), calibration, int(least[0])


def _readiness(view: Any, batch: torch.Tensor, device: torch.device,
               values: dict[str, int], widths: dict[str, int]) -> tuple[Any, dict[str, float]]:
    """One forward pass of ``batch`` with every audited layer hooked (a pass apart from the timed ones, whose hooks
    would slow them: heads hooks re-run attention): the model's output, each layer's activation values per sample
    (into ``values``; a heads layer's vector width into ``widths``) and the share of the pass spent when its
    activation was ready (its first call; none where it did not run). On CUDA the hooks record events instead of
    waiting for the GPU at each layer."""
    from .model_view import installed, units_view

    mark = _marker(device)
    reached: dict[str, Any] = {}

    def record(layer):
        def hook(activation, _args):
            if layer.name not in reached:
                reached[layer.name] = mark()
            values[layer.name] = int(units_view(activation, layer)[0].numel())
            if layer.kind == "heads":  # an activation vector is the heads' concatenated outputs at one token
                widths[layer.name] = int(activation.shape[-1])
        return hook
    with installed(view.hook(layer, record(layer)) for layer in view.layers):
        _sync(device)
        start = mark()
        output = view.model(batch)
        end = mark()
        _sync(device)
    seconds = _elapsed(start, end)
    shares = {name: min(1.0, max(0.0, _elapsed(start, at) / seconds)) for name, at in reached.items()} \
        if seconds > 0 else {}
    return output, shares


def _marker(device: torch.device) -> Callable[[], Any]:
    """A mark of the present moment in the device's order of work: a recorded CUDA event (no waiting for the GPU;
    not run in the tests, which have no GPU), else the CPU's clock."""
    if device.type != "cuda":
        return time.perf_counter

    def event() -> Any:
        recorded = torch.cuda.Event(enable_timing=True)
        recorded.record()
        return recorded
    return event


def _elapsed(start: Any, end: Any) -> float:
    """Seconds between two marks of :func:`_marker` (CUDA events once the GPU has finished them)."""
    return start.elapsed_time(end) / 1e3 if isinstance(start, torch.cuda.Event) else end - start


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
