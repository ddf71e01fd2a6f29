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
#: Seconds the one-sample probe on one thread may take in all (its warm-up call and up to :data:`TIMINGS` timings;
#: one sample may take threads times longer there than on all threads: a slow model on many cores); past it, the
#: calibration does without one thread's timings. Not probed where one sample on all threads, times the threads,
#: exceeds ten times this (it would be cut, and a single long operation cannot be cut before it ends).
PROBE_SECONDS = 5

#: ``isolate(run, seconds)``: ``run()``, or None where it fails or takes over ``seconds`` (the engine's default).
Isolate = Callable[..., Any]


def measure(context: Any, isolate: Isolate = lambda run, seconds=0: run()) -> tuple[Sizes, Calibration]:
    """The audit's :class:`Sizes` and this machine's :class:`Calibration`: forward timings of one sample and of
    batches doubling up to :data:`OVERHEAD_SAMPLES` (:func:`_probed_timings`), of a calibration batch sized from
    them (:func:`calibration_size`), split into per-sample and per-call time (:func:`split_call`); a hooked pass of
    that batch (each layer's activation size and when it is ready); a backward pass (:func:`_backward_seconds`);
    timed matrix products. ``isolate(run)`` runs the calls the audit has not made before (one sample; one thread;
    gradients; optionally within ``seconds``) and returns None where they fail: a model may do there what it
    never did in the first forward passes (the engine bounds and isolates them like a rule)."""
    view, data, device = context.view, context.data, context.device
    threads = torch.get_num_threads()
    largest = max(1, min(context.batch_size, len(data), CALIBRATION_SAMPLES))

    def call_with(samples: int) -> Callable[[], Any]:
        inputs = data.inputs[:samples].to(device)
        return lambda: view.model(inputs)
    with torch.no_grad():
        timings, alone, slow = _probed_timings(call_with, min(largest, OVERHEAD_SAMPLES), device, isolate)
        waited = contended(timings, alone)
        # one sample failed or was cut after taking long: the fewest samples, not the largest batch, unisolated
        size = min(largest, 2) if slow else calibration_size(largest, alone if waited else timings)
        batch = data.inputs[:size].to(device)
        # where the threads waited, each call waits long and one thread's rate decides: one timing, no base
        _fastest_into(timings, len(batch), lambda: view.model(batch), device, 1 if waited else TIMINGS)
        base = OVERHEAD_SAMPLES if not waited and len(batch) >= 2 * OVERHEAD_SAMPLES and 1 in timings else 1
        if base > 1:
            _fastest_into(timings, base, call_with(base), device)
    values: dict[str, int] = {}
    widths: dict[str, int] = {}

    def ready() -> tuple[Any, dict[str, float]]:
        with torch.no_grad():  # after the others: a warm model
            return _readiness(view, batch, device, values, widths)
    output, reached = (_one_thread(ready, device, warm_up=ready) if waited else None) or ready()
    forward_seconds, call = split_call(timings, alone, base, waited)
    layers = tuple(LayerSize(layer.name, layer.kind, layer.size, values.get(layer.name, layer.size),
                             not layer.is_output, reached.get(layer.name), widths.get(layer.name, 0))
                   for layer in view.layers)
    sizes = Sizes(len(data), context.max_samples, context.batch_size, layers, int(data.inputs[0].numel()),
                  int(output[0].numel()) if isinstance(output, torch.Tensor) else 0, len(data.masks),
                  context.behaviour.kind if context.behaviour is not None else "")
    backward = None if waited else isolate(lambda: _backward_seconds(context, batch))
    # one thread's backward pass: where the threads waited, or where it is quick even at threads x longer
    if device.type == "cpu" and (waited or (backward is not None
                                            and backward * len(batch) * threads <= CALIBRATION_SECONDS)):
        backward = _least(backward, isolate(lambda: _one_thread(lambda: _backward_seconds(context, batch), device)))
    calibration = Calibration(forward_seconds, backward if backward is not None else 2 * forward_seconds,
                              _flop_seconds(1 if waited else TIMINGS), call, backward is not None, threads, waited)
    return sizes, calibration


