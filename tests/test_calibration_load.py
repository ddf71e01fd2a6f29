"""The calibration under CPU load (mechaudit/calibration.py): with more threads than free cores, each parallel
operation of a call may wait a scheduler slice for a descheduled thread, which costs a one-sample call as much as
a large batch (ResNet-18 at 32x32 on two busy cores: 500 ms per one-sample call against 5 ms on one thread).
Timed on a simulated clock that the model advances, never on the real one (no timing assertions)."""

import time

import pytest
import torch

import mechaudit
from mechaudit import calibration, engine
from mechaudit.calibration_fit import OVERHEAD_SAMPLES

#: The simulated model: each call's fixed overhead, each sample's time on :data:`THREADS` threads (twice that on
#: one), and the wait every call with more than one thread makes while the machine is loaded (the same for any
#: batch size).
CALL, PER_SAMPLE, WAIT = 2e-3, 5e-4, 0.5
#: The torch threads the simulated audits run with.
THREADS = 2


class SimulatedClock:
    """A ``time.perf_counter`` that only the model moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedModel(torch.nn.Module):
    """A small MLP whose forward passes advance ``clock`` by ``call + samples * per_sample * THREADS / threads`` (a
    perfect speed-up) and whose backward passes by ``samples * backward * THREADS / threads``, each plus ``wait``
    when torch runs more than one thread; the first call the calibration makes takes ``first`` more (one-time
    work, set by :func:`calibrated`); where not ``single_waits``, one sample does not wait; the first call of each
    batch size of more than one sample on the audit's threads takes ``cold`` more (oneDNN's primitives for a new
    shape). It records each call (samples, threads, under gradients) in ``calls``, fails on one thread where
    ``fails_alone`` and sleeps there ``alone_sleep`` seconds, really, without gradients; where
    ``single_fails_after`` is set, one sample takes that many seconds and then fails."""

    def __init__(self, clock: SimulatedClock, per_sample: float = PER_SAMPLE, wait: float = 0.0,
                 backward: float = 0.0, fails_alone: bool = False, alone_sleep: float = 0.0,
                 single_waits: bool = True, cold: float = 0.0, single_fails_after: float | None = None) -> None:
        super().__init__()
        self.clock, self.per_sample, self.wait, self.backward = clock, per_sample, wait, backward
        self.alone_sleep, self.single_waits, self.cold, self.shapes = alone_sleep, single_waits, cold, set()
        self.first, self.fails_alone, self.calls = 0.0, fails_alone, []
        self.single_fails_after, self.calibrating = single_fails_after, False
        self.fc1, self.act, self.fc2 = torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)

    def tick(self, samples: int, per_sample: float, call: float = 0.0) -> None:
        threads = torch.get_num_threads()
        waits = threads > 1 and (samples > 1 or self.single_waits)
        self.clock.now += call + samples * per_sample * THREADS / threads + (self.wait if waits else 0.0)
        self.clock.now, self.first = self.clock.now + self.first, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fails_alone and torch.get_num_threads() == 1:
            raise RuntimeError("simulated: fails on one thread")
        self.calls.append((len(x), torch.get_num_threads(), torch.is_grad_enabled()))
        if self.calibrating and self.single_fails_after is not None and len(x) == 1:
            self.clock.now += self.single_fails_after
            raise RuntimeError("simulated: one sample fails")
        if self.calibrating and len(x) > 1 and torch.get_num_threads() == THREADS and len(x) not in self.shapes:
            self.shapes.add(len(x))
            self.clock.now += self.cold
        if self.alone_sleep and torch.get_num_threads() == 1 and not torch.is_grad_enabled():
            time.sleep(self.alone_sleep)
        self.tick(len(x), self.per_sample, CALL)
        return TimedBackward.apply(self.fc2(self.act(self.fc1(x))), self)


class TimedBackward(torch.autograd.Function):
    """The identity, whose backward pass advances the model's clock."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, model: TimedModel) -> torch.Tensor:
        ctx.model = model
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.model.tick(len(grad), ctx.model.backward)
        return grad, None


