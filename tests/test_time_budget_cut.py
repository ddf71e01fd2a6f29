"""Exact confirmation bounded by the time a rule has left (:mod:`mechaudit.deadline`): on a fake clock that charges
each exact check a fixed time, a rule whose budget holds only some of its planned checks runs the screen's top
candidates first, then part of the calibration sample, and every finding says it was cut; without a deadline the
result is the full one. No wall-clock assertion: the clock is the test's."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from conftest import rulebook_with, write_project
from fixtures.localization_toys import patching_pairs
from fixtures.planted_circuit import PLANTED_NODES, planted, planted_data
from fixtures.toy_models import signal_mlp
from test_atp_screen import CARRIER, WIDTH, _carrier_moved
from test_l202_screen_path import DECOY, SWITCHED, SwitchedOn, _inputs

import mechaudit
from mechaudit import deadline
from mechaudit.checks import patching as patching_check
from mechaudit.checks import single_points
from mechaudit.checks.registry import CHECKS, register
from mechaudit.engine import run_audit
from mechaudit.findings import Measurement
from mechaudit.loading import AuditData
from mechaudit.spec import load_spec
from mechaudit.techniques import ablation_screen, atp
from mechaudit.techniques.ablation_scan import AblationScanner

SCREEN = {"screen_top_k": 4, "calibration": 12, "layer_top_k": 1, "screen_steps": 2}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fake clock on which each unit the scanner ablates (or patches) costs 10 s."""
    fake = FakeClock()
    monkeypatch.setattr(deadline, "clock", fake)
    scan = AblationScanner.scan

    def charged(self, inputs, modes, *args, units=None, **kwargs):
        fake.now += 10.0 * sum(len(ids) for ids in (units or {}).values())
        return scan(self, inputs, modes, *args, units=units, **kwargs)
    monkeypatch.setattr(AblationScanner, "scan", charged)
    return fake


def _audit(timeout: int):
    inputs = _inputs()
    model = SwitchedOn(5.0).eval()
    labels = model(inputs).argmax(-1).detach()
    return mechaudit.audit(model, inputs, labels=labels, select=["L202"], rules={"L202": SCREEN},
                           rule_timeout=timeout)


def test_a_cut_confirms_the_top_candidates_first_and_says_so(clock: FakeClock) -> None:
    full = _audit(0).findings
    assert all("time_budget_cut" not in f.evidence and "cut by" not in f.message for f in full)
    planned = full[0].evidence["screen"]["checked_exactly"]
    # 100 s, 15 kept, 10 s a unit and the layer's clean pass with its first unit (weight 2): chunks of 1 unit (20
    # s), then 2, 1, 1, 1 and 1 (each estimated at 1.5 times the mean per weight so far, within half the time left,
    # or one unit within all of it) fit in 85 s
    (found,) = [f for f in _audit(100).findings if f.status == "fail"]
    cut = found.evidence["time_budget_cut"]
    assert cut == {"rule_timeout": 100, "cuts": [{"what": "exact ablations", "planned": planned, "ran": 7}]}
    assert f"7 of {planned} planned exact ablations ran" in found.message and "--rule-timeout" in found.message
    screen = found.evidence["screen"]
    assert screen["checked_exactly"] == 7 and screen["calibration"] == 7 - screen["screen_top_k"]
    assert screen["screen_top_k"] == SCREEN["screen_top_k"]  # the parameter, not the count that ran
    assert screen["screen_top_checked"] == SCREEN["screen_top_k"]  # every top candidate confirmed before calibration
    # the planted unit is confirmed exactly, as without the cut
    assert found.location.component == f"fc1:u{SWITCHED}" and found.metric == "accuracy_drop"
    (uncut,) = [f for f in full if f.status == "fail"]
    assert found.value == uncut.value and f"fc1:u{DECOY}" in screen["checked"]


