"""The second-order patching screen (``techniques/second_order.py``): where the metric is stationary on the run
patched into (the similarity of an output to the corrupted run's own output), it estimates each component's own
patching effect where every first-order term is 0, and L207 uses it there (and only there)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

import mechaudit
from mechaudit.loading import AuditData
from mechaudit.model_view import ModelView
from mechaudit.techniques import atp
from mechaudit.techniques.circuits import cosine_similarity
from mechaudit.techniques.patching import PatchingTotals, attribution_patching, exact_patching, metric_totals
from mechaudit.techniques.second_order import STATIONARY, patch_sites, second_order_patching

WIDTH, CARRIER = 300, 211


class Embedder(nn.Module):
    """Inputs of 4 to an 8-wide embedding through 300 hidden units; unit 211 alone reads input 3 and writes the
    embedding's first half strongly, the others read inputs 0-2 and write small random directions."""

    def __init__(self, relu: bool = True) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.fc1, self.fc2, self.relu = nn.Linear(4, WIDTH), nn.Linear(WIDTH, 8), relu
        with torch.no_grad():
            self.fc1.weight.copy_(torch.randn(WIDTH, 4, generator=generator))
            self.fc1.weight[:, 3] = 0.0
            self.fc1.weight[CARRIER] = torch.tensor([0.0, 0.0, 0.0, 3.0])
            self.fc1.bias.fill_(0.5)
            self.fc2.weight.copy_(0.05 * torch.randn(8, WIDTH, generator=generator))
            self.fc2.weight[:4, CARRIER] = 1.0
            self.fc2.bias.copy_(torch.randn(8, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        return self.fc2(torch.relu(hidden) if self.relu else hidden)


def _pairs(count: int = 32, shift: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean inputs with input 3 at ``shift``, corrupted twins with it at 0 and inputs 0-2 moved a little."""
    generator = torch.Generator().manual_seed(1)
    clean = torch.randn(count, 4, generator=generator)
    clean[:, 3] = shift
    corrupted = clean + 0.1 * torch.randn(count, 4, generator=generator)
    corrupted[:, 3] = 0.0
    return clean, corrupted


def test_at_a_stationary_metric_the_second_order_screen_matches_exact_patching_where_the_first_order_sees_nothing(
) -> None:
    model = Embedder(relu=False).eval()  # linear: the output's change is exactly J d, the estimate exact to 2nd order
    clean, corrupted = _pairs(shift=0.05)  # small moves: the quadratic term is nearly the whole effect
    view = ModelView.discover(model, clean[:2])
    layers = [view.layer("fc1")]
    with torch.no_grad():
        targets = model(corrupted)  # the metric is at its maximum, 1, on the corrupted run
    exact = exact_patching(view, layers, clean, corrupted, targets, cosine_similarity)["fc1"].double()
    estimate = second_order_patching(view, layers, corrupted, clean, targets, cosine_similarity, probes=256)
    estimate = estimate["fc1"].double().sum(1)
    first = attribution_patching(view, layers, clean, corrupted, targets, cosine_similarity, steps=1)["fc1"]
    assert float(exact.min()) < 0 and float(exact.max()) <= 1e-5  # every patch lowers the similarity (float noise)
    assert float(first.abs().max()) < 1e-3 * float(exact.abs().max())  # the first-order screen sees nothing
    assert int(estimate.argmin()) == int(exact.argmin()) == CARRIER
    assert abs(float(estimate[CARRIER]) / float(exact[CARRIER]) - 1) < 0.1
    moved = exact.abs() > 1e-2 * exact.abs().max()
    print(int(moved.sum()), spearmanr(estimate[moved].numpy(), exact[moved].numpy()).correlation,
          float(estimate[CARRIER]) / float(exact[CARRIER]))
    assert spearmanr(estimate[moved].numpy(), exact[moved].numpy()).correlation > 0.9


def _screens(model: Embedder, clean: torch.Tensor, corrupted: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Exact patching of fc1's units and the second-order screen at fc1's output and at its reader's input."""
    view = ModelView.discover(model, clean[:2])
    layers = [view.layer("fc1")]
    with torch.no_grad():
        targets = model(corrupted)
    exact = exact_patching(view, layers, clean, corrupted, targets, cosine_similarity)["fc1"].double()
    sites = patch_sites(view, layers, corrupted, clean)
    at_output, at_reader = (second_order_patching(view, layers, corrupted, clean, targets, cosine_similarity,
                                                  probes=64, sites=chosen)["fc1"].double().sum(1)
                            for chosen in (None, sites))
    return exact, at_output, at_reader, sites


def test_a_unit_the_patch_switches_on_past_its_relu_is_ranked_at_its_readers_input() -> None:
    """The carrier is off (below its ReLU's kink) on the corrupted run and on on the clean one: at its own output
    the Taylor expansion at the corrupted run sees a zero slope (MiniLM's GELU neurons, ranked 1,892nd); at the
    input of ``fc2``, which reads it after the ReLU, the move is the exact change of what ``fc2`` reads."""
    model = Embedder().eval()
    with torch.no_grad():
        model.fc1.bias[CARRIER] = -0.3  # corrupted: 3 * 0 - 0.3 < 0, off; clean: 3 * 0.2 - 0.3 > 0, on
    exact, at_output, at_reader, sites = _screens(model, *_pairs(shift=0.2))  # a small move: the quadratic holds
    assert sites["fc1"].reader.name == "fc2"
    assert int(exact.argmin()) == CARRIER
    assert int(at_output.argmin()) != CARRIER and abs(float(at_output[CARRIER])) < 1e-6  # blind to it
    assert int(at_reader.argmin()) == CARRIER
    assert abs(float(at_reader[CARRIER]) / float(exact[CARRIER]) - 1) < 0.2
    moved = exact.abs() > 1e-2 * exact.abs().max()
    assert spearmanr(at_reader[moved].numpy(), exact[moved].numpy()).correlation > \
        spearmanr(at_output[moved].numpy(), exact[moved].numpy()).correlation


def test_without_a_nonlinearity_before_the_reader_both_sites_give_the_same_estimate() -> None:
    """Control: fc2 reads fc1's output as it is (no ReLU), so moving a unit at fc2's input is moving it at fc1's
    output and the two estimates agree (the same Jacobian, the same move, the same probes)."""
    exact, at_output, at_reader, sites = _screens(Embedder(relu=False).eval(), *_pairs())
    assert sites["fc1"].reader.name == "fc2"
    torch.testing.assert_close(at_reader, at_output, rtol=1e-4, atol=1e-7)
    assert int(at_reader.argmin()) == int(exact.argmin()) == CARRIER


def test_metric_totals_report_the_share_of_the_effect_a_first_order_screen_can_see() -> None:
    model = Embedder().eval()
    clean, corrupted = _pairs()
    view = ModelView.discover(model, clean[:2])
    with torch.no_grad():
        stationary = model(corrupted)
    totals = metric_totals(view, clean, corrupted, stationary, cosine_similarity, first_order=True)
    assert totals.first_order_share < 1e-5 < STATIONARY
    assert totals.first_order.shape == (len(clean),)
    target = torch.zeros(len(clean), dtype=torch.long)

    def logit(outputs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:  # linear in the output: share 1
        return outputs.gather(1, chosen.view(-1, 1)).squeeze(1)
    assert abs(metric_totals(view, clean, corrupted, target, logit, first_order=True).first_order_share - 1) < 1e-4
    assert metric_totals(view, clean, corrupted, target, logit).first_order_share is None


def _similarity_audit(**params) -> mechaudit.findings.Measurement:
    model = Embedder().eval()
    clean, corrupted = _pairs()
    data = AuditData(inputs=clean, pairs=(clean, corrupted))
    (finding,) = mechaudit.audit(model, data, select=["L207"], task="regression", behaviour={"kind": "similarity"},
                                 rules={"L207": {"top_k": 5, "calibration": 10, **params}}).findings
    return finding


def test_l207_screens_a_stationary_similarity_to_second_order_and_confirms_the_carrier_exactly() -> None:
    finding = _similarity_audit()
    screen = finding.evidence["screen"]
    assert screen["method"].startswith("second-order") and screen["first_order_share"] < STATIONARY
    assert "(1 layer(s) at their reader's input)" in screen["method"]  # fc1's units moved after their ReLU
    assert finding.location.component == f"fc1:u{CARRIER}"
    assert finding.evidence["carriers"] == [f"fc1:u{CARRIER}"]
    assert screen["scored"] == WIDTH and screen["top_k_recall"] >= 0.8  # the rest: near-ties of ~3e-4
    assert screen["checked_exactly"] == 15 + len(screen["path_screen_checked"])  # the path screen's top, patched too
    assert screen["spearman"] > 0.8
    # the path screen's own top 5 (recomputed here), every one patched exactly; some only because the path ranks them
    model = Embedder().eval()
    clean, corrupted = _pairs()
    view = ModelView.discover(model, clean[:2])
    with torch.no_grad():
        targets = model(corrupted)
    effect = metric_totals(view, clean, corrupted, targets, cosine_similarity).effect
    path = attribution_patching(view, [view.layer("fc1")], clean, corrupted, targets, cosine_similarity, steps=3)
    top = {f"fc1:u{int(i)}" for i in (path["fc1"] / effect).argsort(descending=True, stable=True)[:5]}
    assert screen["path_screen_checked"] and set(screen["path_screen_checked"]) <= top <= set(screen["checked"])


def test_without_probes_the_second_order_estimate_is_the_first_order_one_at_the_patched_run() -> None:
    """Pins the direction of the move ``d`` (source minus patched run) and of the gradient: on a metric that is not
    stationary and no Hessian probes, the estimate is plain attribution patching (one point, the corrupted run)."""
    model = Embedder().eval()
    clean, corrupted = _pairs()
    view = ModelView.discover(model, clean[:2])
    layers = [view.layer("fc1")]
    target = torch.zeros(len(clean), dtype=torch.long)
    estimate = second_order_patching(view, layers, corrupted, clean, target, atp.label_margin, probes=0)["fc1"]
    first = attribution_patching(view, layers, clean, corrupted, target, atp.label_margin, steps=1)["fc1"]
    assert float(first.abs().max()) > 0.1
    torch.testing.assert_close(estimate.sum(1), first, rtol=1e-4, atol=1e-5)


def test_l207_keeps_the_path_screen_where_the_metric_is_not_stationary() -> None:
    model = Embedder().eval()
    clean, corrupted = _pairs()
    view = ModelView.discover(model, clean[:2])
    target = torch.zeros(len(clean), dtype=torch.long)
    share = metric_totals(view, clean, corrupted, target, atp.label_margin, first_order=True).first_order_share
    assert share > STATIONARY  # a margin of one output against the others is not at an extremum
    data = AuditData(inputs=clean, pairs=(clean, corrupted), labels=target)
    (finding,) = mechaudit.audit(model, data, select=["L207"], task="regression",
                                 behaviour={"kind": "output"}, output=0,
                                 rules={"L207": {"top_k": 5, "calibration": 10}}).findings
    screen = finding.evidence["screen"]
    assert screen["method"].startswith("attribution patching") and screen["first_order_share"] > STATIONARY
    assert np.isfinite(screen["first_order_share"])


def test_the_first_order_share_adds_each_pairs_term_so_opposite_pairs_do_not_cancel() -> None:
    per_pair = (torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64))
    totals = PatchingTotals(2.0, 2.0, 2, per_pair, torch.tensor([1.0, -1.0], dtype=torch.float64))
    assert totals.first_order_share == 1.0  # the sums are both 0: a share of the sums would read 0 (stationary)


def test_when_the_readers_cannot_be_checked_every_unit_stays_at_its_output(monkeypatch, caplog) -> None:
    from mechaudit.techniques import second_order

    def broken(*_args, **_kwargs):
        raise RuntimeError("a forward pass that fails on other inputs")
    monkeypatch.setattr(second_order, "checked_splits", broken)
    model = Embedder().eval()
    clean, corrupted = _pairs()
    view = ModelView.discover(model, clean[:2])
    assert patch_sites(view, [view.layer("fc1")], corrupted, clean) == {}
    assert "moves every unit at its output" in caplog.text


class MarkedBypass(nn.Module):
    """fc1 reaches the output through fc2 after a ReLU and, on the samples whose input 4 is set, also directly (a
    second path that only those inputs switch on)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 40), nn.Linear(40, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        return self.fc2(torch.relu(hidden)) + (x[:, 4:5] > 0.5) * hidden[:, :8] * 3


def _marked_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """64 pairs; the bypass is on for the last half only, so the first 16 never show it."""
    generator = torch.Generator().manual_seed(1)
    clean = torch.randn(64, 5, generator=generator)
    corrupted = clean + 0.5 * torch.randn(64, 5, generator=generator)
    for x in (clean, corrupted):
        x[:, 4] = (torch.arange(64) >= 32).float()
    return clean, corrupted


def test_a_second_path_only_some_pairs_switch_on_is_caught_by_the_random_sample() -> None:
    """The readers are checked on a seeded random sample of all the pairs: the first 16 alone (all unmarked)
    accept fc2 as fc1's only path; the random 16 hold marked pairs and reject it, so fc1 stays at its output."""
    from mechaudit.techniques.circuits import checked_splits

    torch.manual_seed(0)
    model = MarkedBypass().eval()
    clean, corrupted = _marked_pairs()
    view = ModelView.discover(model, clean[:2])
    first = checked_splits(view, corrupted, clean, 16, torch.device("cpu"), {})
    assert first.reader_of("fc1", "fc2") == "fc2"  # the first-16 check is blind to the bypass
    assert patch_sites(view, [view.layer("fc1")], corrupted, clean) == {}


def test_control_without_the_bypass_the_random_sample_accepts_the_reader() -> None:
    torch.manual_seed(0)
    model = MarkedBypass().eval()
    clean, corrupted = _marked_pairs()
    clean[:, 4], corrupted[:, 4] = 0.0, 0.0  # nothing marked: fc2 is fc1's only path
    view = ModelView.discover(model, clean[:2])
    sites = patch_sites(view, [view.layer("fc1")], corrupted, clean)
    assert sites["fc1"].reader.name == "fc2"


def test_when_finding_the_unaudited_readers_fails_it_warns_on_rank_0_only(monkeypatch, caplog) -> None:
    from mechaudit import distributed
    from mechaudit.techniques import second_order

    def broken(*_args, **_kwargs):
        raise RuntimeError("a hook that fails")
    monkeypatch.setattr(second_order, "module_readers", broken)
    model = Embedder().eval()
    clean, corrupted = _pairs()
    view = ModelView.discover(model, clean[:2])
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    assert patch_sites(view, [view.layer("fc1")], corrupted, clean)["fc1"].reader.name == "fc2"
    assert "finding them failed" not in caplog.text
    monkeypatch.setattr(distributed, "is_main", lambda: True)
    patch_sites(view, [view.layer("fc1")], corrupted, clean)
    assert "checks no unaudited reader (finding them failed: a hook that fails)" in caplog.text


def test_the_readers_are_not_compared_with_the_pairs_they_are_checked_on() -> None:
    """The comparison inputs (drawn from the pairs and their twins, seed 0) meet the checked pair at a position (the
    pair itself or its twin) at about chance rate (1/n), not more: the site check's own seed differs. With seed 0 for
    both, 276 of 3,036 positions meet (9%); at chance, about 1.5%."""
    from mechaudit.techniques.second_order import SITE_CHECK_SAMPLES, site_check_sample
    from mechaudit.techniques.unit_split import _drawn, comparison_pool

    met = drawn = 0
    for count in range(8, 200):
        ids = torch.arange(count)
        sample = site_check_sample(count, SITE_CHECK_SAMPLES)
        other = _drawn(comparison_pool(ids, ids), len(sample))  # a twin has its pair's id
        met, drawn = met + int((other == ids[sample]).sum()), drawn + len(sample)
    assert met < 0.03 * drawn
