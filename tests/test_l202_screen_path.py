"""L202's screen integrates the margin's gradient along the path to the ablated value (``screen_steps``): a unit
that mean ablation switches on through a ReLU (gradient 0 at its clean, negative activation) is missed by the
first-order screen at the unit's output and found by the path-integrated one, and by the first-order one at its
reader's input (after the ReLU, :mod:`mechaudit.techniques.site_ablation`); its control passes either way. The
screen's evidence states its agreement with the exact ablations on the accuracy drop and on the mean loss of label
margin, each with a bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mechaudit
from mechaudit.techniques import ablation_screen, atp

WIDTH, SWITCHED, DECOY = 300, 211, 17


class SwitchedOn(nn.Module):
    """300 hidden units before a ReLU. Unit 211 reads a sparse feature (0 on 80% of samples, 10 on the rest) minus
    0.5: off on most samples, yet its mean is 1.5, so mean ablation switches it on everywhere and adds ``weight``
    times 1.5 to class 1, which loses to class 0 by about 2 there. Unit 17 (always on) carries a Gaussian input's
    weight 1.3 on class 0: its mean ablation flips the few samples that input pushed to class 1 back (a few percent, a
    linear effect the first order predicts). The other units add a little to class 0."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, WIDTH), nn.Linear(WIDTH, 3)
        with torch.no_grad():
            for tensor in (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias):
                tensor.zero_()
            self.fc1.weight[:, 1] = 1.0
            self.fc2.weight[0] = 0.001
            self.fc1.weight[SWITCHED] = torch.tensor([1.0, 0.0, 0.0])
            self.fc1.bias[SWITCHED] = -0.5
            self.fc2.weight[:, SWITCHED] = torch.tensor([0.0, weight, 0.0])
            self.fc1.weight[DECOY] = torch.tensor([0.0, 0.0, 1.0])
            self.fc1.bias[DECOY] = 10.0
            self.fc2.weight[:, DECOY] = torch.tensor([1.3, 0.0, 0.0])
            self.fc2.bias.copy_(torch.tensor([2.0 - 13.0, 0.0, -100.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _inputs(count: int = 400) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(count, 3, generator=generator)
    inputs[:, 0] = 10.0 * (torch.rand(count, generator=generator) < 0.2)
    return inputs


def _audit(weight: float, steps: int):
    inputs = _inputs()
    model = SwitchedOn(weight).eval()
    labels = model(inputs).argmax(-1).detach()
    return mechaudit.audit(model, inputs, labels=labels, select=["L202"],
                           rules={"L202": {"screen_top_k": 1, "calibration": 4, "layer_top_k": 0,
                                           "screen_steps": steps}})


def test_the_path_integrated_screen_finds_a_unit_that_mean_ablation_switches_on() -> None:
    (found,) = [f for f in _audit(5.0, steps=2).findings if f.status == "fail"]
    assert found.location.component == f"fc1:u{SWITCHED}" and found.metric == "accuracy_drop"
    assert found.value > 0.5  # on most samples class 1 now wins
    assert found.evidence["screen"]["top_k_recall"] == 1.0


def test_the_first_order_screen_finds_it_at_its_reader_s_input() -> None:
    # fc2 reads fc1's units one by one after the ReLU: moved there, the switched unit's move is ReLU(mean) - 0
    (found,) = [f for f in _audit(5.0, steps=1).findings if f.status == "fail"]
    assert found.location.component == f"fc1:u{SWITCHED}" and found.value > 0.5
    assert found.evidence["screen"]["top_k_recall"] == 1.0


def test_at_its_output_the_first_order_screen_misses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from mechaudit.techniques import second_order

    monkeypatch.setattr(second_order, "patch_sites", lambda *args, **kwargs: {})  # every unit at its output
    (finding,) = _audit(5.0, steps=1).findings  # gradient 0 where the unit is off: the decoy ranks first
    assert finding.status == "pass" and f"fc1:u{SWITCHED}" not in finding.evidence["screen"]["checked"]
    assert finding.evidence["screen"]["checked"][0] == f"fc1:u{DECOY}"


@pytest.mark.parametrize("steps", [1, 2])
def test_control_a_weak_switched_unit_passes_either_way(steps: int) -> None:
    (finding,) = _audit(0.1, steps=steps).findings  # switched on, it adds 0.15 to class 1: no sample flips
    assert finding.status == "pass" and f"fc1:u{DECOY}" in finding.evidence["screen"]["checked"]
    assert finding.value < 0.1  # the decoy's linear drop (8.5%) is the largest


def test_the_evidence_states_agreement_on_the_drop_and_on_the_margin_with_intervals() -> None:
    (found,) = [f for f in _audit(5.0, steps=2).findings if f.status == "fail"]
    screen = found.evidence["screen"]
    drop, margin = screen["agreement"]["accuracy_drop"], screen["agreement"]["margin_loss"]
    assert drop["spearman"] == pytest.approx(screen["spearman"], abs=1e-6)
    for part in (drop, margin):  # all units but the two planted ones are alike: their exact values tie
        assert part["spearman"] == 1.0 and part["tied_exact"] == 0.8
        # a third of the resamples draw tied units only (no rho): no interval rather than one of the others
        assert part["spearman_interval"] is None and part["undefined_resamples"] > ablation_screen.MAX_UNDEFINED
        assert part["interval_method"].startswith("no interval")
    assert margin["top_k_recall"] == 1.0


def test_with_one_point_the_path_estimate_is_the_first_order_one() -> None:
    model = SwitchedOn(5.0).eval()
    inputs = _inputs(50)
    labels = model(inputs).argmax(-1)
    from mechaudit.model_view import ModelView
    view = ModelView.discover(model, inputs[:2], ("fc1",))
    modes = {"mean": ({"fc1": model.fc1(inputs).mean(0).detach().unsqueeze(-1)}, None)}
    first = atp.ablation_estimates(view, view.layers, inputs, labels, atp.label_margin, modes)["mean"]["fc1"]
    path = ablation_screen.interpolated_estimates(view, view.layers, inputs, labels, atp.label_margin, modes, 1, 256,
                                                  torch.device("cpu"))["mean"]["fc1"]
    assert torch.allclose(first, path)  # one point: the clean gradient alone
    two = ablation_screen.interpolated_estimates(view, view.layers, inputs, labels, atp.label_margin, modes, 2, 256,
                                                 torch.device("cpu"))["mean"]["fc1"]
    off = (model.fc1(inputs)[:, SWITCHED] < 0) & (labels == 0)
    assert (first[SWITCHED, off] == 0).all() and (two[SWITCHED, off] < 0).all()  # class 1 gains on label 0


def test_each_further_path_point_costs_a_forward_and_backward_pass_per_screened_layer() -> None:
    from mechaudit.checks.critical_units import CriticalUnitsParams, _cost
    from mechaudit.cost import LayerSize, Sizes

    layers = tuple(LayerSize(f"l{i}", "linear", WIDTH, WIDTH, True) for i in range(3))
    sizes = Sizes(samples=100, max_samples=100, batch_size=100, layers=layers, input_values=3, output_values=3)
    one, three = (_cost(sizes, CriticalUnitsParams(screen_steps=steps, screen_graddrop="off")) for steps in (1, 3))
    assert three.backward - one.backward == 2 * 3 * 100 and three.forward - one.forward == 2 * 3 * 100
    # GradDrop (auto: 2 blocks after l0) reruns every point of the screen once per block
    one, three = (_cost(sizes, CriticalUnitsParams(screen_steps=steps, screen_graddrop="auto")) for steps in (1, 3))
    assert three.backward - one.backward == pytest.approx((1 + 2) * 2 * 3 * 100)


def test_without_a_calibration_sample_neither_screen_states_a_recall() -> None:
    inputs = _inputs()
    model = SwitchedOn(5.0).eval()
    labels = model(inputs).argmax(-1).detach()
    (finding, *_) = mechaudit.audit(model, inputs, labels=labels, select=["L202"],
                                    rules={"L202": {"screen_top_k": 1, "calibration": 0, "layer_top_k": 0}}).findings
    screen = finding.evidence["screen"]
    assert screen["top_k_recall"] is None and screen["agreement"]["margin_loss"]["top_k_recall"] is None


def test_the_agreement_gives_no_interval_when_most_resamples_have_no_rank_correlation() -> None:
    rng = np.random.default_rng(0)
    exact = np.zeros(32)
    exact[0] = 1 / 64  # one unit's drop, the rest tied at 0: a third of the resamples miss it (no rho)
    tied = ablation_screen.agreement(rng.random(32), exact)
    assert tied["spearman_interval"] is None and tied["undefined_resamples"] > 0.3
    assert tied["interval_method"].startswith("no interval") and tied["tied_exact"] == pytest.approx(31 / 32)
    spread = ablation_screen.agreement(rng.random(32), rng.random(32))  # control: every resample defined
    assert spread["spearman_interval"] is not None and spread["undefined_resamples"] == 0.0


def _relu_model(inplace: bool, frozen: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, WIDTH), nn.ReLU(inplace=inplace), nn.Linear(WIDTH, 3)).eval()
    model.requires_grad_(not frozen)
    inputs = torch.randn(60, 4)
    return model, inputs, model(inputs).argmax(-1).detach()


def test_the_path_estimate_is_the_same_with_an_in_place_relu_and_frozen_parameters() -> None:
    from mechaudit.model_view import ModelView
    found = {}
    for inplace in (False, True):
        for frozen in (False, True):
            model, inputs, labels = _relu_model(inplace, frozen)
            view = ModelView.discover(model, inputs[:2], ("0",))
            with torch.no_grad():
                modes = {"mean": ({"0": model[0](inputs).mean(0).unsqueeze(-1)}, None)}
            found[inplace, frozen] = ablation_screen.interpolated_estimates(
                view, view.layers, inputs, labels, atp.label_margin, modes, 2, 256, torch.device("cpu"))["mean"]["0"]
    assert found[False, False].abs().max() > 0.01
    for estimate in found.values():  # an in-place ReLU after the moved layer must still gate the moved value
        assert torch.allclose(estimate, found[False, False], atol=1e-6)


def test_l202_with_two_path_points_audits_a_frozen_model_with_an_in_place_relu() -> None:
    model, inputs, labels = _relu_model(inplace=True, frozen=True)
    findings = mechaudit.audit(model, inputs, labels=labels, select=["L202"],
                               rules={"L202": {"screen_steps": 2, "calibration": 4}}).findings
    assert findings and all(f.status in ("pass", "fail") for f in findings)
    assert findings[0].evidence["screen"]["checked_exactly"] >= 1


def test_one_path_point_is_the_first_order_estimate_itself(monkeypatch) -> None:
    model, inputs, labels = _relu_model(inplace=False, frozen=False)
    from mechaudit.model_view import ModelView
    view = ModelView.discover(model, inputs[:2], ("0",))
    with torch.no_grad():
        modes = {"mean": ({"0": model[0](inputs).mean(0).unsqueeze(-1)}, None)}
    first = atp.ablation_estimates(view, view.layers, inputs, labels, atp.label_margin, modes)["mean"]["0"]
    calls = []
    original = atp.ablation_estimates
    monkeypatch.setattr(atp, "ablation_estimates", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    path = ablation_screen.interpolated_estimates(view, view.layers, inputs, labels, atp.label_margin, modes, 1, 256,
                                                  torch.device("cpu"))["mean"]["0"]
    assert calls and torch.equal(first, path)  # no copy of the gradients, no output-shaped ablated values


class DeadUnits(nn.Module):
    """Two 300-wide layers whose first 150 units never fire (bias -100 before a ReLU): mean ablation of one changes
    nothing, and later layers (tanh, LayerNorm) run on the scanner's repeated batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.mid, self.norm, self.out = (nn.Linear(6, WIDTH), nn.Linear(WIDTH, WIDTH),
                                                             nn.Linear(WIDTH, 77), nn.LayerNorm(77), nn.Linear(77, 5))
        with torch.no_grad():
            self.fc1.bias[:150] = -100.0
            self.fc2.bias[:150] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return self.out(self.norm(torch.tanh(self.mid(hidden))))


def test_an_ablation_that_changes_nothing_loses_exactly_zero_margin(monkeypatch) -> None:
    from mechaudit.checks import critical_units
    seen = []
    original = critical_units._Pool.evidence

    def spy(self, exact, *args):
        seen.append(exact)
        return original(self, exact, *args)
    monkeypatch.setattr(critical_units._Pool, "evidence", spy)
    torch.manual_seed(0)
    model = DeadUnits().eval()
    inputs = torch.randn(200, 6)
    report = mechaudit.audit(model, inputs, labels=model(inputs).argmax(-1).detach(), select=["L202"],
                             rules={"L202": {"flag_on": "mean", "calibration": 40}})
    agreement = report.findings[0].evidence["screen"]["agreement"]
    for part in agreement.values():  # a percentile interval need not hold its own estimate: only its bounds are sure
        low, high = part["spearman_interval"]
        assert -1.0 <= low <= high <= 1.0 and part["undefined_resamples"] <= ablation_screen.MAX_UNDEFINED
        assert part["interval_method"].startswith("percentile bootstrap over 56 checked units, 500 resamples")
    (exact,) = seen
    dead = torch.cat([result.margin_loss[torch.tensor(result.ids) < 150] for name, result in exact.items()
                      if name in ("fc1", "fc2")])
    assert len(dead) >= 10 and (dead == 0).all()  # clean margins from the scanner's own passes: no float noise
