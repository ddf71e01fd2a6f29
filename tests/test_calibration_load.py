"""The calibration under CPU load (mechaudit/calibration.py): with more threads than free cores, each parallel
operation of a call may wait a scheduler slice for a descheduled thread, which costs a one-sample call as much as
a large batch (ResNet-18 at 32x32 on two busy cores: 500 ms per one-sample call against 5 ms on one thread).
Timed on a simulated clock that the model advances, never on the real one (no timing assertions)."""

import pytest
import torch

import mechaudit
from mechaudit import calibration, engine
from mechaudit.calibration import OVERHEAD_SAMPLES, calibration_size, contended, split_call

#: The simulated model: each call's fixed overhead, each sample's time, and the wait every call with more than
#: one thread makes while the machine is loaded (the same for any batch size).
CALL, PER_SAMPLE, WAIT = 2e-3, 5e-4, 0.5


class SimulatedClock:
    """A ``time.perf_counter`` that only the model moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedModel(torch.nn.Module):
    """A small MLP whose calls advance ``clock`` by ``call + samples * per_sample``, plus ``wait`` when torch runs
    more than one thread."""

    def __init__(self, clock: SimulatedClock, per_sample: float = PER_SAMPLE, wait: float = 0.0) -> None:
        super().__init__()
        self.clock, self.per_sample, self.wait = clock, per_sample, wait
        self.fc1, self.act, self.fc2 = torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += CALL + len(x) * self.per_sample + (self.wait if torch.get_num_threads() > 1 else 0.0)
        return self.fc2(self.act(self.fc1(x)))


def calibrated(monkeypatch: pytest.MonkeyPatch, per_sample: float = PER_SAMPLE, wait: float = 0.0):
    """The calibration the audit of a :class:`TimedModel` measures, with two torch threads, on its clock."""
    clock, seen = SimulatedClock(), []
    real = calibration.measure

    def measure(context, isolate):
        with pytest.MonkeyPatch.context() as simulated:
            simulated.setattr(calibration.time, "perf_counter", clock)
            seen.append(real(context, isolate))
        return seen[-1]
    monkeypatch.setattr(engine, "measure", measure)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # on any machine: the simulated wait needs more than one thread
    try:
        mechaudit.audit(TimedModel(clock, per_sample, wait), torch.randn(256, 4),
                        labels=torch.randint(0, 2, (256,)), select=["D101"], rule_timeout=0, layers=["fc1", "fc2"])
    finally:
        torch.set_num_threads(threads)
    return seen[0][1]


def test_waiting_threads_inflate_neither_the_per_sample_time_nor_the_call(monkeypatch) -> None:
    """Every call waits 0.5 s: one sample seems to take 0.5 s, which used to cut the calibration batch to four
    samples and become the per-sample time (0.17 s, 340 times the model's). The batch is sized from batches of up
    to OVERHEAD_SAMPLES on one thread, the per-sample time is what a large batch adds over OVERHEAD_SAMPLES (the
    wait cancels), the call is one sample's time on one thread, and the plan says the threads waited."""
    measured = calibrated(monkeypatch, wait=WAIT)
    assert measured.forward_seconds == pytest.approx(PER_SAMPLE, rel=0.01)
    assert measured.call_seconds == pytest.approx(CALL, rel=0.01)
    assert measured.contended and measured.threads == 2


def test_an_unloaded_machine_is_calibrated_to_the_model_and_not_called_contended(monkeypatch) -> None:
    """The control: no wait, the same model: the same per-sample and call times, and no note."""
    measured = calibrated(monkeypatch)
    assert measured.forward_seconds == pytest.approx(PER_SAMPLE, rel=0.01)
    assert measured.call_seconds == pytest.approx(CALL, rel=0.01)
    assert not measured.contended


def test_a_large_model_is_calibrated_on_a_few_samples(monkeypatch) -> None:
    """One sample takes 0.6 s: batches double only until one takes over CALIBRATION_SECONDS (4 samples), and all
    of the batch's time counts per sample (the call's overhead is noise beside it)."""
    measured = calibrated(monkeypatch, per_sample=0.6)
    assert measured.forward_seconds == pytest.approx(0.6 + CALL / 4)
    assert measured.call_seconds == 0.0


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
    for 16, measured on one thread), one thread's average in 16 samples shared by the two threads, and the call
    under one thread's time for one sample. Where the waits varied, at most one thread's average."""
    timings = {1: 1.020, 2: 1.475, 4: 1.616, 8: 1.608, 16: 0.757, 42: 0.588}
    forward, call = split_call(timings, threads=2)
    assert forward == pytest.approx(0.588 / 42 / 4) and call <= 0.588
    alone = {1: 0.0050, 16: 0.0122}
    forward, call = split_call(timings, alone, threads=2)
    assert forward == pytest.approx(0.0122 / 16 / 2)
    assert call == pytest.approx(0.0050 - forward)
    assert contended(timings, alone)
    noisy = {1: 1.0, 16: 1.0, 128: 2.5}  # the waits varied: 112 samples seem to add 13 ms each
    assert split_call(noisy, alone, threads=2)[0] == pytest.approx(0.0122 / 16)
    assert not contended(timings, {}) and not contended({1: 0.005}, {1: 0.004})


def test_split_call_fits_a_line_through_steady_timings() -> None:
    """t(b) = call + b * per_sample exactly: both recovered; below OVERHEAD_SAMPLES all of it per sample."""
    line = {b: 0.01 + b * 1e-3 for b in (1, 2, 4, 8, OVERHEAD_SAMPLES, 128)}
    assert split_call(line) == pytest.approx((1e-3, 0.01))
    assert split_call({1: 2.5, 2: 5.0}) == (2.5, 0.0)
    assert split_call({8: 1.0}) == (1.0 / 8, 0.0)  # one sample failed


def test_the_plan_says_when_the_threads_waited() -> None:
    from mechaudit.cost import Calibration
    from mechaudit.planning import Plan

    waited, calm = (Plan(Calibration(1e-3, 2e-3, 1e-10, 1e-3, True, 2, contended), 0, 2**30, []).lines()[0]
                    for contended in (True, False))
    assert "threads waited on each other" in waited and "OMP_NUM_THREADS=1" in waited
    assert "waited" not in calm