def calibrated(monkeypatch: pytest.MonkeyPatch, batch_size: int = 256, first: float = 0.0, samples: int = 256,
               **simulated):
    """The calibration the audit of ``samples`` samples by a :class:`TimedModel` (``simulated``: its arguments)
    measures, with :data:`THREADS` torch threads, on its clock, the first call of the calibration taking ``first``
    more; and the model, whose ``calls`` are the calibration's (and ``threads_after``: torch's threads after the
    calibration)."""
    clock, seen = SimulatedClock(), []
    real = calibration.measure
    model = TimedModel(clock, **simulated)
    calibration_calls: list = []

    def measure(context, isolate):
        model.shapes.clear()
        model.calls.clear()  # the audit's first forward passes, before the calibration
        model.first, model.calibrating = first, True
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(calibration.time, "perf_counter", clock)
            seen.append(real(context, isolate))
        model.threads_after = torch.get_num_threads()
        calibration_calls.extend(model.calls)
        model.calibrating = False
        return seen[-1]
    monkeypatch.setattr(engine, "measure", measure)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # on any machine: the simulated wait needs more than one thread
    try:
        mechaudit.audit(model, torch.randn(samples, 4), labels=torch.randint(0, 2, (samples,)), select=["D101"],
                        rule_timeout=0, layers=["fc1", "fc2"], batch_size=batch_size)
    finally:
        torch.set_num_threads(threads)
    model.calls = calibration_calls
    return seen[0][1], model


def test_waiting_threads_inflate_neither_the_per_sample_time_nor_the_call(monkeypatch) -> None:
    """Every call waits 0.5 s: one sample seems to take 0.5 s, which used to cut the calibration batch to four
    samples and become the per-sample time (0.17 s, 340 times the model's). The batch is sized from batches of up
    to OVERHEAD_SAMPLES on one thread, the per-sample time is one thread's rate (what OMP_NUM_THREADS=1 gives,
    not the wait), the call is one sample's time on one thread less that, and the plan says the threads waited."""
    measured, _ = calibrated(monkeypatch, wait=WAIT)
    alone = (CALL + OVERHEAD_SAMPLES * PER_SAMPLE * THREADS) / OVERHEAD_SAMPLES
    assert measured.forward_seconds == pytest.approx(alone)
    assert measured.call_seconds == pytest.approx(CALL + PER_SAMPLE * THREADS - alone)
    assert measured.contended and measured.threads == THREADS


def test_a_small_batch_under_load_counts_one_threads_rate_not_the_wait(monkeypatch) -> None:
    """Batches of 8 (under OVERHEAD_SAMPLES: all of the batch counts per sample) with every call waiting 0.5 s:
    the per-sample time is one thread's rate in 8 samples (1.25 ms), not the waiting batch's (63 ms)."""
    measured, _ = calibrated(monkeypatch, batch_size=8, wait=WAIT)
    assert measured.forward_seconds == pytest.approx((CALL + 8 * PER_SAMPLE * THREADS) / 8)
    assert measured.contended


def test_an_unloaded_machine_is_calibrated_to_the_model_and_not_called_contended(monkeypatch) -> None:
    """The control: no wait, the same model: the per-sample and call times on the audit's threads, and no note."""
    measured, _ = calibrated(monkeypatch)
    assert measured.forward_seconds == pytest.approx(PER_SAMPLE, rel=0.01)
    assert measured.call_seconds == pytest.approx(CALL, rel=0.01)
    assert not measured.contended


def test_an_unloaded_machine_sizes_the_batch_from_the_audits_threads(monkeypatch) -> None:
    """50 ms per sample on two threads, 100 ms on one, nothing waiting: the calibration batch takes about
    CALIBRATION_SECONDS on two threads (39 samples, not 19 as one thread's rate would give)."""
    measured, model = calibrated(monkeypatch, per_sample=0.05)
    assert max(samples for samples, threads, _ in model.calls if threads == THREADS) == 39
    assert measured.forward_seconds == pytest.approx(0.05) and measured.call_seconds == pytest.approx(CALL)


