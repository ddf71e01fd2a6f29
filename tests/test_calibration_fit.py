"""The fit of forward timings (mechaudit/calibration_fit.py, pure) and the timing primitives it is measured with
(mechaudit/stopwatch.py). The calibration end to end, on a simulated clock: tests/test_calibration_load.py."""

from collections.abc import Callable

import pytest
import torch

from mechaudit.calibration_fit import OVERHEAD_SAMPLES, calibration_size, contended, split_call
from mechaudit.stopwatch import fastest_of, least, on_one_thread


def test_contended_is_over_twice_one_threads_time_and_a_millisecond() -> None:
    """Threshold of a batch of 4 at 1 ms per sample alone: 2 * 4 * 1 ms + 1 ms = 9 ms; a burst in any batch
    counts; without one sample on one thread, nothing is contended."""
    alone = {1: 1e-3}
    assert not contended({1: 1e-3, 4: 8.9e-3}, alone)
    assert contended({1: 1e-3, 4: 9.1e-3}, alone)
    assert contended({1: 1e-3, 2: 1e-3, 16: 1.0}, alone)  # only the largest batch waited
    assert not contended({4: 1.0}, None) and not contended({4: 1.0}, {16: 1e-3})


def test_split_call_compares_the_largest_batch_with_its_base() -> None:
    """A line t(b) = 10 ms + b * 1 ms where only the one-sample call waited 0.5 s: compared with base 16, which did
    not wait, the largest batch gives the line's slope; compared with one sample, it would seem to add less than
    nothing (the per-sample time falls to its floor, a quarter of the largest batch's average)."""
    timings = {1: 0.511, OVERHEAD_SAMPLES: 0.01 + OVERHEAD_SAMPLES * 1e-3, 128: 0.01 + 128 * 1e-3}
    per_sample, call = split_call(timings, base=OVERHEAD_SAMPLES)
    assert per_sample == pytest.approx(1e-3) and call == pytest.approx(0.01 + OVERHEAD_SAMPLES * 1e-3 - 1e-3)
    assert split_call(timings, base=1)[0] == pytest.approx(timings[128] / 128 / 4)


def test_split_call_where_the_threads_waited_counts_the_ceiling() -> None:
    """``waited`` given: the per-sample time is the lesser of the largest batch's average and one thread's rate,
    whatever the timings' own contention says; the call is the fastest timing less it."""
    timings, alone = {1: 0.008, 32: 0.064}, {1: 0.004, 32: 0.128}
    assert not contended(timings, alone)
    per_sample, call = split_call(timings, alone, waited=True)
    assert per_sample == pytest.approx(0.064 / 32) and call == pytest.approx(0.004 - 0.064 / 32)
    assert split_call(timings, alone, waited=False)[0] == pytest.approx((0.064 - 0.008) / 31)


def test_split_call_caps_the_per_sample_time_at_one_threads_rate() -> None:
    """The audit's threads average 2 ms per sample and add 1.9 ms per sample over one, one thread averages 1 ms in
    32 samples (its largest batch): the ceiling is one thread's rate, whether the threads waited or not (they did
    not: 4 ms for one sample is under 2 * 3 ms + 1 ms); the call is one thread's one sample less that rate."""
    timings, alone = {1: 0.004, 32: 0.064}, {1: 0.003, 32: 0.032}
    assert not contended(timings, alone)
    for waited in (None, False, True):
        per_sample, call = split_call(timings, alone, waited=waited)
        assert per_sample == pytest.approx(0.032 / 32) and call == pytest.approx(0.003 - 0.032 / 32)
    assert split_call(timings)[0] == pytest.approx((0.064 - 0.004) / 31)  # the control: without one thread's rate


def test_split_call_never_returns_zero_or_a_negative_time() -> None:
    assert split_call({1: 0.0, 32: 0.0}) == (1e-9, 0.0)
    assert split_call({1: 1e-3, 32: 1e-3})[1] == pytest.approx(1e-3 - 1e-3 / 32 / 4)


def test_calibration_size_never_exceeds_the_largest_batch() -> None:
    assert calibration_size(8, {1: 1e-3, 8: 2e-3}) == 8
    assert calibration_size(256, {1: 0.0}) == 256  # a time of zero: the largest batch


