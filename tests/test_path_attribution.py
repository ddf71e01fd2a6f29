"""The path screen (EAP-IG, :mod:`mechaudit.techniques.path_attribution`) and R304's screen of its own intervention.

Planted: unit 0 reaches the metric through a soft kink, ``3 softplus(10 (1 - h)) / 10``: at its activation (2) the
slope is ~0, so one-step attribution estimates ~0 for ablating it to its mean (0), whose exact effect is ~3; unit 1
is linear (exact effect 1). Ten path points rank unit 0 first, one point ranks it last. Control: both units linear,
where every step count agrees with the exact effects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mechaudit.model_view import ModelView
from mechaudit.techniques import atp
from mechaudit.techniques.path_attribution import mean_toward, path_estimates, path_points


class TwoUnits(nn.Module):
    def __init__(self, kinked: bool) -> None:
        super().__init__()
        self.kinked = kinked
        self.fc1 = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(2))
            self.fc1.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        first = 3 * F.softplus(10 * (1 - h[:, 0])) / 10 if self.kinked else 1.5 * h[:, 0]
        return (first + h[:, 1]).unsqueeze(1)


def _estimates(kinked: bool, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    model = TwoUnits(kinked).eval()
    x = torch.tensor([[2.0, 1.0]]).repeat(4, 1)
    view = ModelView.discover(model, x[:2], ("fc1",))
    layer = view.layer("fc1")
    means = {"fc1": torch.zeros(2, 1)}  # mean ablation writes 0 into both units
    metric = lambda outputs, _targets: outputs[:, 0]  # noqa: E731
    found = path_estimates(view, [layer], x, torch.zeros(4), metric, steps, toward=mean_toward(means))["fc1"]
    exact = []
    with torch.no_grad():
        for unit in range(2):
            ablated = x.clone()
            ablated[:, unit] = 0
            exact.append(float((model(ablated) - model(x)).abs().mean()))
    return found.abs().mean(1), torch.tensor(exact)


def test_the_path_screen_ranks_a_unit_behind_a_kink_first_where_one_step_misses_it() -> None:
    one, exact = _estimates(kinked=True, steps=1)
    ten, _ = _estimates(kinked=True, steps=10)
    assert exact[0] > 2.5 and abs(exact[1] - 1) < 1e-6
    assert one[0] < 0.01 < one[1]                          # one step: the kinked unit ranked last
    assert ten[0] > ten[1] and abs(ten[0] - exact[0]) < 0.1  # ten points: first, and about its exact effect


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_control_every_step_count_agrees_with_exact_on_linear_units(steps: int) -> None:
    found, exact = _estimates(kinked=False, steps=steps)
    assert torch.allclose(found, exact, atol=1e-5)


def test_path_points_are_the_one_point_gradient_or_the_trapezoid_rule() -> None:
    assert path_points(1) == [(0.0, 1.0)]
    assert path_points(3) == [(0.0, 0.25), (0.5, 0.5), (1.0, 0.25)]
    assert abs(sum(w for _, w in path_points(10)) - 1) < 1e-12
    with pytest.raises(ValueError):
        path_points(0)


@pytest.mark.slow  # one R304 audit of the embedded digits CNN
def test_r304_screen_estimates_the_mean_ablation_it_confirms(monkeypatch: pytest.MonkeyPatch) -> None:
    """`digits`, its 56 units screened (threshold lowered) and all of them ablated exactly (10 candidates and a
    calibration sample of 46): the screen of the mean ablation itself, at the rule's ablation sites and averaged in
    absolute value per sample as the loss is, agrees with the exact losses (measured: Spearman 0.998, top-10 recall
    1.0, ``benchmarks/screen_steps.py``) where the former screen, the circuit rules' signed node scores against the
    corrupted inputs, did not (0.888, top-10 recall 0.5)."""
    from mechaudit.engine import run_audit
    from mechaudit.examples import example_spec
    from mechaudit.spec import Options, load_spec

    monkeypatch.setattr(atp, "SCREEN_ABOVE", 2)
    spec = load_spec(example_spec("digits"), base=Options(
        select=("R304",), rules=(("R304", "test", {"candidates": 10, "calibration": 46}),)))
    findings = [f for f in run_audit(spec).findings if f.rule_id == "R304"]
    assert findings and all(f.status != "error" for f in findings)
    screen = findings[0].evidence["screen"]
    assert "mean-ablated" in screen["method"] and screen["checked_exactly"] == 56
    assert screen["spearman"] > 0.95
    assert screen["top_k_recall"] >= 0.9


class TokenMLP(nn.Module):
    """A transformer-style MLP on (samples, tokens, features): ``fc1``'s neurons (after the GELU) are read at
    ``fc2``'s input, per token; the output is linear in that input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(4, 6), nn.Linear(6, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc2(F.gelu(self.fc1(x))).mean(1))


