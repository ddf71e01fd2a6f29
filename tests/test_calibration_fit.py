"""The fit of forward timings (mechaudit/calibration_fit.py, pure) and the timing primitives it is measured with
(mechaudit/stopwatch.py). The calibration end to end, on a simulated clock: tests/test_calibration_load.py."""

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
    """A line t(b) = 10 ms + b * 1 ms with one sample waiting 0.5 s: over base 16 the wait cancels out; over base 1
    it would not (the per-sample time falls to its floor, a quarter of the largest batch's average)."""
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


def test_split_call_never_returns_zero_or_a_negative_time() -> None:
    assert split_call({1: 0.0, 32: 0.0}) == (1e-9, 0.0)
    assert split_call({1: 1e-3, 32: 1e-3})[1] == pytest.approx(1e-3 - 1e-3 / 32 / 4)


def test_calibration_size_never_exceeds_the_largest_batch() -> None:
    assert calibration_size(8, {1: 1e-3, 8: 2e-3}) == 8
    assert calibration_size(256, {1: 0.0}) == 256  # a time of zero: the largest batch


def test_on_one_thread_restores_the_threads_however_it_ends() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert on_one_thread(torch.get_num_threads, torch.device("cpu")) == 1
        with pytest.raises(RuntimeError):
            on_one_thread(lambda: (_ for _ in ()).throw(RuntimeError("fails")), torch.device("cpu"))
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
