"""Screen with gradients, confirm exactly (AtP*): L202 on a layer wider than the screen's threshold ablates only the
screen's top-k and a calibration sample exactly, finds the planted critical unit (and would not with random
scores), passes its control, reports the screen in its evidence, and scans every unit with ``exhaustive``; L207
screens a wide layer the same way; the ablation chunks stay within their output bound on a large-vocabulary model that cannot be traced."""

from __future__ import annotations

import pytest
import torch
from conftest import write_project
from fixtures.cue_models import cue_pairs, cued
from fixtures.localization_toys import patching_pairs
from fixtures.planted_circuit import PLANTED_NODES, planted, planted_data
from fixtures.toy_models import signal_mlp
from torch import nn

import mechaudit
from mechaudit.engine import run_audit
from mechaudit.loading import AuditData
from mechaudit.model_view import Layer, ModelView
from mechaudit.spec import load_spec
from mechaudit.techniques import ablation, atp
from mechaudit.techniques.ablation import ablation_loop, ablation_outputs
from mechaudit.techniques.ablation_scan import AblationScanner
from mechaudit.techniques.cue_sensitivity import cue_sensitivity

WIDTH, CRITICAL = 300, 137


class WideThreeClasses(nn.Module):
    """300 hidden units: every one but the planted ones adds a little to class 0 (no single one matters), and
    ``rare`` planted units starting at unit 137 alone decide class 2 (one planted unit: class 2 depends on it)."""

    def __init__(self, rare: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, WIDTH), nn.Linear(WIDTH, 3)
        planted = range(CRITICAL, CRITICAL + rare)
        with torch.no_grad():
            for tensor in (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias):
                tensor.zero_()
            for unit in range(WIDTH):
                if unit not in planted:
                    self.fc1.weight[unit, 0] = 1.0
                    self.fc2.weight[0, unit] = 1.0 / (WIDTH - rare)
            self.fc2.bias[1] = 0.2
            for unit in planted:
                self.fc1.weight[unit, 2] = 1.0
                self.fc1.bias[unit] = -1.4
                self.fc2.weight[2, unit] = 20.0 / rare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


SMALL_SCREEN = {"max_class_accuracy_drop": 0.25, "screen_top_k": 4, "calibration": 4}


def _audit(rare: int, **params):
    inputs = torch.randn(600, 4, generator=torch.Generator().manual_seed(0))
    model = WideThreeClasses(rare).eval()
    labels = model(inputs).argmax(-1).detach()
    return mechaudit.audit(model, inputs, labels=labels, select=["L202"], rules={"L202": {**SMALL_SCREEN, **params}})


def test_the_screen_puts_the_planted_critical_unit_in_its_top_k_and_only_the_chosen_units_are_ablated() -> None:
    result = _audit(1)
    (finding,) = [f for f in result.findings if f.status == "fail"]
    assert finding.location.component == f"fc1:u{CRITICAL}" and finding.metric == "class_accuracy_drop"
    screen = finding.evidence["screen"]
    assert screen["method"].startswith("attribution patching")
    assert screen["scored"] == WIDTH and screen["checked_exactly"] == 8 and screen["calibration"] == 4
    assert f"fc1:u{CRITICAL}" in screen["checked"]
    assert screen["top_k_recall"] == 1.0
    assert screen["missed"]["unchecked"] == WIDTH - 8 and screen["missed"]["calibration_over_threshold"] == 0
    assert 0 < screen["missed"]["unchecked_over_threshold_at_most"] < WIDTH - 8


def test_screened_audits_run_only_the_flagged_ablation_unless_asked_for_all() -> None:
    (one,) = [f for f in _audit(1).findings if f.status == "fail"]
    assert one.evidence["screen"]["exact_modes"] == ["mean"] and "zero_drop" not in one.evidence
    (every,) = [f for f in _audit(1, screened_modes="all").findings if f.status == "fail"]
    assert every.evidence["screen"]["exact_modes"] == ["zero", "mean", "resample"] and "zero_drop" in every.evidence


