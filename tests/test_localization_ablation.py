"""L202's exact ablation scan: the fast scan gives the outputs of one forward pass per unit on every kind of model
it meets (or falls back to hooks, still exact); L202 flags a unit one class depends on, and not its control."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.exactness import assert_equal_up_to_rounding
from safetensors.torch import load_file
from torch import nn

import mechaudit
from mechaudit.activations import unit_statistics
from mechaudit.examples.digits.model import build
from mechaudit.model_view import ModelView
from mechaudit.techniques.ablation import ablation_loop
from mechaudit.techniques.ablation_scan import AblationScanner

CPU = torch.device("cpu")
DIGITS = Path(mechaudit.__file__).parent / "examples" / "digits"


class Residual(nn.Module):
    """A skip connection around an MLP block: the value read after the cut (``h``) must follow the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_in, self.fc_a, self.fc_b, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc_in(x))
        return self.out(h + torch.relu(self.fc_b(torch.relu(self.fc_a(h)))))


class BatchSizeFirst(nn.Module):
    """Reads the batch size before its layers and uses it after them: cannot be cut, falls back to hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return self.fc2(torch.relu(self.fc1(x))).view(n, -1)


class Branching(nn.Module):
    """Data-dependent control flow: cannot be traced, falls back to hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc1(x))
        return self.fc2(hidden) if float(x.sum()) > 0 else -self.fc2(hidden)


class NormedCNN(nn.Module):
    """A convolution, batch norm and pooling before the next convolution (the update runs through them)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.norm = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.fc = nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False), nn.Linear(5 * 2 * 2, 3)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-0.5, 0.5)
            self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.norm(self.conv1(x))), 2)
        return self.fc(torch.flatten(torch.relu(self.conv2(x)), 1))


def _digits() -> nn.Module:
    model = build()
    model.load_state_dict(load_file(str(DIGITS / "digits.safetensors")))
    return model


CASES = {
    "digits": (_digits, lambda g: torch.from_numpy(np.load(DIGITS / "audit_data.npz")["inputs"])[:70]),
    "residual": (Residual, lambda g: torch.randn(50, 4, generator=g)),
    "batch size first": (BatchSizeFirst, lambda g: torch.randn(50, 4, generator=g)),
    "branching": (Branching, lambda g: torch.randn(50, 4, generator=g)),
    "normed cnn": (NormedCNN, lambda g: torch.randn(40, 1, 8, 8, generator=g)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_fast_scan_equals_one_forward_pass_per_unit(name: str) -> None:
    torch.manual_seed(0)
    build_model, make_inputs = CASES[name]
    model = build_model().eval()
    generator = torch.Generator().manual_seed(1)
    inputs = make_inputs(generator)
    source = inputs[torch.randperm(len(inputs), generator=generator)]
    view = ModelView.discover(model, inputs[:2])
    layers = view.hidden_layers
    stats = unit_statistics(view, layers, inputs, 32, CPU)
    scanner = AblationScanner(view, layers, CPU, inputs[:2])
    modes = {"zero": ({l.name: torch.zeros_like(stats[l.name].mean_map) for l in layers}, None),
             "mean": ({l.name: stats[l.name].mean_map.float() for l in layers}, None),
             "resample": (None, source)}
    scanned = scanner.scan(inputs, modes, batch_size=32, max_batch=200)  # several batches and chunks
    for layer in layers:
        for mode, (values, src) in modes.items():
            expected = ablation_loop(model, view.site(layer), layer, inputs, list(range(layer.size)),
                                     None if values is None else values[layer.name], 32, CPU, source=src)
            assert_equal_up_to_rounding(scanned[mode][layer.name], expected, msg=f"{layer.name} {mode}")
    methods = {layer.name: scanner.method(layer) for layer in layers}
    if name in ("batch size first", "branching"):
        assert all(m.startswith("batched forward hooks") for m in methods.values()), methods
    else:
        assert all(m.startswith("layers before it run once") for m in methods.values()), methods


def test_the_scan_of_attention_heads_equals_one_forward_pass_per_head() -> None:
    from mechaudit.examples.induction.model import build as build_transformer

    model = build_transformer().eval()
    data = np.load(Path(mechaudit.__file__).parent / "examples" / "induction" / "audit_data.npz")
    inputs = torch.from_numpy(data["inputs"])[:24]
    view = ModelView.discover(model, inputs[:2])
    stats = unit_statistics(view, view.layers, inputs, 32, CPU)
    scanner = AblationScanner(view, view.layers, CPU, inputs[:2])
    scanned = scanner.scan(inputs, {"mean": ({l.name: stats[l.name].mean_map.float() for l in view.layers}, None)})
    for layer in view.layers:
        expected = ablation_loop(model, view.site(layer), layer, inputs, list(range(layer.size)),
                                 stats[layer.name].mean_map.float(), 32, CPU)
        assert_equal_up_to_rounding(scanned["mean"][layer.name], expected, msg=layer.name)


class ThreeClasses(nn.Module):
    """Classes 0 and 1 follow x0 through ``spread`` units; class 2 (x2 > 1.4, about 8% of samples) fires through
    ``rare`` units: with one rare unit, mean-ablating it loses class 2 and little overall accuracy."""

    def __init__(self, rare: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)
        with torch.no_grad():
            for tensor in (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias):
                tensor.zero_()
            for unit in range(4):
                self.fc1.weight[unit, 0] = 1.0
                self.fc2.weight[0, unit] = 0.25
            self.fc2.bias[1] = 0.2
            for unit in range(4, 4 + rare):
                self.fc1.weight[unit, 2] = 1.0
                self.fc1.bias[unit] = -1.4
                self.fc2.weight[2, unit] = 20.0 / rare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("rare", [1, 4])
def test_l202_flags_a_unit_one_class_depends_on_and_not_when_the_class_has_backups(rare: int) -> None:
    inputs = torch.randn(600, 4, generator=torch.Generator().manual_seed(0))
    model = ThreeClasses(rare).eval()
    labels = model(inputs).argmax(-1).detach()
    assert 30 < int((labels == 2).sum()) < 80
    result = mechaudit.audit(model, inputs, labels=labels, select=["L202"],
                             rules={"L202": {"max_class_accuracy_drop": 0.25}})
    failing = [f for f in result.findings if f.status == "fail"]
    if rare == 1:
        (finding,) = failing
        assert finding.location.component == "fc1:u4" and finding.metric == "class_accuracy_drop"
        assert finding.value > 0.9 and finding.evidence["mean_drop"] < 0.1  # the class, not the model, is lost
        assert {row["class"] for row in finding.evidence["per_class"]} == {"0", "1", "2"}
    else:
        assert not failing
        (summary,) = result.findings
        assert summary.evidence["largest_class_drop"] < 0.25
        assert "resample_drop" in summary.evidence["top_units"][0]
