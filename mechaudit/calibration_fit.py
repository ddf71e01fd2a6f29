"""What forward timings say about the model on this machine: the calibration batch's size, whether the threads
waited on each other, and the split of a call's time into per-sample time and fixed overhead. Pure functions of
``Timings`` (samples -> seconds of the fastest forward pass of that many samples)."""

from __future__ import annotations

import math

#: Samples -> seconds of the fastest forward pass timed with that many samples.
Timings = dict[int, float]

#: Seconds one calibration forward pass should take, at most, where one sample already takes long (a large model):
#: its batch is cut to about this, down to two samples. Also the budget of each series of timings.
CALIBRATION_SECONDS = 2.0
#: The smallest batch from which a call's fixed overhead is told apart from its per-sample time; the calibration
#: batch is sized from batches doubling up to it, never from one sample alone: with more threads than free cores,
#: each parallel operation of a small call may wait a scheduler slice for a descheduled thread (ResNet-18 at 32x32,
#: two threads on two busy cores: 500 ms per one-sample call, against 5 ms on one thread), which the per-sample
#: time of a batch barely shows.
OVERHEAD_SAMPLES = 16


def contended(timings: Timings, alone: Timings | None) -> bool:
    """Whether the threads waited on each other: some batch took over twice (and a millisecond more than) its
    samples times one sample's time on one thread (``alone[1]``; False without it). Each parallel operation may
    wait on a descheduled thread where there are more threads than free cores, and the waits come in bursts."""
    one = (alone or {}).get(1)
    if one is None:
        return False
    return any(seconds > 2 * samples * one + 1e-3 for samples, seconds in timings.items())


def calibration_size(largest: int, timings: Timings) -> int:
    """Samples in the calibration batch: as many as take about :data:`CALIBRATION_SECONDS` at the per-sample time
    of the largest batch timed (steady from a few samples for a large model), at least two and that batch, at most
    ``largest``; ``largest`` without timings."""
    if not timings:
        return largest
    samples = max(timings)
    seconds = timings[samples]
    fitting = int(CALIBRATION_SECONDS * samples / seconds) if seconds > 0 else largest
    return min(largest, max(2, samples, fitting))


def split_call(timings: Timings, alone: Timings | None = None, base: int = 1,
               waited: bool | None = None) -> tuple[float, float]:
    """(seconds per sample-forward, seconds of a call's fixed overhead), fitting ``t(b) = call + b * per_sample`` to
    the timings on torch's threads and, where probed, on one thread (``alone``). ``waited``: whether the threads
    waited on each other (default: :func:`contended`).

    Per sample: what the largest batch adds per sample over ``base`` samples (waits that every call makes cancel
    out), kept between a quarter of that batch's average and a ceiling: the lesser of that average and one thread's
    rate (its largest batch's average). Where the threads waited: the ceiling (what OMP_NUM_THREADS=1 gives).
    Below :data:`OVERHEAD_SAMPLES` samples (a large model: one sample is mostly compute) or without one sample's
    timing: the ceiling, and no call.

    The call: the fastest timing of any batch, or of one sample on one thread, less the per-sample time."""
    alone = alone or {}
    samples = max(timings)
    average = timings[samples] / samples
    one_thread_rate = alone[max(alone)] / max(alone) if alone else math.inf
    ceiling = min(average, one_thread_rate)
    if 1 not in timings or samples < OVERHEAD_SAMPLES:
        return max(ceiling, 1e-9), 0.0
    if waited is None:
        waited = contended(timings, alone)
    if waited:
        per_sample = max(ceiling, 1e-9)
    else:
        added = (timings[samples] - timings[base]) / (samples - base)
        per_sample = max(min(max(added, average / 4), ceiling), 1e-9)
    fastest = min(*timings.values(), alone.get(1, math.inf))
    return per_sample, max(fastest - per_sample, 0.0)