def test_a_token_axis_read_site_keeps_tokens_and_units_apart() -> None:
    """At a read site with a token axis (an MLP neuron read at the down projection, every token), the screen's
    alpha = 0 pass is the intact run and, the metric linear in the reader's input, its one-step estimates are the
    exact mean-ablation effects per unit and sample (a split input reshaped instead of joined mixes tokens and
    units: neither holds)."""
    from mechaudit.techniques.node_ablation import behaviour_under_ablation, read_sites

    torch.manual_seed(0)
    model = TokenMLP().eval()
    x = torch.randn(8, 5, 4)
    view = ModelView.discover(model, x[:2], ("fc1", "fc2", "out"))
    read_in: list[torch.Tensor] = []
    with torch.no_grad():
        handle = model.fc2.register_forward_pre_hook(lambda _m, args: read_in.append(args[0]))
        intact = model(x)
        handle.remove()
    sites = read_sites(view, {"fc1": "fc2"}, {"fc2": read_in[0].mean(0)})
    values = {"fc1": torch.zeros(6, 5), "fc2": torch.zeros(4, 5)}
    outputs: list[torch.Tensor] = []

    def metric(out: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
        outputs.append(out.detach().clone())
        return out[:, 0]
    targets, cpu = torch.zeros(8), torch.device("cpu")
    found = path_estimates(view, [view.layer("fc1")], x, targets, metric, 1, toward=mean_toward(values, sites),
                           sites=sites)["fc1"]
    assert torch.allclose(outputs[0], intact, atol=1e-6)
    base = behaviour_under_ablation(view, x, targets, metric, [], values, 256, cpu, sites)
    exact = torch.stack([behaviour_under_ablation(view, x, targets, metric, [f"fc1:u{u}"], values, 256, cpu, sites)
                         - base for u in range(6)])
    assert exact.abs().max() > 1e-3
    assert torch.allclose(found, exact, atol=1e-5)


def test_the_screens_cost_is_charged_whenever_they_run() -> None:
    """R304 screens above SCREEN_ABOVE units unless exhaustive, even when its top candidates and calibration
    sample cover every unit; L207's one-step screen adds a no-grad pass over the clean inputs."""
    from mechaudit.checks.patching import PatchingParams
    from mechaudit.checks.patching import _cost as patching_cost
    from mechaudit.checks.single_points import SinglePointsParams
    from mechaudit.checks.single_points import _cost as single_points_cost
    from mechaudit.cost import LayerSize, Sizes

    units = atp.SCREEN_ABOVE + 4
    sizes = Sizes(samples=100, max_samples=100, batch_size=50, input_values=4, output_values=2,
                  layers=(LayerSize("h", "dense", units, units, True),))
    covering = single_points_cost(sizes, SinglePointsParams(calibration=units))
    exhaustive = single_points_cost(sizes, SinglePointsParams(calibration=units, exhaustive=True))
    assert covering.backward - exhaustive.backward >= 100  # the screen's backward pass over the samples
    one, two = (patching_cost(sizes, PatchingParams(samples=100, screen_steps=s)) for s in (1, 2))
    assert two.backward - one.backward == 100 and two.forward == one.forward  # two points: the clean run is one
