"""Calibration of the cost model on this machine: the audit's :class:`~mechaudit.cost.Sizes` (each audited
layer's activation size, and when it is ready) and the seconds a sample-forward, a sample-backward, a model call
and a floating-point operation take here (:class:`~mechaudit.cost.Calibration`); the free memory; what every rank
plans from under torchrun. What the forward timings say, and the budgets they are made in
(``CALIBRATION_SECONDS``, ``OVERHEAD_SAMPLES``, read there at each call), is :mod:`mechaudit.calibration_fit`'s part."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import torch

from . import calibration_fit, distributed
from .calibration_fit import Timings, calibration_size, contended, split_call
from .cost import Calibration, LayerSize, Sizes
from .stopwatch import elapsed, fastest_of, least, marker, on_one_thread, sync, timed

__all__ = ["CALIBRATION_SAMPLES", "PROBE_SECONDS", "TIMINGS", "Isolate", "agreed", "available_bytes", "measure"]

T = TypeVar("T")

#: Samples in the calibration batch, at most (the audit's batch size below that): the per-sample time depends on
#: the batch size (on a CPU, digits: 8.5 us per sample-forward in batches of 64, 43 us in batches of 256).
CALIBRATION_SAMPLES = 256
#: Timings whose fastest counts (timeit's practice: a machine's load only ever adds time).
TIMINGS = 3
#: Seconds the one-sample probe on one thread may take in all (a warm-up call and up to :data:`TIMINGS` timings;
#: one sample may take threads times longer there than on all threads); past it, the calibration does without one
#: thread's timings. Not made where one sample on all threads, times the threads, exceeds ten times this: it would
#: be cut, and a single long operation cannot be cut before it ends.
PROBE_SECONDS = 5


class Isolate(Protocol):
    """``isolate(run, seconds)``: ``run()``, or None where it fails or takes over ``seconds`` (default: the
    engine's calibration budget)."""

    def __call__(self, run: Callable[[], T], seconds: float = ..., /) -> T | None: ...


def _unisolated(run: Callable[[], T], seconds: float = 0) -> T | None:
    """``run()``, unguarded."""
    return run()


@dataclass(frozen=True)
class _Forward:
    """Forward passes of the model on the first samples of the audit data."""

    view: Any
    inputs: torch.Tensor
    device: torch.device

    def batch(self, samples: int) -> torch.Tensor:
        """The first ``samples`` samples, on the device."""
        return self.inputs[:samples].to(self.device)

    def call(self, samples: int) -> Callable[[], Any]:
        """A call of the model on ``samples`` samples (moved to the device once, not at each call)."""
        batch = self.batch(samples)
        return lambda: self.view.model(batch)


@dataclass(frozen=True)
class _Probe:
    """Forward timings on torch's threads and on one thread (``alone``: empty where not probed); ``waited``: whether
    the threads waited on each other (:func:`contended` of the two); ``slow``: one sample failed or was cut only after
    :data:`calibration_fit.CALIBRATION_SECONDS` (isolation does not tell the two apart)."""

    timings: Timings
    alone: Timings
    waited: bool = False
    slow: bool = False


@dataclass(frozen=True)
class _HookedPass:
    """A forward pass with every audited layer hooked: the model's output, the share of the pass spent when each
    layer's activation was ready (its first call), its activation values per sample, a heads layer's vector
    width."""

    output: Any
    ready_share: dict[str, float]
    values: dict[str, int]
    widths: dict[str, int]


def measure(context: Any, isolate: Isolate = _unisolated) -> tuple[Sizes, Calibration]:
    """The audit's :class:`Sizes` and this machine's :class:`Calibration`, from forward timings of one sample and
    of batches up to :data:`calibration_fit.OVERHEAD_SAMPLES` (:func:`_probe`), then of a calibration batch sized
    from them (:func:`_calibration_timings`), split into per-sample and per-call time (:func:`split_call`); a hooked
    pass of that batch (:func:`_hooked_pass`); a backward pass (:func:`_backward_time`); timed matrix products.
    Where the threads waited on each other, one thread's timings count (what OMP_NUM_THREADS=1 gives).

    ``isolate`` runs the calls the audit has not made before (one sample; one thread; gradients): the model may do
    there what it never did in the audit's first forward passes (the engine bounds and isolates them like a
    rule). Torch's thread count is restored however this ends (the engine's time-out repeats every second: one
    landing in :func:`on_one_thread`'s own restore would leave one thread)."""
    threads = torch.get_num_threads()
    try:
        forward = _Forward(context.view, context.data.inputs, context.device)
        largest = max(1, min(context.batch_size, len(context.data), CALIBRATION_SAMPLES))
        with torch.no_grad():
            probe = _probe(forward, min(largest, calibration_fit.OVERHEAD_SAMPLES), isolate)
            batch = forward.batch(_calibration_batch_size(largest, probe))
            timings, base = _calibration_timings(forward, probe, batch)
        hooked = _hooked_pass(context.view, batch, context.device, probe.waited)
        forward_seconds, call = split_call(timings, probe.alone, base, probe.waited)
        backward = _backward_time(context, batch, probe.waited, threads, isolate)
        calibration = Calibration(forward_seconds, backward if backward is not None else 2 * forward_seconds,
                                  _flop_seconds(1 if probe.waited else TIMINGS), call, backward is not None,
                                  threads, probe.waited)
        return _sizes(context, hooked), calibration
    finally:
        if torch.get_num_threads() != threads:  # only where changed (setting the count may clear oneDNN's cache)
            torch.set_num_threads(threads)


def _probe(forward: _Forward, cap: int, isolate: Isolate) -> _Probe:
    """Forward timings of one sample on torch's threads and on one thread (:func:`_one_sample_alone`), each after
    an untimed warm-up call (one-time work, such as compiling, oneDNN's primitives or lazy initialisation, is not
    load); then of batches doubling up to ``cap`` on torch's threads, unless one sample showed them waiting, with
    a second timing of those that seem to wait (:func:`_rechecked`); and where the threads waited, of the same
    batches on one thread, isolated (where that fails, one thread's rate is one sample's, call included: an upper
    bound)."""
    started = time.perf_counter()
    single = isolate(lambda: _warmed_fastest(forward.call(1), forward.device))
    if single is None:
        return _Probe({}, {}, slow=time.perf_counter() - started >= calibration_fit.CALIBRATION_SECONDS)
    alone = _one_sample_alone(forward, single, isolate)
    timings = {1: single}
    if not contended(timings, alone):  # batches on torch's threads
        timings = _rechecked(_doubling(forward, cap, single), alone, forward)
    if contended(timings, alone):  # the same batches on one thread, whose rate counts
        doubled = isolate(lambda: on_one_thread(lambda: _doubling(forward, cap, alone[1]), forward.device,
                                                warm_up=forward.call(1)))
        alone = doubled or alone
    return _Probe(timings, alone, waited=contended(timings, alone))


def _one_sample_alone(forward: _Forward, single: float, isolate: Isolate) -> Timings:
    """``{1: seconds}`` of one sample on one thread, isolated within :data:`PROBE_SECONDS`; empty where it fails,
    is cut, or would surely be cut (``single``, its time on torch's threads, times the threads exceeds ten times
    that budget)."""
    if single * torch.get_num_threads() > 10 * PROBE_SECONDS:
        return {}
    one = isolate(lambda: on_one_thread(lambda: _warmed_fastest(forward.call(1), forward.device), forward.device),
                  PROBE_SECONDS)
    return {} if one is None else {1: one}


def _doubling(forward: _Forward, cap: int, single: float) -> Timings:
    """Timings of 1 (``single``), 2, 4, ... samples up to ``cap`` (one each; the fastest of :data:`TIMINGS` for
    ``cap``, which bounds the rest), stopping once they took :data:`calibration_fit.CALIBRATION_SECONDS` in all (a
    large model)."""
    timings = {1: single}
    size, spent = 1, single
    while size < cap and spent <= calibration_fit.CALIBRATION_SECONDS:
        size = min(2 * size, cap)
        timings[size] = (_fastest if size == cap else timed)(forward.call(size), forward.device)
        spent += timings[size]
    return timings


def _rechecked(timings: Timings, alone: Timings, forward: _Forward) -> Timings:
    """``timings`` with each batch that seems to have waited (:func:`contended`) timed once more, the fastest
    counting, up to the first that still waits: a new shape's first call is cold (oneDNN creates its primitives:
    a small network's first two-sample call took 1.3 ms, 0.15 ms warm, against a threshold of 1.24 ms)."""
    for samples in sorted(timings):
        if contended({samples: timings[samples]}, alone):
            timings[samples] = min(timings[samples], timed(forward.call(samples), forward.device))
            if contended({samples: timings[samples]}, alone):
                break
    return timings


def _calibration_batch_size(largest: int, probe: _Probe) -> int:
    """:func:`calibration_size` from one thread's timings where the threads waited, else from torch's; where one
    sample failed only after long, the fewest samples (the calibration batch's calls are not isolated)."""
    if probe.slow:
        return min(largest, 2)
    return calibration_size(largest, probe.alone if probe.waited else probe.timings)


def _calibration_timings(forward: _Forward, probe: _Probe, batch: torch.Tensor) -> tuple[Timings, int]:
    """The probe's timings with the calibration batch's, and the base :func:`split_call` compares it with:
    :data:`calibration_fit.OVERHEAD_SAMPLES`, timed, where the threads did not wait and the batch holds twice that;
    else one sample. Where the threads waited, each call waits long: one timing."""
    timings = dict(probe.timings)
    _fastest_into(timings, len(batch), lambda: forward.view.model(batch), forward.device,
                  1 if probe.waited else TIMINGS)
    base = 1
    if not probe.waited and len(batch) >= 2 * calibration_fit.OVERHEAD_SAMPLES and 1 in timings:
        base = calibration_fit.OVERHEAD_SAMPLES
        _fastest_into(timings, base, forward.call(base), forward.device)
    return timings, base


def _fastest_into(timings: Timings, samples: int, run: Callable[[], Any], device: torch.device,
                  repeats: int = TIMINGS) -> None:
    """``timings[samples]``: the fastest of its timing so far and :func:`_fastest`'s."""
    timings[samples] = min(timings.get(samples, math.inf), _fastest(run, device, repeats))


def _fastest(run: Callable[[], Any], device: torch.device, repeats: int = TIMINGS) -> float:
    """The fastest of ``repeats`` timings of ``run()``, fewer once they took
    :data:`calibration_fit.CALIBRATION_SECONDS`."""
    return fastest_of(lambda: timed(run, device), repeats, calibration_fit.CALIBRATION_SECONDS)


def _warmed_fastest(run: Callable[[], Any], device: torch.device) -> float:
    """:func:`_fastest` of ``run()`` after one untimed call of it."""
    run()
    return _fastest(run, device)


def _hooked_pass(view: Any, batch: torch.Tensor, device: torch.device, waited: bool) -> _HookedPass:
    """:func:`_readiness` of ``batch``, on one thread where the threads waited, after a warm-up call there (setting
    the thread count makes the next call cold). Only the measured (last) pass counts, for the sizes as for the
    shares; the warm-up's records are dropped (the two differ only where the model's layers depend on the data)."""
    def run() -> _HookedPass:
        with torch.no_grad():
            return _readiness(view, batch, device)
    return (on_one_thread(run, device, warm_up=run) if waited else None) or run()


def _readiness(view: Any, batch: torch.Tensor, device: torch.device) -> _HookedPass:
    """One forward pass of ``batch`` with every audited layer hooked (apart from the timed passes, which hooks would
    slow: heads hooks re-run attention). On CUDA the hooks record events instead of waiting for the GPU."""
    from .model_view import installed, units_view

    mark = marker(device)
    reached: dict[str, Any] = {}
    values: dict[str, int] = {}
    widths: dict[str, int] = {}

    def record(layer):
        def hook(activation, _args):
            if layer.name not in reached:
                reached[layer.name] = mark()
            values[layer.name] = int(units_view(activation, layer)[0].numel())
            if layer.kind == "heads":  # an activation vector is the heads' concatenated outputs at one token
                widths[layer.name] = int(activation.shape[-1])
        return hook
    with installed(view.hook(layer, record(layer)) for layer in view.layers):
        sync(device)
        start = mark()
        output = view.model(batch)
        end = mark()
        sync(device)
    seconds = elapsed(start, end)
    shares = {name: min(1.0, max(0.0, elapsed(start, at) / seconds)) for name, at in reached.items()} \
        if seconds > 0 else {}
    return _HookedPass(output, shares, values, widths)


def _sizes(context: Any, hooked: _HookedPass) -> Sizes:
    """The audit's :class:`Sizes`: its data and batches, and each layer's size as the hooked pass saw it."""
    data, output = context.data, hooked.output
    layers = tuple(LayerSize(layer.name, layer.kind, layer.size, hooked.values.get(layer.name, layer.size),
                             not layer.is_output, hooked.ready_share.get(layer.name), hooked.widths.get(layer.name, 0))
                   for layer in context.view.layers)
    return Sizes(len(data), context.max_samples, context.batch_size, layers, int(data.inputs[0].numel()),
                 int(output[0].numel()) if isinstance(output, torch.Tensor) else 0, len(data.masks),
                 context.behaviour.kind if context.behaviour is not None else "",
                 len(data.pairs[0]) if data.pairs is not None else 0)


def _backward_time(context: Any, batch: torch.Tensor, waited: bool, threads: int,
                   isolate: Isolate) -> float | None:
    """Seconds per sample-backward (:func:`_backward_seconds`), isolated, on torch's ``threads`` unless they
    waited; on one CPU thread too, the least counting, where they waited or where it is quick even at ``threads``
    times longer; None where none could be timed."""
    def backward_seconds() -> float | None:
        return _backward_seconds(context, batch)
    seconds = None if waited else isolate(backward_seconds)
    quick = seconds is not None and seconds * len(batch) * threads <= calibration_fit.CALIBRATION_SECONDS
    if context.device.type == "cpu" and (waited or quick):
        seconds = least(seconds, isolate(lambda: on_one_thread(backward_seconds, context.device)))
    return seconds


def _backward_seconds(context: Any, batch: torch.Tensor) -> float | None:
    """Seconds per sample of a backward pass: the gradient of the summed outputs with respect to float inputs, or
    where they do not reach the outputs (token ids stored as floats), to the first audited activation; None where
    there is nothing to differentiate. The fastest of up to :data:`TIMINGS`, as for the forward passes."""
    # what the gradient is taken with respect to: the inputs (True) where float, then the first audited activation
    targets = ([True] if batch.is_floating_point() else []) + ([False] if context.view.layers else [])
    for to_inputs in targets:
        first = _gradient_seconds(context, batch, to_inputs)
        if first is not None:
            seconds = fastest_of(lambda: _gradient_seconds(context, batch, to_inputs) or math.inf, TIMINGS,
                                 calibration_fit.CALIBRATION_SECONDS, first=first)
            return max(seconds / len(batch), 1e-9)
    return None


def _gradient_seconds(context: Any, batch: torch.Tensor, to_inputs: bool) -> float | None:
    """Seconds of one backward pass of ``batch`` to its inputs or to the first audited activation, or None when
    that leaf does not reach the outputs."""
    from .model_view import installed

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
    try:
        with torch.enable_grad(), installed([] if to_inputs else [view.hook(view.layers[0], leaf)]):
            output = view.model(batch)
        if not isinstance(output, torch.Tensor) or not output.is_floating_point() or not leaves:
            return None
        total = output.float().sum()
        if not total.requires_grad:
            return None
        grads: list = []
        seconds = timed(lambda: grads.extend(torch.autograd.grad(total, leaves, allow_unused=True)), context.device)
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
    fastest = least(_fastest(products, cpu, timings), on_one_thread(lambda: _fastest(products, cpu), cpu))
    return max(fastest / (repeats * 2 * size ** 3), 1e-15)


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
    lowest = distributed.reduce(torch.tensor([memory, float(calibration.backward_measured),
                                              float(not calibration.contended)], dtype=torch.float64), "min").tolist()
    measured = distributed.reduce(torch.tensor([float(layer.at is not None) for layer in sizes.layers],
                                               dtype=torch.float64), "min").tolist()
    total = distributed.reduce(torch.tensor([layer.at or 0.0 for layer in sizes.layers],
                                            dtype=torch.float64)).tolist()
    layers = tuple(replace(layer, at=total[i] / distributed.world_size() if measured[i] else None)
                   for i, layer in enumerate(sizes.layers))
    calibration = replace(calibration, forward_seconds=slowest[0], backward_seconds=slowest[1],
                          flop_seconds=slowest[2], call_seconds=slowest[3], backward_measured=bool(lowest[1]),
                          contended=not lowest[2])
    return replace(sizes, layers=layers), calibration, int(lowest[0])


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