def _probed_timings(call_with: Callable[[int], Callable[[], Any]], cap: int, device: torch.device,
                    isolate: Isolate) -> tuple[dict[int, float], dict[int, float], bool]:
    """Forward timings (samples -> seconds) on torch's threads and on one thread (empty where not probed), and
    whether the one-sample call failed or was cut only after :data:`CALIBRATION_SECONDS` (a slow model: isolate
    does not tell a failure from its time-out): one sample on each, after an untimed warm-up call (one-time work,
    such as compiling, oneDNN's primitives or lazy initialisation, is not load), and batches doubling up to ``cap``
    on torch's threads unless one sample showed that they waited on each other (:func:`contended`; a batch seen to
    wait is timed once more, warm, the fastest counting: its first call at a new shape is cold), and on one thread
    where they did. The calls on one thread are isolated: one sample's within :data:`PROBE_SECONDS` (not probed
    where it would surely be cut), the batches' within the calibration's budget; where they fail, they are not
    probed. Where the batches fail on one thread, one thread's rate is one sample's, call included (an upper
    bound)."""
    started = time.perf_counter()
    single = isolate(lambda: _warmed_fastest(call_with(1), device))
    if single is None:
        return {}, {}, time.perf_counter() - started >= CALIBRATION_SECONDS
    timings = {1: single}
    one = None
    if single * torch.get_num_threads() <= 10 * PROBE_SECONDS:
        one = isolate(lambda: _one_thread(lambda: _warmed_fastest(call_with(1), device), device), PROBE_SECONDS)
    alone = {1: one} if one is not None else {}
    if not contended(timings, alone):
        timings = _rechecked(_doubling(call_with, cap, device, single), alone, call_with, device)
    if contended(timings, alone):
        doubled = isolate(lambda: _one_thread(lambda: _doubling(call_with, cap, device, alone[1]), device,
                                              warm_up=call_with(1)))
        alone = doubled or alone
    return timings, alone, False


def _rechecked(timings: dict[int, float], alone: dict[int, float], call_with: Callable[[int], Callable[[], Any]],
               device: torch.device) -> dict[int, float]:
    """``timings`` with each batch that seems to have waited (:func:`contended`) timed once more, the fastest
    counting, up to the first that waits again: a single timing of a new shape is cold (oneDNN creates its
    primitives: a review measured 1.3 ms for a small network's first two-sample call, 0.15 ms warm, against a
    threshold of 1.24 ms)."""
    for samples in sorted(timings):
        if contended({samples: timings[samples]}, alone):
            timings[samples] = min(timings[samples], _timed(call_with(samples), device))
            if contended({samples: timings[samples]}, alone):
                break
    return timings


def _warmed_fastest(run: Callable[[], Any], device: torch.device) -> float:
    """:func:`_fastest` of ``run()`` after one untimed call of it."""
    run()
    return _fastest(run, device)


def _doubling(call_with: Callable[[int], Callable[[], Any]], cap: int, device: torch.device,
              single: float) -> dict[int, float]:
    """Seconds of forward passes of 1 (``single``), 2, 4, ... samples up to ``cap`` (one timing each, the fastest
    of :data:`TIMINGS` for ``cap``), stopping once they took :data:`CALIBRATION_SECONDS` in all (a large model)."""
    timings = {1: single}
    size, spent = 1, single
    while size < cap and spent <= CALIBRATION_SECONDS:
        size = min(2 * size, cap)
        timings[size] = (_fastest if size == cap else _timed)(call_with(size), device)  # the last bounds the rest
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