def test_a_budget_the_screen_used_up_leaves_its_prediction_uncertain(clock: FakeClock,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    screen = ablation_screen.interpolated_estimates

    def slow_screen(*args, **kwargs):
        clock.now += 90.0  # of 100 s, 15 kept: no time left for an exact ablation
        return screen(*args, **kwargs)
    monkeypatch.setattr(ablation_screen, "interpolated_estimates", slow_screen)
    (finding,) = _audit(100).findings
    assert finding.evidence["time_budget_cut"]["cuts"][0]["ran"] == 0
    assert finding.metric == "predicted_accuracy_drop" and finding.status == "fail"
    assert "the time budget ran out first" in finding.message
    assert finding.confidence == "uncertain"  # the screen's prediction, no measurement


def test_confirm_runs_everything_in_one_chunk_without_a_deadline() -> None:
    chunks: list[list[int]] = []
    assert deadline.confirm(list(range(5)), chunks.append, "checks") == list(range(5)) and chunks == [list(range(5))]
    with deadline.within(0) as budget:
        deadline.confirm(list(range(3)), chunks.append, "checks")
    assert chunks[-1] == [0, 1, 2] and not budget.cuts


def test_a_prior_estimate_keeps_the_first_item_from_starting_when_it_does_not_fit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeClock()
    monkeypatch.setattr(deadline, "clock", fake)

    def charge(chunk: list[int]) -> None:
        fake.now += 10.0 * len(chunk)
    with deadline.within(100) as budget:
        fake.now = 80.0  # 5 s left before the reserve
        assert deadline.confirm([0, 1], charge, "checks", estimate=10.0) == [] and fake.now == 80.0
        assert budget.cuts == [deadline.Cut("checks", 2, 0)]
        assert deadline.confirm([0, 1], charge, "checks") == [0] and fake.now == 90.0  # no estimate: the first runs
    fake.now = 0.0
    with deadline.within(100):  # the control: 10 s estimated (15 with the safety margin) fits in 85 s
        assert deadline.confirm([0, 1], charge, "checks", estimate=10.0) == [0, 1]


def test_a_nested_budget_ends_with_the_enclosing_one_and_reports_its_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeClock()
    monkeypatch.setattr(deadline, "clock", fake)

    def charge(chunk: list[int]) -> None:
        fake.now += len(chunk)
    with deadline.within(20) as outer:  # 3 s kept, 1.5 s estimated an item: chunks of 1, 2, 4, 3, 2, 1, 1, 1, 1
        with deadline.within(1000) as inner:
            assert inner.deadline == outer.deadline
            ran = deadline.confirm(list(range(100)), charge, "checks")
    assert ran == list(range(16)) and fake.now == 16
    assert outer.cuts == inner.cuts == [deadline.Cut("checks", 100, 16)]


def test_an_inner_budget_stops_at_the_enclosing_one_s_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeClock()
    monkeypatch.setattr(deadline, "clock", fake)
    with deadline.within(100) as outer:  # exact checks stop at 85
        fake.now = 80.0
        with deadline.within(19) as inner:  # ends at 99, before the outer one, but would stop at 96.15
            assert inner.left() == pytest.approx(outer.left()) == pytest.approx(5.0)


def test_confirm_makes_no_collective_under_torchrun(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule runs rank-locally (distributed.step): a collective inside confirm would hang the ranks when one raises
    or has fewer items, so each rank decides its cuts on its own clock."""
    from mechaudit import distributed

    def collective(*args, **kwargs):
        raise AssertionError("a collective inside a rule's exact checks")
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "reduce", collective)
    monkeypatch.setattr(torch.distributed, "all_reduce", collective)

    def charge(chunk: list[int]) -> None:
        clock.now += len(chunk)
    with deadline.within(20) as budget:  # alone: chunks of 1, 2, 4, 3, 2, 1, 1, 1, 1
        assert deadline.confirm(list(range(100)), charge, "checks") == list(range(16))
    assert budget.cuts == [deadline.Cut("checks", 100, 16)]


def test_l202_names_the_time_budget_only_for_a_layer_it_cut() -> None:
    from types import SimpleNamespace

    from mechaudit.checks.critical_units import _Pool
    layers = [SimpleNamespace(name="a", size=3), SimpleNamespace(name="b", size=3)]
    planned = atp.Selection([0, 1], [2], 6)  # layer_top_k = 0: nothing of layer b planned
    pool = _Pool(layers, {"a": 0, "b": 3}, torch.zeros(6), torch.zeros(6, 0), torch.zeros(6),
                 atp.Selection([0], [], 6), torch.zeros(6), cut=True, planned=planned)
    assert pool.cut_in(layers[0]) and not pool.cut_in(layers[1])
    assert not _Pool(layers, {"a": 0, "b": 3}, torch.zeros(6), torch.zeros(6, 0), torch.zeros(6), planned,
                     torch.zeros(6), planned=planned).cut_in(layers[0])


def test_an_inner_budget_ending_first_keeps_its_own_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeClock()
    monkeypatch.setattr(deadline, "clock", fake)
    with deadline.within(1000), deadline.within(10) as inner:
        assert inner.deadline == 10 and inner.reserve == pytest.approx(1.5)
    assert deadline.current() is None


def test_an_inner_budget_ending_first_keeps_its_deadline_inside_an_outer_one_stopping_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The outer budget stops exact checks (at 85) before the inner one would (88.1), but the inner one still ends
    at 89: its rule's alarm, so it keeps that deadline, with the outer one's stop."""
    fake = FakeClock()
    monkeypatch.setattr(deadline, "clock", fake)
    with deadline.within(100):
        fake.now = 83.0
        with deadline.within(6) as inner:
            assert inner.deadline == 89.0 and inner.deadline - inner.reserve == pytest.approx(85.0)
            assert inner.left() == pytest.approx(2.0)
            fake.now = 88.0
            assert deadline.running_out()


def _patching(timeout: int):
    clean, corrupted = patching_pairs(carried=True)
    model = _carrier_moved(signal_mlp(spread=1, hidden=WIDTH))
    inputs = torch.cat([clean, corrupted])
    data = AuditData(inputs=inputs, labels=model(inputs).argmax(-1).detach(), pairs=(clean, corrupted))
    (finding,) = mechaudit.audit(model, data, select=["L207"], rules={"L207": {"top_k": 5, "calibration": 10}},
                                 rule_timeout=timeout).findings
    return finding


def test_l207_cut_patches_the_screen_s_top_first_and_lists_what_it_left(clock: FakeClock) -> None:
    full = _patching(0)
    assert "time_budget_cut" not in full.evidence and "unchecked_candidates" not in full.evidence
    finding = _patching(100)  # 10 s a patch, 85 s: chunks of 1, 2, 1, 1, 1, 1 and 1 of the 15 planned
    assert finding.evidence["time_budget_cut"]["cuts"] == [{"what": "exact patches", "planned": 15, "ran": 8}]
    screen = finding.evidence["screen"]
    assert screen["checked_exactly"] == 8 and screen["calibration"] == 3 and finding.evidence["verified"] == 8
    assert "unchecked_candidates" not in finding.evidence  # the top 5 all ran; only calibration was cut
    assert finding.location.component == full.location.component == f"fc1:u{CARRIER}"
    assert finding.value == full.value and "8 of 15 planned exact patches ran" in finding.message


def test_l207_with_no_time_for_an_exact_patch_reports_the_screen_s_estimate(clock: FakeClock,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    screen = patching_check.attribution_patching

    def slow_screen(*args, **kwargs):
        clock.now += 90.0
        return screen(*args, **kwargs)
    monkeypatch.setattr(patching_check, "attribution_patching", slow_screen)
    finding = _patching(100)
    assert finding.evidence["time_budget_cut"]["cuts"][0]["ran"] == 0 and finding.evidence["verified"] == 0
    assert len(finding.evidence["unchecked_candidates"]) == 5
    assert finding.location.component == f"fc1:u{CARRIER}" and "a prediction, not a measurement" in finding.message
    assert finding.metric == "predicted_top_recovered_fraction" and finding.interval["level"] == 1.0


def test_l207_measures_the_unpatched_baseline_once_across_its_chunks(clock: FakeClock,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mechaudit.techniques import patching as patching_technique
    totals, bases = [], []
    measure = patching_check.metric_totals

    def kept(*args, **kwargs):
        totals.append((args, measure(*args, **kwargs)))
        return totals[-1][1]

    def patched(*args, base=None, **kwargs):
        bases.append(base)
        return exact(*args, base=base, **kwargs)

    def refused(*args, **kwargs):
        raise AssertionError("the unpatched baseline measured again")
    exact, baseline = patching_check.exact_patching, patching_technique.corrupted_metric
    monkeypatch.setattr(patching_check, "metric_totals", kept)
    monkeypatch.setattr(patching_check, "exact_patching", patched)
    monkeypatch.setattr(patching_technique, "corrupted_metric", refused)
    finding = _patching(100)  # 8 patches in 7 chunks, on the corrupted runs' metric metric_totals measured
    assert finding.evidence["verified"] == 8 and len(bases) == 7 and len(totals) == 1
    (view, _, corrupted, targets, metric, batch, device), measured = totals[0]
    assert all(base is measured.per_pair[1] for base in bases)
    assert torch.equal(measured.per_pair[1], baseline(view, corrupted, targets, metric, batch, device))


def test_l207_names_the_candidates_it_left_unpatched() -> None:
    rows = [{"component": f"fc1:u{i}", "attribution_estimate": 0.5 - i / 10} for i in range(4)]
    note = patching_check._unchecked_note(rows)
    assert "fc1:u0 50%, fc1:u1 40%, fc1:u2 30%, ..." in note and "fc1:u3" not in note


def _r304(monkeypatch: pytest.MonkeyPatch, timeout: int):
    monkeypatch.setattr(atp, "SCREEN_ABOVE", 2)  # screen the planted circuit's few units
    x = planted_data()
    model = planted().eval()
    return mechaudit.audit(model, x, labels=model(x).argmax(1).detach(), behaviour={"kind": "class_logit",
                                                                                   "target": "0"},
                           select=["R304"], rules={"R304": {"candidates": 3, "calibration": 2}},
                           rule_timeout=timeout).findings


def test_r304_cut_ablates_the_top_candidates_first_and_the_rest_stand_as_predictions(clock: FakeClock,
                                                                                      monkeypatch) -> None:
    ablate = single_points.behaviour_under_ablation

    def charged(*args, **kwargs):
        clock.now += 10.0
        return ablate(*args, **kwargs)
    monkeypatch.setattr(single_points, "behaviour_under_ablation", charged)
    # 40 s, 6 kept, 10 s an ablation: the top 2 candidates alone (1, then 1 at 15 s estimated), then their 1 pair
    # (an unordered pair: one pass, read both ways)
    findings = _r304(monkeypatch, 40)
    assert {f.location.component for f in findings if f.status == "fail"} == PLANTED_NODES
    for finding in findings:
        assert finding.evidence["time_budget_cut"]["cuts"] == [
            {"what": "single-unit ablations", "planned": 5, "ran": 2}]
        assert finding.evidence["screen"]["checked_exactly"] == 2 and finding.evidence["screen"]["calibration"] == 0
    (predicted,) = [f for f in findings if f.metric == "predicted_behaviour_lost"]
    assert predicted.confidence == "uncertain" and "not ablated exactly" in predicted.message
    assert [row["component"] for row in predicted.evidence["screen"]["unchecked_candidates"]] == [
        predicted.location.component]
    uncut = _r304(monkeypatch, 0)
    assert {f.metric for f in uncut} == {"behaviour_lost"} and all("time_budget_cut" not in f.evidence for f in uncut)


def test_r304_pass_beside_unchecked_candidates_speaks_of_those_ablated_and_is_uncertain() -> None:
    from types import SimpleNamespace

    from mechaudit.techniques.uncertainty import Interval
    loss = {"a": 0.2, "b": 0.1}
    measured = Interval(0.15, 0.25, "bootstrap")
    params = single_points.SinglePointsParams()
    problem = SimpleNamespace(description="behaviour")

    def judged(unchecked: list[dict]) -> Measurement:
        (found,) = single_points._measured([], loss, ["a", "b"], [], [], {}, lambda node: measured, params, problem,
                                           unchecked)
        return found
    cut = judged([{"component": "c", "predicted_loss": 0.7}])
    assert "no single unit of the 2 ablated exactly carries" in cut.message and cut.confidence == "uncertain"
    whole = judged([])
    assert "no single unit carries" in whole.message and whole.confidence == "certain"


@dataclass(frozen=True)
class _NoParams:
    pass


def test_an_out_of_memory_retry_starts_a_fresh_budget_without_the_failed_attempt_s_cut(
        tmp_path, clock: FakeClock) -> None:
    @register("test_cut_then_oom", _NoParams)
    def _cut_then_oom(context, rule):
        if context.batch_size > 128:  # the first attempt: its time runs out, then it runs out of memory
            clock.now += 1000.0
            deadline.confirm(list(range(4)), lambda chunk: None, "checks")
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        ran = deadline.confirm(list(range(4)), lambda chunk: None, "checks")
        return [Measurement(f"{len(ran)} checks ran at batch size {context.batch_size}")]
    try:
        project = write_project(tmp_path, data_table='labels = "labels"')
        spec = load_spec(project.spec)
        spec = replace(spec, options=replace(spec.options, select=("D901",), batch_size=256, rule_timeout=100))
        (run,) = run_audit(spec, rulebook_with(tmp_path, {"D901": "test_cut_then_oom"})).rules
    finally:
        CHECKS.pop("test_cut_then_oom")
    (finding,) = run.findings
    assert finding.message == "4 checks ran at batch size 128" and "out_of_memory_retry" in finding.evidence
    assert "time_budget_cut" not in finding.evidence


def test_optional_work_stops_when_half_the_reserve_is_left(clock: FakeClock) -> None:
    assert not deadline.running_out()  # no budget
    with deadline.within(100):  # 15 s kept
        clock.now = 92.0
        assert not deadline.running_out()
        clock.now = 93.0
        assert deadline.running_out()


# -- the edge-scoring loops (R301, L208) and L208's exact patches ----------------------------------------------------

def _charged(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, seconds: float,
             fake: FakeClock | None = None) -> FakeClock:
    """The fake clock (a new one, or ``fake``) installed as the deadlines' clock, advanced by ``seconds`` on each
    call of ``owner.name``."""
    fake = fake or FakeClock()
    monkeypatch.setattr(deadline, "clock", fake)
    real = getattr(owner, name)

    def charged(*args, **kwargs):
        fake.now += seconds
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, charged)
    return fake


@pytest.fixture
def batch_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fake clock on which each batch of edge scoring (a clean and a reference run) costs 10 s."""
    from mechaudit.techniques import circuits
    return _charged(monkeypatch, circuits, "_run", 10.0)


def _circuit(timeout: int, select: tuple[str, ...] = ("R301",)):
    x = planted_data(256)
    model = planted().eval()
    data = AuditData(inputs=x, labels=model(x).argmax(1).detach(), masks={"m": torch.ones(x.shape[1])})
    return mechaudit.audit(model, data, behaviour={"kind": "class_logit", "target": "0"}, select=list(select),
                           batch_size=32, rule_timeout=timeout).findings


def test_r301_cut_scores_the_first_batches_and_says_how_many(batch_clock: FakeClock) -> None:
    (full,) = _circuit(0)
    assert "time_budget_cut" not in full.evidence and full.evidence["samples"] == 256
    # 60 s, 9 kept, 10 s a batch: chunks of 1, 1, 1 and 1 batches (1.5 x 10 s estimated each, within half the
    # time left, or one within all of it) fit in 51 s: 4 of the 8 batches of 32 samples
    (cut,) = _circuit(60)
    assert cut.evidence["time_budget_cut"]["cuts"] == [{"what": "edge-scoring batches", "planned": 8, "ran": 4}]
    assert cut.evidence["samples"] == 128 and "4 of 8 planned edge-scoring batches ran" in cut.message
    # the planted circuit is still the strongest part of the graph: scored on fewer samples, not a different one
    assert cut.evidence["top_nodes"][0]["component"] == full.evidence["top_nodes"][0]["component"]
    def carrying(finding) -> set:
        return {(e["source"], e["target"]) for e in finding.evidence["circuit"]["edges"] if e["score"] > 0}
    assert carrying(cut) == carrying(full) and ("fc1:u0", "fc2:u0") in carrying(cut)


def test_a_rule_reading_cut_circuit_scores_is_labelled_too(batch_clock: FakeClock) -> None:
    """R302 reads the scores R301 computed (and cut) within its own budget: its findings rest on them, so they say
    so, naming R301 (whose budget to raise); on a machine with time, neither is labelled."""
    cut = _circuit(60, ("R301", "R302"))
    assert {f.rule_id for f in cut if "time_budget_cut" in f.evidence} == {"R301", "R302"}
    assert all("4 of 8 planned edge-scoring batches ran" in f.message for f in cut if f.rule_id == "R301")
    assert all("4 of 8 planned edge-scoring batches (by R301, for the circuit scores this rule reads) ran"
               in f.message for f in cut if f.rule_id == "R302")
    assert not [f for f in _circuit(0, ("R301", "R302")) if "time_budget_cut" in f.evidence]


def test_a_rule_computing_the_circuit_scores_for_its_exact_checks_gives_them_a_share_of_its_time(
        batch_clock: FakeClock) -> None:
    """R302 computing the scores itself gives them half its 60 s (15% of it kept): batches of 10 s stop at 20 s
    (R301, whose result they are, scores 4 in all of its 60 s), so R302's ablations keep the rest of its time."""
    r302 = _circuit(60, ("R302",))
    assert r302 and all(f.evidence["time_budget_cut"]["cuts"] == [
        {"what": "edge-scoring batches", "planned": 8, "ran": 2}] for f in r302)
    (r301,) = _circuit(60)
    assert r301.evidence["time_budget_cut"]["cuts"][0]["ran"] == 4


def test_rules_asking_for_more_samples_than_there_are_share_one_computation_of_the_circuit_scores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyed on the samples they resolve to (as the cost model charges them once), not the parameter."""
    from mechaudit.checks import circuit_common
    calls: list[int] = []
    real = circuit_common.edge_attribution
    monkeypatch.setattr(circuit_common, "edge_attribution",
                        lambda view, inputs, *a, **k: (calls.append(len(inputs)), real(view, inputs, *a, **k))[1])
    x = planted_data(64)
    model = planted().eval()
    mechaudit.audit(model, AuditData(inputs=x, labels=model(x).argmax(1).detach()),
                    behaviour={"kind": "class_logit", "target": "0"}, select=["R301", "R302"],
                    rules={"R301": {"samples": 300}, "R302": {"samples": 400}})
    assert calls == [64]


def test_no_time_for_one_batch_of_edge_scores_is_an_error_not_a_hang(batch_clock: FakeClock,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mechaudit.techniques import circuits
    _charged(monkeypatch, circuits, "checked_splits", 90.0, batch_clock)
    (finding,) = _circuit(100)
    assert finding.status == "error" and "before one batch of edge scores" in finding.message
    assert "--rule-timeout" in finding.message


def test_wide_pairs_are_screened_while_time_is_left_and_the_rest_listed_unscored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two attention-head pairs wider than ``max_passes`` on both sides: with time for one, the second is named in
    ``edge_choice`` as not scored and no edge of it is invented; with time for both, both are scored."""
    from test_gradient_edges import _setup

    from mechaudit.techniques import circuits
    fake = _charged(monkeypatch, circuits, "_score_batch", 10.0)  # the one batch: 10 s
    screened = circuits._screened_pair

    def charged_after(*args, **kwargs):  # a pair costs 30 s, charged once it ran (its own units are not cut here)
        screened(*args, **kwargs)
        fake.now += 30.0
    monkeypatch.setattr(circuits, "_screened_pair", charged_after)
    _, view, clean, corrupted, target = _setup(("blocks.0.attn", "blocks.0.mlp.0", "blocks.1.attn"))

    def scores(seconds: int):
        with deadline.within(seconds) as budget:
            found = circuits.edge_attribution(view, clean, target, circuits.at_position(circuits.target_logit, -1),
                                              reference=corrupted, max_passes=1)
        return found, budget
    full, whole = scores(0)
    assert not full.unscored and not whole.cuts and len(full.edges.blocks) == 2
    cut, budget = scores(60)  # 51 s before the reserve: the batch (10 s), the first pair (30 s); 11 s left do not
    # hold the second pair's first unit (a rerun of the batch: 10 s x SAFETY)
    assert cut.unscored == [(view.layers[1].name, view.layers[2].name)] and len(cut.edges.blocks) == 1
    assert budget.cuts == cut.cuts == [deadline.Cut("screened layer pairs", 2, 1)]
    assert "not scored: the rule's time budget ran out" in cut.edge_choice()[-1]["method"]
    assert torch.equal(cut.edges.blocks[0].scores, full.edges.blocks[0].scores)


def test_a_batch_cut_leaves_no_time_to_start_a_wide_pair_it_cannot_finish(batch_clock: FakeClock) -> None:
    """8 samples in batches of 1 at 10 s a run, 100 s (15 kept): the batches (chunks of 1, 2, 1, 1, 1, 1 and 1)
    use the time up to 80 s. A screened wide pair's first unit reruns every batch scored (80 s), so with 5 s left it
    must not start (it used to, ending at 160 s: past the rule's time-out, an error that loses everything); the
    control, with time, scores both pairs."""
    from test_gradient_edges import VOCAB, _setup

    from mechaudit.techniques import circuits
    _, view, clean, _, _ = _setup(("blocks.0.attn", "blocks.0.mlp.0", "blocks.1.attn"))
    torch.manual_seed(1)
    clean, corrupted = torch.randint(0, VOCAB, (2, 8, clean.shape[1]))

    def scores(seconds: int):
        batch_clock.now = 0.0
        with deadline.within(seconds) as budget:
            found = circuits.edge_attribution(view, clean, torch.full((8,), 3), circuits.at_position(
                circuits.target_logit, -1), reference=corrupted, batch_size=1, max_passes=1)
        return found, budget
    with_time, whole = scores(1000)
    assert not with_time.unscored and not whole.cuts and with_time.samples == 8 and len(with_time.edges.blocks) == 2
    cut, budget = scores(100)
    assert batch_clock.now <= budget.deadline - budget.reserve  # finished in time: nothing started that overran
    assert batch_clock.now == 80.0 and cut.samples == 8 and len(cut.unscored) == 2 and not cut.edges.blocks
    assert budget.cuts == cut.cuts == [deadline.Cut("screened layer pairs", 2, 0)]


def test_the_edge_loop_makes_no_collective_under_torchrun(batch_clock: FakeClock,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from mechaudit import distributed

    def collective(*args, **kwargs):
        raise AssertionError("a collective inside the edge-scoring loop")
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "reduce", collective)
    monkeypatch.setattr(torch.distributed, "all_reduce", collective)
    monkeypatch.setattr(torch.distributed, "broadcast", collective)
    from mechaudit.model_view import ModelView
    from mechaudit.techniques import circuits
    x = planted_data(256)
    model = planted().eval()
    view = ModelView.discover(model, x[:2])
    with deadline.within(60) as budget:
        found = circuits.edge_attribution(view, x, torch.zeros(256, dtype=torch.long), circuits.target_logit,
                                          batch_size=32)
    assert found.samples == 128 and budget.cuts == [deadline.Cut("edge-scoring batches", 8, 4)]


@pytest.fixture
def patch_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fake clock on which each exact patch of L208 costs 10 s."""
    from mechaudit.techniques import cue_sensitivity
    return _charged(monkeypatch, cue_sensitivity, "_patched_change", 10.0)


def _cues(model: torch.nn.Module, timeout: int):
    from fixtures.cue_models import cue_pairs
    with_cue, without_cue = cue_pairs()
    data = AuditData(inputs=without_cue, labels=model(without_cue).argmax(1).detach(), cues=(with_cue, without_cue))
    (finding,) = mechaudit.audit(model, data, select=["L208"], rule_timeout=timeout).findings
    return finding


def test_l208_cut_patches_the_strongest_candidates_first_and_a_fail_stands(patch_clock: FakeClock) -> None:
    from fixtures.cue_models import cued
    full = _cues(cued(), 0)
    assert "time_budget_cut" not in full.evidence and "unchecked_candidates" not in full.evidence["screen"]
    # 40 s, 6 kept: 1 patch (10 s), then 1 (estimated 15 s, within all 24 s left, not half), then none (14 s left)
    cut = _cues(cued(), 40)
    assert cut.evidence["time_budget_cut"]["cuts"] == [{"what": "exact patches", "planned": 6, "ran": 2}]
    assert cut.evidence["screen"]["checked_exactly"] == 2 and cut.evidence["screen"]["unchecked_count"] == 4
    assert cut.evidence["screen"]["method"].endswith("; cut by the time budget: 2 of the 6 planned patched")
    assert cut.status == full.status == "fail" and cut.value == full.value
    assert cut.location.component == "fc1:u2" and cut.confidence == "certain"  # an exact flip rate over 0.05


def test_l208_pass_beside_unpatched_candidates_is_uncertain(patch_clock: FakeClock) -> None:
    from fixtures.cue_models import cue_control
    full = _cues(cue_control(), 0)
    assert full.status == "pass" and full.confidence == "certain" and "not patched alone" not in full.message
    cut = _cues(cue_control(), 40)
    assert cut.status == "pass" and cut.confidence == "uncertain" and cut.interval["high"] == 1.0
    # the low end is the bootstrap's, at its level; the method says why the high end is 1
    assert cut.interval["level"] == full.interval["level"] == 0.95 and cut.interval["low"] == full.interval["low"]
    assert "the 95% interval" in cut.message and "not patched alone" in cut.interval["method"]
    assert "4 candidate(s) not patched alone for lack of time" in cut.message
    estimates = [row["attribution_estimate"] for row in cut.evidence["screen"]["unchecked_candidates"]]
    assert len(estimates) == 4 and estimates == sorted(estimates, reverse=True)  # the weakest left, strongest first


def test_l208_with_no_time_for_an_exact_patch_measures_the_attribution_s_pathway(
        patch_clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    from fixtures.cue_models import cued

    from mechaudit.techniques import cue_sensitivity
    _charged(monkeypatch, cue_sensitivity, "edge_attribution", 45.0, patch_clock)  # two directions: 90 of 100 s
    finding = _cues(cued(), 100)
    # the first direction's attribution took one batch at 45 s; the second's batch, estimated at 1.5 x 45 s, does
    # not fit the 40 s left (its scores left out), nor does an exact patch
    assert finding.evidence["time_budget_cut"]["cuts"] == [
        {"what": "edge-scoring batches (cued run's gradient)", "planned": 1, "ran": 0},
        {"what": "exact patches", "planned": 6, "ran": 0}]
    assert finding.evidence["screen"]["pathway_chosen_by"].startswith("attribution")
    assert finding.status == "fail" and finding.location.component == "fc1:u2"  # measured exactly all the same


def _wide_cued(width: int = 300) -> torch.nn.Module:
    """``cued``'s network with ``width`` hidden units (above atp.SCREEN_ABOVE, so that the exact patches are
    screened): its 6 units, and dead ones beside them."""
    from fixtures.cue_models import cued
    small, model = cued(), cued()
    model.fc1 = torch.nn.Linear(small.fc1.in_features, width)
    model.fc2 = torch.nn.Linear(width, 2)
    with torch.no_grad():
        for tensor in (*model.fc1.parameters(), *model.fc2.parameters()):
            tensor.zero_()
        model.fc1.weight[:6] = small.fc1.weight
        model.fc2.weight[:, :6] = small.fc2.weight
    return model.eval()


def test_l208_screened_cut_patches_the_top_then_a_seeded_random_calibration_sample(patch_clock: FakeClock) -> None:
    assert _wide_cued().fc1.out_features > atp.SCREEN_ABOVE
    full = _cues(_wide_cued(), 0)
    planned = full.evidence["screen"]["checked_exactly"]
    assert full.evidence["screen"]["calibration"] > 0 and planned < 300  # the screened path
    # 200 s, 30 kept, 10 s a patch: chunks of 1, 2, 4, 3, 2, 1, 1, 1 and 1 fit in 170 s
    cut = _cues(_wide_cued(), 200)
    assert cut.evidence["time_budget_cut"]["cuts"] == [{"what": "exact patches", "planned": planned, "ran": 16}]
    screen = cut.evidence["screen"]
    top = full.evidence["screen"]["checked"][:planned - full.evidence["screen"]["calibration"]]
    assert screen["checked"][:len(top)] == top  # every top candidate patched before any calibration one
    sample = screen["checked"][len(top):]
    assert len(sample) == screen["calibration"] == 16 - len(top) and set(sample) < set(full.evidence["screen"]["checked"])
    assert sample != full.evidence["screen"]["checked"][len(top):len(top) + len(sample)]  # a random order, not by index
    assert _cues(_wide_cued(), 200).evidence["screen"]["checked"] == screen["checked"]  # seeded
    assert cut.status == full.status == "fail" and cut.value == full.value and cut.location.component == "fc1:u2"


def test_a_generous_finite_budget_gives_the_findings_of_none(patch_clock: FakeClock) -> None:
    full, generous = _cues(_wide_cued(), 0), _cues(_wide_cued(), 3600)
    assert generous.to_dict() == full.to_dict()


def test_a_generous_finite_budget_gives_the_circuit_findings_of_none(batch_clock: FakeClock) -> None:
    full, generous = _circuit(0, ("R301", "R302")), _circuit(3600, ("R301", "R302"))
    assert [f.to_dict() for f in generous] == [f.to_dict() for f in full]


def _mlp_pair_scores(clock: FakeClock, seconds: int):
    """The two MLPs' pair of a 2-block pre-LN transformer (32 units each, scored by autograd through the residual
    stream and LayerNorm), screened into its 16 best-scored units, on 4 samples in batches of 1."""
    from test_gradient_edges import VOCAB, _setup

    from mechaudit.techniques import circuits
    _, view, clean, _, _ = _setup(("blocks.0.mlp.0", "blocks.1.mlp.0"))
    torch.manual_seed(1)
    clean, corrupted = torch.randint(0, VOCAB, (2, 4, clean.shape[1]))
    clock.now = 0.0
    with deadline.within(seconds) as budget:
        found = circuits.edge_attribution(view, clean, torch.full((4,), 3), circuits.at_position(
            circuits.target_logit, -1), reference=corrupted, batch_size=1, max_passes=16)
    return found, budget


def test_a_screened_pair_the_time_left_does_not_hold_keeps_its_best_units_and_ends_in_time(
        batch_clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """10 s a run and 5 s a VJP (per unit and batch): the 4 batches take 40 s, and the pair's 16 units would take
    360 s more (4 reruns and 64 VJPs), far more than its prior estimate of one rerun of the batches (40 s). Within
    400 s (60 kept) it used to start whole and end at 400 s, past the deadline (in the engine, an error that loses
    everything); now its units run in chunks, best-scored first: each chunk reports its reruns (40 s) as a fixed
    cost, so after the first unit (60 s) each chunk holds the units whose VJPs (20 s each, 1.5 times that estimated)
    fit in half the time left after one more rerun: 3, then 1; it ends at 260 s with the edges into its top 5
    units, as scored with time, and says so. The control, with time, gives the scores of none."""
    from mechaudit.techniques import circuits
    vjps = circuits.screened_gradient_edges

    def charged(*args, **kwargs):
        batch_clock.now += 5.0 * len(args[-1])
        return vjps(*args, **kwargs)
    monkeypatch.setattr(circuits, "screened_gradient_edges", charged)
    full, _ = _mlp_pair_scores(batch_clock, 0)
    generous, whole = _mlp_pair_scores(batch_clock, 100000)
    assert not whole.cuts and [b.scores for b in generous.edges.blocks] and all(
        torch.equal(a.scores, b.scores) and a.method == b.method for a, b in zip(full.edges.blocks,
                                                                               generous.edges.blocks))
    (every,) = full.edges.blocks
    assert every.scored_targets == 16 and "edges into the 16 of 32 units" in every.method
    cut, budget = _mlp_pair_scores(batch_clock, 400)
    assert batch_clock.now == 260.0 <= budget.deadline - budget.reserve and cut.samples == 4 and not cut.unscored
    assert budget.cuts == cut.cuts == [deadline.Cut("top units of blocks.1.mlp.0 screened for edges from "
                                                    "blocks.0.mlp.0", 16, 5)]
    (block,) = cut.edges.blocks
    best = torch.topk(torch.tensor([full.nodes[f"blocks.1.mlp.0:u{u}"] for u in range(32)]).abs(), 5).indices
    assert block.scored_units == tuple(sorted(best.tolist())) and block.scored_targets == 5
    assert "edges into the 5 of the planned 16 units" in block.method and "(cut by the time budget)" in block.method
    assert torch.equal(block.scores[:, best], every.scores[:, best]) and block.scores.sum() == block.scores[:, best].sum()
    assert block.describe()["edges"] == 32 * 5



def test_a_chunk_s_fixed_cost_is_paid_once_more_not_once_per_doubling(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run reporting a fixed cost per chunk (a rerun of the batches) gets, after its first item, the rest in one
    chunk when it fits; with doubling chunks the 100 s rerun would be paid 8 times for 128 items."""
    fake = FakeClock()
    monkeypatch.setattr(deadline, "clock", fake)
    chunks: list[int] = []

    def charge(chunk: list[int]) -> deadline.Fixed:
        chunks.append(len(chunk))
        fake.now += 100.0 + 0.2 * len(chunk)
        return deadline.Fixed(100.0)
    with deadline.within(1000):
        assert deadline.confirm(list(range(128)), charge, "units", estimate=100.0) == list(range(128))
    assert chunks == [1, 127] and fake.now == pytest.approx(225.6)
    fake.now, chunks[:] = 0.0, []
    with deadline.within(1000) as budget:  # the control: unreported, the rerun is priced per unit and paid per chunk
        done = deadline.confirm(list(range(128)), lambda chunk: charge(chunk) and None, "units", estimate=100.0)
    assert len(chunks) > 2 and len(done) < 128 and budget.cuts


def test_a_tight_budget_with_a_fixed_cost_per_chunk_takes_what_fits_in_the_time_left(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's case: the rerun costs 100 s, each unit 0.2 s; with 500 s left after the batches (600 s budget,
    90 kept) 128 units fit, where chunks priced per unit (rerun included) kept 3."""
    fake = FakeClock()
    monkeypatch.setattr(deadline, "clock", fake)

    def charge(chunk: list[int]) -> deadline.Fixed:
        fake.now += 100.0 + 0.2 * len(chunk)
        return deadline.Fixed(100.0)
    with deadline.within(600) as budget:
        fake.now = 100.0
        done = deadline.confirm(list(range(128)), charge, "units", estimate=100.0)
    assert len(done) == 128 and not budget.cuts and fake.now < 510.0


def test_pairs_start_while_one_unit_s_rerun_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeClock()
    monkeypatch.setattr(deadline, "clock", fake)
    started: list[str] = []

    def run(item: str) -> None:
        started.append(item)
        fake.now += 30.0
    with deadline.within(100) as budget:  # 85 s before the reserve; each start needs 15 s (10 x SAFETY)
        assert deadline.starts(["a", "b", "c", "d"], run, "pairs", first=10.0) == ["a", "b", "c"]
    assert budget.cuts == [deadline.Cut("pairs", 4, 3)]