def test_the_calibration_batch_follows_the_largest_batch_timed() -> None:
    assert calibration_size(256, {1: 0.5, 2: 0.5, 4: 0.5, 8: 0.5, 16: 0.5}) == 64  # 2 s at 16 samples per 0.5 s
    assert calibration_size(256, {1: 1e-3, 16: 1e-2}) == 256  # a fast model: the largest batch
    assert calibration_size(256, {1: 3.0}) == 2  # one sample over CALIBRATION_SECONDS: two samples
    assert calibration_size(1, {1: 3.0}) == 1  # a single sample of data
    assert calibration_size(100, {}) == 100  # one sample failed: the largest batch


def test_split_call_on_timings_measured_under_load() -> None:
    """Timings of ResNet-18 at 32x32, two threads on two loaded cores (seconds; one sample slower than 42): 42
    samples add nothing measurable over 16. Without one thread's timings the per-sample time is a quarter of the
    batch's average, and the call under the fastest timing of any batch; with them (5.0 ms for one sample, 12.2 ms
    for 16, measured on one thread), one thread's average in 16 samples (what OMP_NUM_THREADS=1 gives), and the
    call one thread's time for one sample less that."""
    timings = {1: 1.020, 2: 1.475, 4: 1.616, 8: 1.608, 16: 0.757, 42: 0.588}
    forward, call = split_call(timings, base=16)
    assert forward == pytest.approx(0.588 / 42 / 4) and call <= 0.588
    alone = {1: 0.0050, 16: 0.0122}
    forward, call = split_call(timings, alone, base=16)
    assert forward == pytest.approx(0.0122 / 16)
    assert call == pytest.approx(0.0050 - forward)
    assert contended(timings, alone)
    noisy = {1: 1.0, 16: 1.0, 128: 2.5}  # the waits varied: 112 samples seem to add 13 ms each
    assert split_call(noisy, alone, base=16)[0] == pytest.approx(0.0122 / 16)
    assert split_call({1: 0.5, 8: 0.506}, {1: 0.003, 8: 0.01}) == (pytest.approx(0.01 / 8), 0.0)  # a small batch
    assert not contended(timings, {}) and not contended({1: 0.005}, {1: 0.004})


def test_split_call_fits_a_line_through_steady_timings() -> None:
    """t(b) = call + b * per_sample exactly: both recovered; below OVERHEAD_SAMPLES all of it per sample."""
    line = {b: 0.01 + b * 1e-3 for b in (1, 2, 4, 8, OVERHEAD_SAMPLES, 128)}
    assert split_call(line, base=OVERHEAD_SAMPLES) == pytest.approx((1e-3, 0.01))
    assert split_call({1: 2.5, 2: 5.0}) == (2.5, 0.0)
    assert split_call({8: 1.0}) == (1.0 / 8, 0.0)  # one sample failed


class Expired(BaseException):
    """Like the engine's ``RuleTimeout``: a ``BaseException``, which no ``except Exception`` catches."""


def raising(error: BaseException) -> Callable[[], None]:
    """A call that raises ``error``."""
    def run() -> None:
        raise error
    return run


def test_on_one_thread_restores_the_threads_however_it_ends() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert on_one_thread(torch.get_num_threads, torch.device("cpu")) == 1
        for error in (RuntimeError("fails"), Expired("a time-out")):
            with pytest.raises(type(error)):
                on_one_thread(raising(error), torch.device("cpu"))
            assert torch.get_num_threads() == 2
        assert on_one_thread(torch.get_num_threads, torch.device("meta")) is None  # not a CPU
        torch.set_num_threads(1)
        assert on_one_thread(torch.get_num_threads, torch.device("cpu")) is None  # one thread already
    finally:
        torch.set_num_threads(threads)


def test_fastest_of_stops_repeating_past_its_budget() -> None:
    seconds = iter([3.0, 1.0, 2.0])
    assert fastest_of(lambda: next(seconds), repeats=3, budget=5.0) == 1.0
    seconds = iter([6.0, 1.0])
    assert fastest_of(lambda: next(seconds), repeats=3, budget=5.0) == 6.0  # one timing over the budget
    assert fastest_of(lambda: 4.0, repeats=3, budget=5.0, first=0.5) == 0.5
    assert least(None, 2.0, 1.0) == 1.0 and least(None) is None