class WithSideLayer(WideThreeClasses):
    """``WideThreeClasses`` and a side layer (``side`` units) whose small contribution to class 1 no single unit
    carries."""

    def __init__(self, side: int) -> None:
        super().__init__(1)
        self.side, self.side_out = nn.Linear(4, side), nn.Linear(side, 3, bias=False)
        with torch.no_grad():
            self.side_out.weight.fill_(0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.side_out(torch.relu(self.side(x)))


def _side_audit(side: int = WIDTH, **params):
    inputs = torch.randn(600, 4, generator=torch.Generator().manual_seed(0))
    model = WithSideLayer(side).eval()
    labels = model(inputs).argmax(-1).detach()
    return mechaudit.audit(model, inputs, labels=labels, select=["L202"], rules={"L202": {**SMALL_SCREEN, **params}})


def _forced(monkeypatch: pytest.MonkeyPatch, chosen: list[int]) -> None:
    """The screen's budget spent on ``chosen`` (pooled indices) alone, wherever it ranks the units."""
    monkeypatch.setattr(atp, "select", lambda scores, *_args, **_kwargs: atp.Selection(chosen, [], len(scores)))


def test_one_budget_ranks_every_wide_layer_together_and_each_layer_s_best_unit_is_ablated_exactly() -> None:
    result = _side_audit()  # layer_top_k = 1 by default
    (failing,) = [f for f in result.findings if f.status == "fail" and f.location.layer == "fc1"]
    assert failing.location.component == f"fc1:u{CRITICAL}" and failing.metric == "class_accuracy_drop"
    screen = failing.evidence["screen"]
    assert screen["scored"] == 2 * WIDTH and screen["screen_top_k"] == 4 and screen["calibration"] == 4
    (side,) = [f for f in result.findings if f.location.layer == "side"]
    assert side.status == "pass" and side.metric == "accuracy_drop" and side.confidence != "uncertain"
    assert side.evidence["unchecked_predicted"]["top_ranked_checked"]
    assert screen["layer_top"] >= 1 and screen["checked_exactly"] == 4 + 4 + screen["layer_top"]
    assert any(name.startswith("side:") for name in screen["checked"])


def test_a_layer_at_most_the_threshold_wide_stays_exact_in_every_mode_beside_a_screened_one() -> None:
    result = _side_audit(side=20)
    (side,) = [f for f in result.findings if f.location.layer == "side"]
    assert side.evidence["screen"]["method"].startswith("exact ablation of every unit")
    assert side.evidence["screen"]["checked_exactly"] == 20 and "zero_drop" in side.evidence["top_units"][0]
    (failing,) = [f for f in result.findings if f.status == "fail" and f.location.layer == "fc1"]
    assert failing.evidence["screen"]["scored"] == WIDTH and failing.evidence["screen"]["exact_modes"] == ["mean"]
    pooled = _side_audit(side=20, exact_narrow_units=19)  # more narrow units than that: ranked with fc1
    (side,) = [f for f in pooled.findings if f.location.layer == "side"]
    assert side.evidence["screen"]["scored"] == WIDTH + 20 + 3  # fc1, side and the 3-unit fc2


def test_a_layer_without_an_exactly_ablated_unit_fails_on_its_predicted_class_critical_unit(monkeypatch) -> None:
    _forced(monkeypatch, [WIDTH + 3])  # one unit of the side layer; fc1 (and its planted unit) unchecked
    result = _side_audit(layer_top_k=0)
    (fc1,) = [f for f in result.findings if f.location.layer == "fc1"]
    assert fc1.status == "fail" and fc1.metric == "predicted_class_accuracy_drop" and fc1.value > 0.25
    assert f"fc1:u{CRITICAL}" in fc1.message and fc1.evidence["unchecked_predicted"]["units"] == WIDTH
    assert not any(name.startswith("fc1:") for name in fc1.evidence["screen"]["checked"])


def test_an_unchecked_unit_predicted_over_the_overall_threshold_fails_its_layer(monkeypatch) -> None:
    _forced(monkeypatch, [0])  # fc1:u0 (harmless) alone ablated exactly; the planted unit unchecked
    result = _audit(1, layer_top_k=0, max_class_accuracy_drop=1.0, max_accuracy_drop=0.05)
    (finding,) = result.findings
    assert finding.status == "fail" and finding.metric == "predicted_accuracy_drop" and finding.value > 0.05
    assert finding.evidence["unchecked_predicted"]["unit"] == f"fc1:u{CRITICAL}"


def test_a_pass_that_rests_on_other_units_than_the_layer_s_top_ranked_one_is_uncertain(monkeypatch) -> None:
    _forced(monkeypatch, [0])
    # the control, classes not judged: no unit critical, its best unit unchecked
    (finding,) = _audit(4, layer_top_k=0, max_class_accuracy_drop=1.0).findings
    assert finding.status == "pass" and finding.confidence == "uncertain"
    assert not finding.evidence["unchecked_predicted"]["top_ranked_checked"]
    assert finding.interval["method"].startswith("unmeasured")


def test_top_k_recall_resolves_ties_for_the_screen_and_the_lenient_variant_counts_every_tied_pick() -> None:
    exact = {0: 0.5, 1: 0.3, 2: 0.2, 3: 0.2, 4: 0.1}
    for recall in (atp.top_k_recall, atp.top_k_recall_at_kth):
        assert recall([0, 1, 3], exact) == 1.0  # unit 3 ties with the k-th exact value (unit 2's)
        assert recall([0, 1, 4], exact) == pytest.approx(2 / 3)
    tied = {0: 0.5, 2: 0.2, 3: 0.2}  # both picks tie at the k-th value, one place left, unit 0 missed
    assert atp.top_k_recall([2, 3], tied) == 0.5 and atp.top_k_recall_at_kth([2, 3], tied) == 1.0


def test_with_random_screen_scores_the_planted_unit_is_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    def random_scores(estimate: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
        return 0.01 * torch.rand(estimate.shape[0], generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(atp, "predicted_accuracy_drop", random_scores)
    (finding,) = _audit(1, layer_top_k=0).findings  # small random predictions: nothing flagged, nothing measured
    assert finding.status == "pass" and f"fc1:u{CRITICAL}" not in finding.evidence["screen"]["checked"]


def test_control_with_backups_passes_with_the_screen_in_its_evidence() -> None:
    result = _audit(4)
    assert not [f for f in result.findings if f.status == "fail"]
    (summary,) = result.findings
    assert "after the screen" in summary.message
    assert summary.evidence["screen"]["checked_exactly"] == 8
    assert summary.evidence["largest_class_drop"] < 0.25


def test_exhaustive_ablates_every_unit_exactly() -> None:
    result = _audit(1, exhaustive=True)
    (finding,) = [f for f in result.findings if f.status == "fail"]
    assert finding.location.component == f"fc1:u{CRITICAL}"
    assert finding.evidence["screen"]["checked_exactly"] == WIDTH
    assert finding.evidence["screen"]["method"].startswith("exact ablation of every unit (exhaustive")


def test_missed_effect_bound_is_the_rule_of_three_with_nothing_over_the_threshold() -> None:
    missed = atp.missed_effect([0.0] * 100, unchecked=1000, threshold=0.1)
    assert missed["unchecked_over_threshold_at_most"] == 30  # 1 - 0.05 ** (1 / 100) = 2.95%
    assert atp.missed_effect([0.2] * 10, unchecked=50, threshold=0.1)["unchecked_over_threshold_at_most"] == 50


class LargeVocabulary(nn.Module):
    """A next-token model whose output (samples, tokens, 5000) dwarfs its hidden layer, and that cannot be traced
    (data-dependent branch), so its ablations run through the batched hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.head = nn.Linear(4, 16), nn.Linear(16, 5000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc1(x))
        return self.head(hidden) if float(x.sum()) > -1e9 else -self.head(hidden)


def test_batched_hook_ablation_keeps_each_chunk_of_outputs_within_its_byte_bound(monkeypatch) -> None:
    model = LargeVocabulary().eval()
    inputs = torch.randn(8, 3, 4, generator=torch.Generator().manual_seed(0))
    layer = Layer("fc1", "linear", 16, 0)
    sizes: list[int] = []
    forward = ablation._ablated_forward

    def counted(*args, **kwargs):
        out = forward(*args, **kwargs)
        sizes.append(out.numel() * out.element_size())
        return out
    monkeypatch.setattr(ablation, "_ablated_forward", counted)
    bound = 4 * 8 * 3 * 5000 * 4  # four copies' logits
    values = torch.zeros(16, 3)
    got = ablation_outputs(model, model.fc1, layer, inputs, list(range(16)), values, 8, torch.device("cpu"),
                           max_output_bytes=bound, reduce=lambda out, _s: out.argmax(-1))
    assert max(sizes) <= bound and len(sizes) == 5  # one copy to measure, then chunks of four
    expected = ablation_loop(model, model.fc1, layer, inputs, list(range(16)), values).argmax(-1)
    assert torch.equal(got, expected)


class TwoHiddenUntraceable(nn.Module):
    """Two hidden layers and a data-dependent branch (not traceable: the scan uses batched hooks)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.head = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return self.head(hidden) if float(x.sum()) > -1e9 else -self.head(hidden)


def test_untraceable_resample_scan_captures_every_layer_s_source_in_one_pass_and_stays_exact() -> None:
    model = TwoHiddenUntraceable().eval()
    generator = torch.Generator().manual_seed(0)
    inputs, source = torch.randn(8, 4, generator=generator), torch.randn(8, 4, generator=generator)
    view = ModelView.discover(model, inputs[:2])
    layers = [view.layer("fc1"), view.layer("fc2")]
    scanner = AblationScanner(view, layers, torch.device("cpu"), inputs[:2])
    calls = []
    model.register_forward_pre_hook(lambda _module, args: calls.append(len(args[0])))
    units = {"fc1": [0, 5, 9], "fc2": [1, 2]}
    zeros = {"fc1": torch.zeros(16, 1), "fc2": torch.zeros(16, 1)}
    scanner.scan(inputs, {"zero": (zeros, None)}, batch_size=8, units=units)
    ablations = len(calls)
    calls.clear()
    got = scanner.scan(inputs, {"resample": (None, source)}, batch_size=8, units=units)["resample"]
    assert len(calls) == ablations + 1  # the source runs once for both layers
    for layer in layers:
        expected = ablation_loop(model, getattr(model, layer.name), layer, inputs, units[layer.name], source=source)
        assert torch.allclose(got[layer.name], expected)


CARRIER = 211


def _carrier_moved(model: nn.Module) -> nn.Module:
    """``signal_mlp`` with its carrier unit fc1:u0 swapped with fc1:u211 (a carrier at unit 0 would pass a test
    that reads the wrong index as 0)."""
    order = list(range(WIDTH))
    order[0], order[CARRIER] = CARRIER, 0
    with torch.no_grad():
        model.fc1.weight.copy_(model.fc1.weight[order])
        model.fc1.bias.copy_(model.fc1.bias[order])
        model.fc2.weight.copy_(model.fc2.weight[:, order])
    return model


def _patching(**params):
    clean, corrupted = patching_pairs(carried=True)
    model = _carrier_moved(signal_mlp(spread=1, hidden=WIDTH))
    inputs = torch.cat([clean, corrupted])
    data = AuditData(inputs=inputs, labels=model(inputs).argmax(-1).detach(), pairs=(clean, corrupted))
    (finding,) = mechaudit.audit(model, data, select=["L207"], rules={"L207": params}).findings
    return finding


def test_l207_screens_a_wide_layer_and_confirms_the_carrier_exactly() -> None:
    finding = _patching(top_k=5, calibration=10)
    assert finding.location.component == f"fc1:u{CARRIER}" and finding.value > 0.99
    screen = finding.evidence["screen"]
    assert screen["scored"] == WIDTH and screen["checked_exactly"] == 15 and screen["calibration"] == 10
    assert finding.evidence["verified"] == 15 and screen["top_k_recall"] == 1.0
    assert screen["missed"]["largest_calibration_effect"] < 1e-6  # no other unit carries anything


def test_l207_exhaustive_patches_every_component() -> None:
    finding = _patching(top_k=5, exhaustive=True)
    assert finding.location.component == f"fc1:u{CARRIER}"
    assert finding.evidence["verified"] == WIDTH and finding.evidence["screen"]["checked_exactly"] == WIDTH


def _logit(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return out.gather(1, t.view(-1, 1)).squeeze(1)


def test_frozen_parameters_still_give_the_screen_its_gradients() -> None:
    """Token inputs take no gradient and the embedding is frozen: the hooked activation is a new leaf, which the
    ReLU after it must not modify in place."""
    model = cued().requires_grad_(False)
    inputs, _ = cue_pairs()
    view = ModelView.discover(model, inputs[:2])
    layer = view.layer("fc1")
    outputs, grads = atp.activations_and_gradients(view, [layer], inputs, model(inputs).argmax(-1), _logit)
    assert grads["fc1"].abs().sum() > 0 and torch.allclose(outputs["fc1"], model.fc1(model.embed(inputs).flatten(1)))


class ConvReLU(nn.Module):
    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(1, 3, 3), nn.ReLU(inplace=inplace), nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("frozen", [False, True])
def test_an_in_place_relu_after_the_layer_leaves_the_screen_unchanged(frozen: bool) -> None:
    torch.manual_seed(0)
    reference = ConvReLU(inplace=False).eval().requires_grad_(not frozen)
    in_place = ConvReLU(inplace=True).eval().requires_grad_(not frozen)
    in_place.load_state_dict(reference.state_dict())
    generator = torch.Generator().manual_seed(1)
    inputs, source = torch.randn(20, 1, 6, 6, generator=generator), torch.randn(20, 1, 6, 6, generator=generator)
    targets = reference(inputs).argmax(-1)
    estimates = []
    for model in (reference, in_place):
        view = ModelView.discover(model, inputs[:2])
        layer = view.layer("conv")
        modes = {"zero": ({"conv": torch.zeros(3, 16)}, None), "resample": (None, source)}
        estimates.append(atp.ablation_estimates(view, [layer], inputs, targets, _logit, modes))
    for mode in ("zero", "resample"):
        assert estimates[0][mode]["conv"].abs().sum() > 0
        assert torch.allclose(estimates[0][mode]["conv"], estimates[1][mode]["conv"])


def test_l208_screened_confirms_the_planted_pathway_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atp, "SCREEN_ABOVE", 2)  # screen the toy's few components
    with_cue, without_cue = cue_pairs()
    model = cued()
    view = ModelView.discover(model, without_cue[:2])
    result = cue_sensitivity(view, with_cue, without_cue, top_k=2, calibration=2)
    assert result.pathway == ["fc1:u2"] and result.pathway_share == pytest.approx(1.0, abs=1e-4)
    assert result.screen["checked_exactly"] == 4 and result.screen["calibration"] == 2
    assert result.screen["method"].startswith("attribution patching")
    assert result.exact_changes["fc1:u2"] > 0 and "fc1:u3" in result.exact_changes
    assert result.exact_changes["fc1:u3"] == 0.0
    exhaustive = cue_sensitivity(view, with_cue, without_cue, top_k=2, exhaustive=True)
    assert exhaustive.pathway == ["fc1:u2"] and exhaustive.screen["checked_exactly"] == exhaustive.screen["scored"]


def test_r304_screened_ablates_the_top_candidates_and_a_calibration_sample(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(atp, "SCREEN_ABOVE", 2)  # screen the planted circuit's few units
    x = planted_data()
    labels = planted().eval()(x).argmax(1).detach()
    project = write_project(tmp_path, arrays={"inputs": x.numpy(), "labels": labels.numpy()},
                            data_table='labels = "labels"\n', model_table='factory = "fixtures.planted_circuit:planted"',
                            extra='[behaviour]\nkind = "class_logit"\ntarget = "0"\n[audit]\nselect = ["R304"]\n'
                                  '[audit.rules.R304]\ncandidates = 3\ncalibration = 2\n')
    result = run_audit(load_spec(project.spec))
    failing = [f for f in result.findings if f.status == "fail"]
    assert {f.location.component for f in failing} == PLANTED_NODES
    screen = failing[0].evidence["screen"]
    assert screen["checked_exactly"] == 5 and screen["calibration"] == 2 and screen["top_k_recall"] == 1.0


class SharedTwice(nn.Module):
    """One Linear layer called twice per forward pass (weight sharing)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shared(torch.relu(self.shared(x))))


def test_capture_keeps_the_first_call_of_a_module_called_twice_per_forward() -> None:
    model = SharedTwice().eval()
    inputs = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    layer = Layer("shared", "linear", 4, 0)
    captured = ablation.capture_layers(model, [(model.shared, layer)], inputs)
    assert captured["shared"].shape == (6, 4, 1)
    assert torch.allclose(captured["shared"][:, :, 0], model.shared(inputs))


class ReluMlp(nn.Module):
    """A pre-ReLU hidden layer read unit by unit by the output layer (``bypass``: also read whole by a second
    Linear, so the output layer is not its only path)."""

    def __init__(self, bypass: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 12), nn.Linear(12, 3)
        self.skip = nn.Linear(12, 3) if bypass else None

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(x)

    def rest(self, h: torch.Tensor) -> torch.Tensor:
        out = self.fc2(torch.relu(h))
        return out + self.skip(h) if self.skip is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.hidden(x))


class ReluConv(nn.Module):
    """A pre-ReLU conv layer read through ReLU, max-pool and flattening by the output layer, both audited (as in
    `digits`; an unaudited reader is looked for after Linear layers only)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(1, 5, 3, padding=1), nn.Linear(5 * 2 * 2, 3)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def rest(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.max_pool2d(torch.relu(h), 2), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.hidden(x))


def _first_logit(outputs: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
    return outputs[:, 0]  # linear in the output layer's input: a first-order estimate there is exact


def _site_problem(model: nn.Module, shape: tuple[int, ...]):
    from mechaudit.techniques import second_order

    inputs = torch.randn(64, *shape, generator=torch.Generator().manual_seed(1))
    names = ("fc1",) if isinstance(model, ReluMlp) else ("conv", "fc")
    view = ModelView.discover(model.eval(), inputs[:2], names)
    name = names[0]
    with torch.no_grad():
        hidden = model.hidden(inputs)
    means = hidden.mean(0).flatten(1) if hidden.dim() == 4 else hidden.mean(0).unsqueeze(-1)
    source = inputs.roll(1, 0)
    values = {layer.name: means if layer.name == name else torch.zeros(layer.size, 1) for layer in view.layers}
    modes = {"mean": (values, None), "resample": (None, source)}
    sites = second_order.patch_sites(view, view.layers, inputs, None, 64, torch.device("cpu"), rule="test")
    return view, inputs, hidden, means.view_as(hidden[0]), model.hidden(source).detach(), modes, sites


def _exact_changes(model: nn.Module, hidden: torch.Tensor, replacement: torch.Tensor) -> torch.Tensor:
    """(units, samples): the first logit's change when each unit alone takes ``replacement`` (broadcast)."""
    with torch.no_grad():
        clean = model.rest(hidden)[:, 0]
        changes = []
        for unit in range(hidden.shape[1]):
            ablated = hidden.clone()
            ablated[:, unit] = replacement.expand_as(hidden)[:, unit]
            changes.append(model.rest(ablated)[:, 0] - clean)
    return torch.stack(changes)


@pytest.mark.parametrize("model, shape", [(ReluMlp(), (4,)), (ReluConv(), (1, 4, 4))], ids=["mlp", "conv-pool"])
def test_at_the_reader_s_input_the_screen_of_a_pre_relu_unit_is_its_exact_ablation(model, shape) -> None:
    from mechaudit.techniques import ablation_screen

    view, inputs, hidden, mean, resampled, modes, sites = _site_problem(model, shape)
    layer = view.layers[0]
    assert set(sites) == {layer.name} and sites[layer.name].reader.name == ("fc2" if layer.name == "fc1" else "fc")
    targets = torch.zeros(len(inputs), dtype=torch.long)
    cpu = torch.device("cpu")
    at_reader = ablation_screen.interpolated_estimates(view, view.layers, inputs, targets, _first_logit, modes, 1, 24,
                                                       cpu, sites=sites)
    at_output = ablation_screen.interpolated_estimates(view, view.layers, inputs, targets, _first_logit, modes, 1, 24,
                                                       cpu)
    for mode, replacement in (("mean", mean.unsqueeze(0)), ("resample", resampled)):
        exact = _exact_changes(model, hidden, replacement)
        assert torch.allclose(at_reader[mode][layer.name], exact, atol=1e-5)  # the ReLU's kink crossed exactly
        # at the output the ReLU's slope at the clean value stands in for it: units it switches are misjudged
        assert (at_output[mode][layer.name] - exact).abs().max() > 0.1 * exact.abs().max()


def test_a_unit_read_past_its_reader_keeps_its_output_and_the_screen_its_first_order_estimate() -> None:
    from mechaudit.techniques import ablation_screen

    model = ReluMlp(bypass=True)
    view, inputs, hidden, mean, resampled, modes, sites = _site_problem(model, (4,))
    assert sites == {}  # fc2 is not fc1's only path: no reader's input to move its units at
    targets = model(inputs).argmax(-1).detach()
    found = ablation_screen.interpolated_estimates(view, view.layers, inputs, targets, atp.label_margin, modes, 1, 64,
                                                   torch.device("cpu"), sites=sites)
    plain = atp.ablation_estimates(view, view.layers, inputs, targets, atp.label_margin, modes)
    assert all(torch.equal(found[m]["fc1"], plain[m]["fc1"]) for m in modes)


def test_two_path_points_at_the_reader_s_input_stay_exact_for_a_metric_linear_there() -> None:
    from mechaudit.techniques import ablation_screen

    model = ReluMlp()
    view, inputs, hidden, mean, _, modes, sites = _site_problem(model, (4,))
    targets = torch.zeros(len(inputs), dtype=torch.long)
    two = ablation_screen.interpolated_estimates(view, view.layers, inputs, targets, _first_logit,
                                                 {"mean": modes["mean"]}, 2, 64, torch.device("cpu"), sites=sites)
    assert torch.allclose(two["mean"]["fc1"], _exact_changes(model, hidden, mean.unsqueeze(0)), atol=1e-5)


@pytest.mark.slow
def test_gpt2_s_mlp_neurons_are_moved_at_c_proj_s_input_after_the_gelu() -> None:
    transformers = pytest.importorskip("transformers")
    from mechaudit.loading.huggingface import LogitsOnly
    from mechaudit.techniques import ablation_screen, second_order

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_embd=32, n_layer=1, n_head=4, n_positions=8,
                                     attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(config).eval()
    model = LogitsOnly(hf)
    inputs = torch.randint(0, 40, (24, 8), generator=torch.Generator().manual_seed(0))
    name = "transformer.h.0.mlp.c_fc"
    view = ModelView.discover(model, inputs[:2], (name,))
    mlp = hf.transformer.h[0].mlp
    seen = {}
    handle = mlp.c_fc.register_forward_hook(lambda _m, _a, out: seen.__setitem__("pre", out.detach()))
    with torch.no_grad():
        labels = model(inputs)[:, -1].argmax(-1)
    handle.remove()
    mean = seen["pre"].mean(0)  # (tokens, neurons)

    def margin(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return atp.label_margin(outputs[:, -1], targets)
    sites = second_order.patch_sites(view, view.layers, inputs, None, 24, torch.device("cpu"), rule="test")
    assert sites[name].reader.name == "transformer.h.0.mlp.c_proj"
    modes = {"mean": ({name: mean.T}, None)}
    found = ablation_screen.interpolated_estimates(view, view.layers, inputs, labels, margin, modes, 1, 24,
                                                   torch.device("cpu"), sites=sites)["mean"][name]
    # independently: (act(mean) - act(a)) . d margin / d(c_proj's input), per neuron summed over the tokens
    read = {}

    def keep(_module, args):
        read["x"] = args[0].detach().requires_grad_(True)
        return (read["x"],)
    handle = mlp.c_proj.register_forward_pre_hook(keep)
    margin(model(inputs), labels).sum().backward()
    handle.remove()
    expected = ((mlp.act(mean).unsqueeze(0) - read["x"].detach()) * read["x"].grad).sum(1).T
    assert torch.allclose(found, expected, atol=1e-5)


class ReluChain(nn.Module):
    """fc1 -> ReLU -> fc2 -> ReLU -> fc3: fc1 read unit by unit by fc2, fc2 by fc3 (``bypass``: fc2 also read
    whole by ``skip``, so it stays at its output)."""

    def __init__(self, bypass: bool = False) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 10), nn.Linear(10, 6), nn.Linear(6, 3)
        self.skip = nn.Linear(6, 3) if bypass else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(torch.relu(self.fc1(x)))
        out = self.fc3(torch.relu(h))
        return out + self.skip(h) if self.skip is not None else out


def _chain_problem(bypass: bool, zero: bool):
    from mechaudit.techniques import second_order

    model = ReluChain(bypass).eval()
    inputs = torch.randn(48, 4, generator=torch.Generator().manual_seed(4))
    view = ModelView.discover(model, inputs[:2], ("fc1", "fc2"))
    with torch.no_grad():
        h1 = model.fc1(inputs)
        h2 = model.fc2(torch.relu(h1))
    values = {"fc1": (torch.zeros(10) if zero else h1.mean(0)).unsqueeze(-1),
              "fc2": (torch.zeros(6) if zero else h2.mean(0)).unsqueeze(-1)}
    sites = second_order.patch_sites(view, view.layers, inputs, None, 48, torch.device("cpu"), rule="test")
    return model, view, inputs, {"m": (values, None)}, sites


@pytest.mark.parametrize("zero", [False, True], ids=["mean", "zero"])
def test_two_read_sites_in_series_at_once_equal_one_at_a_time(zero: bool) -> None:
    from mechaudit.techniques import ablation_screen

    model, view, inputs, modes, sites = _chain_problem(bypass=False, zero=zero)
    assert set(sites) == {"fc1", "fc2"}
    targets = torch.zeros(len(inputs), dtype=torch.long)
    cpu = torch.device("cpu")
    both = ablation_screen.interpolated_estimates(view, view.layers, inputs, targets, _first_logit, modes, 1, 16,
                                                  cpu, sites=sites)["m"]
    for layer in view.layers:
        alone = ablation_screen.interpolated_estimates(view, [layer], inputs, targets, _first_logit, modes, 1, 16,
                                                       cpu, sites={layer.name: sites[layer.name]})["m"]
        assert torch.allclose(both[layer.name], alone[layer.name], atol=1e-6)
    with torch.no_grad():  # fc2, read by the output layer (linear there): exact, the ReLU crossed
        h2 = model.fc2(torch.relu(model.fc1(inputs)))
        value = modes["m"][0]["fc2"][:, 0]
        exact = torch.stack([model.fc3(torch.relu(torch.where(torch.arange(6) == u, value, h2)))[:, 0]
                             - model.fc3(torch.relu(h2))[:, 0] for u in range(6)])
    assert torch.allclose(both["fc2"], exact, atol=1e-5)


def test_a_mixed_call_moves_the_read_layer_at_its_reader_and_keeps_the_bypassed_one_at_its_output() -> None:
    from mechaudit.techniques import ablation_screen

    model, view, inputs, modes, sites = _chain_problem(bypass=True, zero=False)
    assert set(sites) == {"fc1"}  # fc2 is also read whole by skip
    targets = model(inputs).argmax(-1).detach()
    cpu = torch.device("cpu")
    mixed = ablation_screen.interpolated_estimates(view, view.layers, inputs, targets, atp.label_margin, modes, 1,
                                                   16, cpu, sites=sites)["m"]
    alone = ablation_screen.interpolated_estimates(view, [view.layer("fc1")], inputs, targets, atp.label_margin,
                                                   modes, 1, 16, cpu, sites=sites)["m"]
    plain = atp.ablation_estimates(view, view.layers, inputs, targets, atp.label_margin, modes)["m"]
    assert torch.allclose(mixed["fc1"], alone["fc1"], atol=1e-6)
    assert torch.allclose(mixed["fc2"], plain["fc2"], atol=1e-6)
    assert (mixed["fc1"] - plain["fc1"]).abs().max() > 1e-3  # fc1 really moved elsewhere


def test_two_path_points_at_the_reader_s_input_follow_a_metric_quadratic_there() -> None:
    """A metric quadratic in the reader's input (the square of the first logit): two left Riemann points, 0 and
    1/2, of the straight path at the reader's input give ``delta . (g(0) + g(1/2)) / 2``, computed here by hand;
    points elsewhere (the unit's pre-activation, the trapezoid's 0 and 1) give another value."""
    from mechaudit.techniques import ablation_screen

    model = ReluMlp()
    view, inputs, hidden, mean, _, modes, sites = _site_problem(model, (4,))
    targets = torch.zeros(len(inputs), dtype=torch.long)

    def square(outputs: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
        return outputs[:, 0] ** 2
    two = ablation_screen.interpolated_estimates(view, view.layers, inputs, targets, square, {"mean": modes["mean"]},
                                                 2, 64, torch.device("cpu"), sites=sites)["mean"]["fc1"]
    start, end = torch.relu(hidden), torch.relu(mean).unsqueeze(0).expand_as(hidden)

    def gradient(alpha: float) -> torch.Tensor:
        read = (start + alpha * (end - start)).detach().requires_grad_(True)
        (model.fc2(read)[:, 0] ** 2).sum().backward()
        return read.grad
    expected = ((end - start) * (gradient(0.0) + gradient(0.5)) / 2).T
    assert torch.allclose(two, expected, atol=1e-5)
    trapezoid = ((end - start) * (gradient(0.0) + gradient(1.0)) / 2).T
    assert (trapezoid - expected).abs().max() > 1e-3  # the test tells the interpolation points apart


class SkipsItsReader(nn.Module):
    """``fc1`` -> ReLU -> ``fc2`` (its reader, the output), except on a batch holding a sample whose last feature is
    above 50: there the output is ``other`` of the ReLU's output, and ``fc2`` does not run (``skip`` False: the
    control, ``fc2`` always)."""

    def __init__(self, skip: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.other = nn.Linear(4, 300), nn.Linear(300, 3), nn.Linear(300, 3)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc1(x))
        return self.other(hidden) if self.skip and bool((x[:, 3] > 50).any()) else self.fc2(hidden)


def _reader_skipping_inputs() -> torch.Tensor:
    from mechaudit.techniques.second_order import SITE_CHECK_SAMPLES, site_check_sample

    inputs = torch.randn(120, 4, generator=torch.Generator().manual_seed(0))
    checked = set(site_check_sample(len(inputs), SITE_CHECK_SAMPLES).tolist())
    inputs[next(i for i in range(len(inputs)) if i not in checked), 3] = 100.0  # not among the readers' check
    return inputs


@pytest.mark.parametrize("skip", [True, False])
def test_l202_falls_back_to_the_outputs_when_a_reader_does_not_run_in_the_screen(skip: bool) -> None:
    model, inputs = SkipsItsReader(skip).eval(), _reader_skipping_inputs()
    finding = mechaudit.audit(model, inputs, labels=model(inputs).argmax(-1).detach(), select=["L202"],
                              rules={"L202": {"calibration": 4}}).findings[0]
    screen = finding.evidence["screen"]
    assert finding.status in ("pass", "fail")
    if skip:
        assert screen["sites"]["at_readers_input"] == [] and "SiteNotRun" in screen["sites"]["fallback"]
        assert "fell back to the outputs" in screen["method"]
    else:
        assert screen["sites"] == {"at_readers_input": ["fc1"], "fallback": None}
        assert "1 layer(s) at their reader's input" in screen["method"]


def test_l202_leaves_a_memory_error_of_the_screen_to_the_engine_s_retry(monkeypatch) -> None:
    from mechaudit.techniques import graddrop

    calls = []

    def out_of_memory(choice, view, layers, inputs, targets, metric, modes, sites, steps, batch_size, *args):
        calls.append((bool(sites), batch_size))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(graddrop, "site_screen", out_of_memory)
    model, inputs = SkipsItsReader(skip=False).eval(), _reader_skipping_inputs()
    finding = mechaudit.audit(model, inputs, labels=model(inputs).argmax(-1).detach(), select=["L202"],
                              rules={"L202": {"calibration": 4}}, batch_size=64).findings[0]
    assert finding.status == "error" and "ran out of memory" in finding.message
    assert calls == [(True, 64), (True, 32)]  # never rerun at the outputs; the engine's retry with half the batch