def test_one_time_work_in_the_first_call_is_not_taken_for_waiting_threads(monkeypatch) -> None:
    """The first call takes 3 s more (compiling): an untimed warm-up call, so one sample is not seen to take 3 s
    on two threads against 3 ms on one."""
    measured, _ = calibrated(monkeypatch, first=3.0)
    assert not measured.contended
    assert measured.forward_seconds == pytest.approx(PER_SAMPLE, rel=0.01)


def test_a_slow_one_thread_probe_is_cut_at_its_budget(monkeypatch) -> None:
    """One sample on one thread outlasts PROBE_SECONDS (here 1 s; the model sleeps 5 s, really): the probe is cut
    there, torch's threads are restored, and the calibration does without one thread's timings."""
    monkeypatch.setattr(calibration, "PROBE_SECONDS", 1)
    measured, model = calibrated(monkeypatch, alone_sleep=5.0)
    assert [call for call in model.calls if call[1] == 1 and not call[2]] == [(1, 1, False)]  # cut in the warm-up
    cut = model.calls.index((1, 1, False))
    assert all(threads == THREADS for _, threads, grad in model.calls[cut + 1:] if not grad)
    assert model.threads_after == THREADS
    assert measured.forward_seconds == pytest.approx(PER_SAMPLE, rel=0.01) and not measured.contended


def test_a_one_thread_probe_sure_to_be_cut_is_not_made(monkeypatch) -> None:
    """One sample takes 3 s on two threads: on one it may take 6 s, past ten times PROBE_SECONDS (here 0.5 s):
    no one-thread call without gradients is made."""
    monkeypatch.setattr(calibration, "PROBE_SECONDS", 0.5)
    measured, model = calibrated(monkeypatch, per_sample=3.0)
    assert not any(threads == 1 and not grad for _, threads, grad in model.calls)
    assert not measured.contended


def test_a_cold_first_call_of_a_batch_is_not_taken_for_waiting_threads(monkeypatch) -> None:
    """Each batch size's first call takes 20 ms more (oneDNN's primitives for a new shape; the two-sample batch's
    threshold is 13 ms): timed once more, warm, nothing waited. The control: every call waits 20 ms: contended."""
    measured, _ = calibrated(monkeypatch, cold=0.02)
    assert not measured.contended
    assert measured.forward_seconds == pytest.approx(PER_SAMPLE, rel=0.01)
    measured, _ = calibrated(monkeypatch, wait=0.02, single_waits=False)
    assert measured.contended


def test_a_slow_failing_sample_calibrates_on_two_samples(monkeypatch) -> None:
    """One sample takes 61 s and then fails (as if cut at the calibration's budget): the calibration batch is two
    samples, not the largest batch (256, unisolated: it could outlast the rule time-out). The control: one sample
    fails at once: the largest batch."""
    _, model = calibrated(monkeypatch, single_fails_after=61.0)
    assert max(samples for samples, _, _ in model.calls) == 2
    _, model = calibrated(monkeypatch, single_fails_after=0.0)
    assert max(samples for samples, _, _ in model.calls) == 256


@pytest.mark.parametrize("batch_size, samples", [(1, 256), (256, 10)])
def test_small_batches_and_little_data_are_calibrated_end_to_end(monkeypatch, batch_size, samples) -> None:
    """Batches of one sample, and ten samples of data (under OVERHEAD_SAMPLES): all of the batch counts per
    sample."""
    size = min(batch_size, samples)
    measured, model = calibrated(monkeypatch, batch_size=batch_size, samples=samples)
    assert max(calls for calls, _, _ in model.calls) == size
    assert measured.forward_seconds == pytest.approx(PER_SAMPLE + CALL / size)
    assert measured.call_seconds == 0.0 and not measured.contended


