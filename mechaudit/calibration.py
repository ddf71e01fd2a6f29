"""Calibration of the cost model on this machine: the audit's :class:`~mechaudit.cost.Sizes` (each audited
layer's activation size) and the seconds a sample-forward, a sample-backward, a model call and a floating-point
operation take here (:class:`~mechaudit.cost.Calibration`), and the free memory."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import torch

from . import distributed
from .cost import Calibration, LayerSize, Sizes

T = TypeVar("T")

#: Samples in the calibration batch (at most; the audit's batch size below that): per-sample time depends on the
#: batch size (on a CPU, measured on digits: 8.5 us per sample-forward in batches of 64, 43 us in batches of 256).
CALIBRATION_SAMPLES = 256
#: Seconds one calibration forward pass should take, at most, where one sample already takes long (a large model):
#: its batch is cut to about this, down to two samples.
CALIBRATION_SECONDS = 2.0
#: Timings of the forward passes and of the matrix product whose fastest is taken (timeit's practice: a machine's
#: load only ever adds time, so the fastest timing is the one least disturbed).
TIMINGS = 3
#: The smallest calibration batch from which a model call's fixed overhead is told apart from its per-sample time;
#: the calibration batch is sized from a batch of this many samples (doubling up to it), never from one sample
#: alone: with more threads than free cores, each parallel operation of a small call may wait a scheduler slice for
#: a descheduled thread (ResNet-18 at 32x32, two threads on two busy cores: 500 ms per one-sample call, and as
#: much CPU time, against 5 ms with one thread), which the per-sample time of a batch barely shows.
OVERHEAD_SAMPLES = 16


def measure(context: Any, isolate: Callable[[Callable[[], Any]], Any] = lambda run: run()) -> tuple[Sizes, Calibration]:
    """The audit's :class:`Sizes` and this machine's :class:`Calibration`: a hooked forward pass of a batch (each
    layer's activation size and when it is ready), unhooked timed forward passes (the fastest of :data:`TIMINGS`)
    of one sample, of batches doubling up to :data:`OVERHEAD_SAMPLES` (on one thread where torch runs more on a
    CPU), of the calibration batch sized from them and of :data:`OVERHEAD_SAMPLES` samples, a backward pass from
    the outputs to the first audited activation (or to float inputs; also on one thread where the threads waited
    on each other or it is quick), and timed matrix products.
    ``isolate(run)`` runs the calls the audit has not made before (one sample; gradients) and returns None where
    they fail: a model may do, under gradients, what it never did in the first forward passes (the engine bounds
    and isolates them like a rule)."""
    view, data = context.view, context.data
    largest = max(1, min(context.batch_size, len(data), CALIBRATION_SAMPLES))

    def forward(samples: int) -> Callable[[], Any]:
        batch = data.inputs[:samples].to(context.device)
        return lambda: view.model(batch)
    with torch.no_grad():
        single = isolate(lambda: _fastest(forward(1), context.device))
        # batches of 2, 4, ... samples up to OVERHEAD_SAMPLES decide the calibration batch: timed on one thread
        # where torch runs more on a CPU (no thread then waits on a descheduled one), else as the audit runs
        cap = min(largest, OVERHEAD_SAMPLES)
        alone: dict[int, float] = {}
        timings: dict[int, float] = {}
        if single is not None:
            alone = _one_thread(lambda: _doubling(forward, cap, context.device), context.device) or {}
            timings = {1: single} if alone else _doubling(forward, cap, context.device, single)
        size = calibration_size(largest, alone or timings)
        batch = data.inputs[:size].to(context.device)
        waited = contended(timings, alone)
        # where the threads waited, each call waits long and the one-thread bounds hold: one timing, no base
        _fastest_into(timings, len(batch), lambda: view.model(batch), context.device, 1 if waited else TIMINGS)
        base = _base(len(batch), {} if waited else alone or timings)
        if base > 1:
            _fastest_into(timings, base, forward(base), context.device)
    values: dict[str, int] = {}
    widths: dict[str, int] = {}

    def ready() -> tuple[Any, dict[str, float]]:
        with torch.no_grad():  # after the others: a warm model
            return _readiness(view, batch, context.device, values, widths)
    output, reached = (_one_thread(ready, context.device) if waited else None) or ready()
    forward_seconds, call = split_call(timings, alone, torch.get_num_threads())
    layers = tuple(LayerSize(layer.name, layer.kind, layer.size, values.get(layer.name, layer.size),
                             not layer.is_output, reached.get(layer.name), widths.get(layer.name, 0))
                   for layer in view.layers)
    sizes = Sizes(len(data), context.max_samples, context.batch_size, layers, int(data.inputs[0].numel()),
                  int(output[0].numel()) if isinstance(output, torch.Tensor) else 0, len(data.masks),
                  context.behaviour.kind if context.behaviour is not None else "")
    backward = None if waited else isolate(lambda: _backward_seconds(context, batch))
    if waited or (backward is not None and backward * len(batch) <= CALIBRATION_SECONDS):  # the waits are bursty
        alone_backward = isolate(lambda: _one_thread(lambda: _backward_seconds(context, batch), context.device))
        backward = min(backward or math.inf, alone_backward or math.inf)
        backward = None if backward == math.inf else backward
    calibration = Calibration(forward_seconds, backward if backward is not None else 2 * forward_seconds,
                              _flop_seconds(1 if waited else TIMINGS), call, backward is not None,
                              torch.get_num_threads(), waited)
    return sizes, calibration


def _doubling(forward: Callable[[int], Callable[[], Any]], cap: int, device: torch.device,
              single: float | None = None) -> dict[int, float]:
    """Seconds of forward passes of 1 (the fastest of :data:`TIMINGS`, or ``single``), 2, 4, ... samples up to
    ``cap`` (one timing each, the fastest of :data:`TIMINGS` for ``cap``), stopping once they took
    :data:`CALIBRATION_SECONDS` in all (a large model)."""
    timings = {1: single if single is not None else _fastest(forward(1), device)}
    size, spent = 1, timings[1]
    while size < cap and spent <= CALIBRATION_SECONDS:
        size = min(2 * size, cap)
        timings[size] = (_fastest if size == cap else _timed)(forward(size), device)  # the last bounds the rest
        spent += timings[size]
    return timings


def calibration_size(largest: int, timings: dict[int, float]) -> int:
    """Samples in the calibration batch: as many as take about :data:`CALIBRATION_SECONDS` at the per-sample time
    of the largest batch timed so far (``timings``: samples -> seconds; a large model's per-sample time is steady
    from a few samples), at least two and that batch, at most ``largest``; ``largest`` without timings."""
    if not timings:
        return largest
    samples = max(timings)
    seconds = timings[samples]
    fitting = int(CALIBRATION_SECONDS * samples / seconds) if seconds > 0 else largest
    return min(largest, max(2, samples, fitting))


def _base(samples: int, probed: dict[int, float]) -> int:
    """The batch over which a batch of ``samples`` measures the per-sample time (:func:`split_call`):
    :data:`OVERHEAD_SAMPLES` where it was probed and ``samples`` is at least twice that, else one sample."""
    return OVERHEAD_SAMPLES if samples >= 2 * OVERHEAD_SAMPLES and OVERHEAD_SAMPLES in probed else 1


def split_call(timings: dict[int, float], alone: dict[int, float] | None = None,
               threads: int = 1) -> tuple[float, float]:
    """(seconds per sample-forward, seconds of a call's fixed overhead) from the fastest timings of batches
    (``timings``: samples -> seconds; 1, one sample, absent where it failed) and those on one thread (``alone``),
    with ``t(b) = call + b * per_sample``.
    Per sample: what the largest batch adds per sample over :data:`OVERHEAD_SAMPLES` samples (over one sample
    where it is under twice that): a call's waits on descheduled threads, which its size barely changes, cancel
    out, if not their variation. It is at most the batch's average and one thread's (in its largest batch), and
    at least a quarter of the first or the second shared among ``threads``: within ``threads`` times the model's
    time however long the threads waited. The call: one sample's time less that, one sample's time being the
    fastest of any batch's and of one thread's (a larger batch never takes less time; threads waiting on each
    other are the machine's load, not the model's overhead). Below :data:`OVERHEAD_SAMPLES` samples (a large
    model: one sample is mostly compute) or without one sample's timing, all of the batch is per sample."""
    samples = max(timings)
    whole = timings[samples]
    if 1 not in timings or samples < OVERHEAD_SAMPLES:
        return max(whole / samples, 1e-9), 0.0
    base = _base(samples, timings)
    alone = alone or {}
    most = max(alone, default=0)
    average = whole / samples
    rate = alone[most] / most if most else math.inf  # one thread's, per sample (with its calls' overhead)
    low, high = min(average / 4, rate / max(1, threads)), min(average, rate)
    forward = max(min(max((whole - timings[base]) / (samples - base), low), high), 1e-9)
    one = min([*timings.values(), *([alone[1]] if 1 in alone else [])])
    return forward, max(one - forward, 0.0)


def contended(timings: dict[int, float], alone: dict[int, float] | None) -> bool:
    """Whether the threads waited on each other: one sample took over twice (and a millisecond more than) its
    time on one thread (more threads than free cores; each parallel operation may then wait on a descheduled
    thread)."""
    return bool(alone) and 1 in alone and 1 in timings and timings[1] > 2 * alone[1] + 1e-3


def _one_thread(run: Callable[[], T], device: torch.device) -> T | None:
    """``run()`` on one CPU thread (no thread waits on another); None on a GPU or where torch runs one thread
    already."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2:
        return None
    torch.set_num_threads(1)
    try:
        return run()
    finally:
        torch.set_num_threads(threads)


def _fastest_into(timings: dict[int, float], samples: int, run: Callable[[], Any], device: torch.device,
                  repeats: int = TIMINGS) -> None:
    """``timings[samples]``: the fastest of its timing so far and :func:`_fastest`'s."""
    timings[samples] = min(timings.get(samples, math.inf), _fastest(run, device, repeats))


def agreed(sizes: Sizes, calibration: Calibration, memory: int) -> tuple[Sizes, Calibration, int]:
    """What every rank plans from under torchrun, so that every rank plans alike (a rule reduced on one rank and
    run in full on another would hang their collectives): the slowest rank's seconds, the least free memory,
    whether every rank timed a backward pass, whether any rank's threads waited on each other, and each layer's
    readiness share averaged over the ranks (None where any rank did not time it). On one process, the arguments
    unchanged."""
    if not distributed.active():
        return sizes, calibration, memory
    slowest = distributed.reduce(torch.tensor([calibration.forward_seconds, calibration.backward_seconds,
                                               calibration.flop_seconds, calibration.call_seconds],
                                              dtype=torch.float64), "max").tolist()
    least = distributed.reduce(torch.tensor([memory, float(calibration.backward_measured),
                                             float(not calibration.contended)], dtype=torch.float64), "min").tolist()
    timed = distributed.reduce(torch.tensor([float(layer.at is not None) for layer in sizes.layers],
                                            dtype=torch.float64), "min").tolist()
    total = distributed.reduce(torch.tensor([layer.at or 0.0 for layer in sizes.layers],
                                            dtype=torch.float64)).tolist()
    layers = tuple(replace(layer, at=total[i] / distributed.world_size() if timed[i] else None)
                   for i, layer in enumerate(sizes.layers))
    calibration = replace(calibration, forward_seconds=slowest[0], backward_seconds=slowest[1],
                          flop_seconds=slowest[2], call_seconds=slowest[3], backward_measured=bool(least[1]),
                          contended=not least[2])
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
    there is nothing to differentiate. The fastest of up to :data:`TIMINGS` (fewer once they took
    :data:`CALIBRATION_SECONDS` in all), as for the forward passes."""
    to_inputs = batch.is_floating_point()
    seconds = _gradient_seconds(context, batch, to_inputs=True) if to_inputs else None
    if seconds is None and context.view.layers:
        to_inputs = False
        seconds = _gradient_seconds(context, batch, to_inputs=False)
    if seconds is None:
        return None
    spent = seconds
    for _ in range(TIMINGS - 1):
        if spent > CALIBRATION_SECONDS:
            break
        latest = _gradient_seconds(context, batch, to_inputs) or math.inf
        seconds, spent = min(seconds, latest), spent + latest
    return max(seconds / len(batch), 1e-9)


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


def _flop_seconds(timings: int = TIMINGS, size: int = 512, repeats: int = 2) -> float:
    """Seconds per floating-point operation of a float32 matrix product on the CPU (where mechaudit's own
    arithmetic, dictionaries and similarity, mostly runs): the fastest of ``timings`` timings of ``repeats``
    products each (a single short timing varied 70-fold between processes on a loaded machine), and of
    :data:`TIMINGS` on one thread where torch runs more (whose threads may wait on each other on a busy machine:
    40-fold)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up

    def products() -> None:
        for _ in range(repeats):
            a @ b
    cpu = torch.device("cpu")
    fastest = min(_fastest(products, cpu, timings), _one_thread(lambda: _fastest(products, cpu), cpu) or math.inf)
    return max(fastest / (repeats * 2 * size ** 3), 1e-15)


def _fastest(run: Callable[[], Any], device: torch.device, repeats: int = TIMINGS) -> float:
    """The fastest of ``repeats`` timings of ``run()``, fewer once they took :data:`CALIBRATION_SECONDS` in all (a
    large model or a busy machine: a long timing is less disturbed by load, and repeating it costs the most)."""
    best = spent = _timed(run, device)
    for _ in range(repeats - 1):
        if spent > CALIBRATION_SECONDS:
            break
        latest = _timed(run, device)
        best, spent = min(best, latest), spent + latest
    return best


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
