"""Each check on a planted example and on its control."""

from pathlib import Path

import torch
from conftest import write_project
from fixtures.exactness import assert_equal_up_to_rounding
from fixtures.toy_models import signal_mlp

from mechaudit.engine import run_audit
from mechaudit.model_view import ModelView
from mechaudit.spec import load_spec
from mechaudit.techniques.ablation import ablation_outputs


def _audit(tmp_path: Path, select: str, **factory_args):
    project = write_project(tmp_path, factory_args=factory_args, data_table='labels = "labels"',
                            extra=f'[audit]\nselect = ["{select}"]')
    return run_audit(load_spec(project.spec))


def test_d101_flags_a_layer_with_planted_dead_units(tmp_path: Path) -> None:
    result = _audit(tmp_path / "a", "D101", spread=2, dead=5)
    (finding,) = [f for f in result.findings if f.metric == "dead_fraction"]
    assert finding.status == "fail" and finding.value == 5 / 8
    assert finding.evidence["dead_units"] == ["fc1:u3", "fc1:u4", "fc1:u5", "fc1:u6", "fc1:u7"]


def test_d101_control_without_dead_units_passes(tmp_path: Path) -> None:
    result = _audit(tmp_path / "b", "D101", spread=2, dead=0)
    (finding,) = [f for f in result.findings if f.metric == "dead_fraction"]
    assert finding.status == "pass" and finding.value == 0.0


def test_l202_flags_a_single_critical_unit(tmp_path: Path) -> None:
    result = _audit(tmp_path / "a", "L202", spread=1)
    failing = [f for f in result.findings if f.status == "fail"]
    assert [f.location.component for f in failing] == ["fc1:u0"]
    assert failing[0].value > 0.25  # all x0 > 0.5 samples are lost


def test_l202_control_with_a_spread_signal_passes(tmp_path: Path) -> None:
    result = _audit(tmp_path / "b", "L202", spread=8)
    assert [f.status for f in result.findings] == ["pass"]
    assert result.findings[0].value < 0.05


def test_batched_ablation_equals_one_forward_per_unit() -> None:
    model = signal_mlp(spread=3).eval()
    inputs = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    view = ModelView.discover(model, inputs[:2])
    layer = view.layers[0]
    values = torch.rand(layer.size, 1)
    batched = ablation_outputs(model, view.module(layer), layer, inputs, list(range(layer.size)), values,
                               batch_size=16, device=torch.device("cpu"), max_batch=40)
    for unit in range(layer.size):
        def hook(_m, _i, out, unit=unit):
            out = out.clone()
            out[:, unit] = values[unit, 0]
            return out
        handle = model.fc1.register_forward_hook(hook)
        with torch.no_grad():
            expected = model(inputs)
        handle.remove()
        assert_equal_up_to_rounding(batched[unit], expected)