def split_call(timings: dict[int, float], alone: dict[int, float] | None = None,
               base: int = 1, waited: bool | None = None) -> tuple[float, float]:
    """(seconds per sample-forward, seconds of a call's fixed overhead), fitting ``t(b) = call + b * per_sample``
    to the fastest timings of batches (``timings``: samples -> seconds; 1 absent where one sample failed) and, where
    probed, those on one thread (``alone``); ``waited``: whether the threads waited on each other (by default
    :func:`contended` on these timings).

    Per sample: what the largest batch adds per sample over ``base`` samples (a call's waits on descheduled
    threads, the same for any batch size, cancel out), kept between a quarter of the largest batch's average and
    the lesser of that average and one thread's rate (the average of its largest batch). Where the threads waited
    on each other it is that lesser: what OMP_NUM_THREADS=1 gives. Below :data:`OVERHEAD_SAMPLES` samples (a
    large model: one sample is mostly compute) or without one sample, all of the batch counts per sample (bounded
    by one thread's rate).

    The call: the fastest one-sample timing, on any thread count, less the per-sample time."""
    alone = alone or {}
    samples = max(timings)
    average = timings[samples] / samples
    rate = alone[max(alone)] / max(alone) if alone else math.inf
    high = min(average, rate)
    if 1 not in timings or samples < OVERHEAD_SAMPLES:
        return max(high, 1e-9), 0.0
    if waited is None:
        waited = contended(timings, alone)
    if waited:
        per_sample = max(high, 1e-9)
    else:
        added = (timings[samples] - timings[base]) / (samples - base)
        per_sample = max(min(max(added, average / 4), high), 1e-9)
    one = _least(*timings.values(), alone.get(1))
    return per_sample, max((one or 0.0) - per_sample, 0.0)


def contended(timings: dict[int, float], alone: dict[int, float] | None) -> bool:
    """Whether the threads waited on each other: a batch of any size took over twice (and a millisecond more than)
    as many times one sample's time on one thread (more threads than free cores; each parallel operation may then
    wait on a descheduled thread, and the waits come in bursts)."""
    if not alone or 1 not in alone:
        return False
    return any(seconds > 2 * samples * alone[1] + 1e-3 for samples, seconds in timings.items())


def _least(*seconds: float | None) -> float | None:
    """The least of ``seconds`` that were measured (not None); None where none was."""
    measured = [value for value in seconds if value is not None]
    return min(measured) if measured else None


def _one_thread(run: Callable[[], T], device: torch.device, warm_up: Callable[[], Any] | None = None) -> T | None:
    """``run()`` on one CPU thread (no thread waits on another), after ``warm_up()`` where given (setting the
    thread count clears oneDNN's cache: the first call after it is cold); None on a GPU or where torch runs one
    thread already."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2:
        return None
    try:
        torch.set_num_threads(1)  # within the try: a time-out right after it still restores the threads
        if warm_up is not None:
            warm_up()
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
    seconds = _fastest_of(lambda: _gradient_seconds(context, batch, to_inputs) or math.inf, first=seconds)
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
    fastest = _least(_fastest(products, cpu, timings), _one_thread(lambda: _fastest(products, cpu), cpu))
    return max(fastest / (repeats * 2 * size ** 3), 1e-15)


def _fastest(run: Callable[[], Any], device: torch.device, repeats: int = TIMINGS) -> float:
    """The fastest of ``repeats`` timings of ``run()`` (:func:`_fastest_of`)."""
    return _fastest_of(lambda: _timed(run, device), repeats)


def _fastest_of(timing: Callable[[], float], repeats: int = TIMINGS, first: float | None = None) -> float:
    """The least of ``repeats`` results of ``timing()`` (``first`` counting as the first where given), fewer once
    they took :data:`CALIBRATION_SECONDS` in all (a large model or a busy machine: a long timing is less disturbed
    by load, and repeating it costs the most)."""
    best = spent = first if first is not None else timing()
    for _ in range(repeats - 1):
        if spent > CALIBRATION_SECONDS:
            break
        latest = timing()
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