def test_waits_seen_only_in_larger_batches_still_count(monkeypatch) -> None:
    """The waits come in bursts: one sample ran without one, the batches of 2 to 16 waited 0.5 s each. The batches
    are then timed on one thread, whose rate counts."""
    measured, _ = calibrated(monkeypatch, wait=WAIT, single_waits=False)
    assert measured.contended
    assert measured.forward_seconds == pytest.approx((CALL + OVERHEAD_SAMPLES * PER_SAMPLE * THREADS)
                                                     / OVERHEAD_SAMPLES)


def test_a_model_failing_on_one_thread_is_calibrated_on_its_threads(monkeypatch) -> None:
    """The one-thread calls are isolated: their failure leaves the calibration of the audit's threads."""
    measured, _ = calibrated(monkeypatch, fails_alone=True)
    assert measured.forward_seconds == pytest.approx(PER_SAMPLE, rel=0.01) and not measured.contended


def test_one_threads_backward_pass_is_left_out_where_it_would_take_long(monkeypatch) -> None:
    """Nothing waits and a backward pass of the 256-sample batch takes 1.3 s on two threads: on one thread it could
    take twice that (threads times: over CALIBRATION_SECONDS), so none runs there; the two threads' time counts."""
    measured, model = calibrated(monkeypatch, backward=5e-3)
    assert not any(grad and threads == 1 for _, threads, grad in model.calls)
    assert measured.backward_seconds == pytest.approx(5e-3) and measured.backward_measured


def test_one_threads_backward_pass_counts_where_the_threads_waited(monkeypatch) -> None:
    """Every call waits 0.5 s: the backward pass is timed on one thread only (its rate, without the wait)."""
    measured, model = calibrated(monkeypatch, backward=5e-3, wait=WAIT)
    assert not any(grad and threads == THREADS for _, threads, grad in model.calls)
    assert measured.backward_seconds == pytest.approx(5e-3 * THREADS)


def test_a_large_model_is_calibrated_on_a_few_samples(monkeypatch) -> None:
    """One sample takes 0.6 s: batches double only until one takes over CALIBRATION_SECONDS (4 samples), and all
    of the batch's time counts per sample (the call's overhead is noise beside it)."""
    measured, _ = calibrated(monkeypatch, per_sample=0.6)
    assert measured.forward_seconds == pytest.approx(0.6 + CALL / 4)
    assert measured.call_seconds == 0.0


def test_a_time_out_leaving_one_thread_set_still_restores_the_threads(monkeypatch) -> None:
    """The engine's time-out repeats every second: one landing inside :func:`on_one_thread`'s own restore would
    leave torch on one thread. Simulated by an isolation that sets one thread and times out: the calibration
    restores the threads it started with."""
    real, threads_after = calibration.measure, []

    def cut(run, seconds=0):
        torch.set_num_threads(1)
        raise engine.RuleTimeout("simulated: the restore was cut")

    def measure(context, isolate):
        with pytest.raises(engine.RuleTimeout):
            real(context, cut)
        threads_after.append(torch.get_num_threads())
        return real(context, isolate)
    monkeypatch.setattr(engine, "measure", measure)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        mechaudit.audit(TimedModel(SimulatedClock()), torch.randn(16, 4), labels=torch.randint(0, 2, (16,)),
                        select=["D101"], rule_timeout=0, layers=["fc1", "fc2"])
    finally:
        torch.set_num_threads(threads)
    assert threads_after == [THREADS]


def test_the_plan_says_when_the_threads_waited() -> None:
    from mechaudit.cost import Calibration
    from mechaudit.planning import Plan

    waited, calm = (Plan(Calibration(1e-3, 2e-3, 1e-10, 1e-3, True, 2, contended), 0, 2**30, []).lines()[0]
                    for contended in (True, False))
    assert "threads waited on each other" in waited and "OMP_NUM_THREADS=1" in waited
    assert "waited" not in calm
