"""Decomposition evidence: exemplars, activation maximisation, tuning curves, layer maps and their figures.

Each check is paired with a control that the same code must tell apart (a unit that ignores the factor, another
unit's kernel, shuffled labels, malformed evidence).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from mechaudit.report.decomposition_figures import decomposition_figures
from mechaudit.techniques.activation_max import maximize_activation
from mechaudit.techniques.exemplars import top_exemplars
from mechaudit.techniques.layer_map import layer_map
from mechaudit.techniques.tuning import feature_sweep_curve, oriented_grating_curve, patch_position_curve

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run far faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    return torch.tensor(data.images, dtype=torch.float32)[:, None] / 16, torch.tensor(data.target)


@pytest.fixture(scope="module")
def template_model(digits):
    """An 8x8 convolution whose channel c is the mean digit c minus the mean digit: a template matcher."""
    images, labels = digits
    mean = images.mean(0)[0]
    kernels = torch.stack([images[labels == c].mean(0)[0] - mean for c in range(10)])
    conv = nn.Conv2d(1, 10, 8)
    with torch.no_grad():
        conv.weight.copy_(kernels[:, None])
        conv.bias.zero_()
    return nn.Sequential(conv, nn.Flatten()), conv, kernels


def edge_model() -> nn.Conv2d:
    """Channel 0: vertical-edge detector (Sobel x); 1: horizontal-edge detector; 2: uniform blur (no orientation)."""
    conv = nn.Conv2d(1, 3, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([SOBEL_X, SOBEL_X.T, torch.ones(3, 3) / 9])[:, None])
        conv.bias.zero_()
    return conv


def _corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel())[0, 1])


# -- exemplars ------------------------------------------------------------------------------------------------------

def test_top_exemplars_are_the_highest_scores_in_order_with_labels_and_tiles(digits):
    images, labels = digits
    brightness = images.mean(dim=(1, 2, 3))
    scores = torch.stack([brightness, -brightness], dim=1)
    names = [f"class{c}" for c in range(10)]
    result = top_exemplars(scores, images, labels, [0, 1], ["bright", "dark"], top=5, class_names=names)
    assert [r["component"] for r in result] == ["bright", "dark"]
    bright, dark = ([e["sample"] for e in r["exemplars"]] for r in result)
    assert bright == torch.argsort(brightness, descending=True, stable=True)[:5].tolist()
    assert dark == torch.argsort(-brightness, descending=True, stable=True)[:5].tolist()  # control: the opposite unit picks other samples
    assert not set(bright) & set(dark)
    for entry in result:
        activations = [e["activation"] for e in entry["exemplars"]]
        assert activations == sorted(activations, reverse=True)
        for e in entry["exemplars"]:
            assert e["label"] == names[int(labels[e["sample"]])]
            tile = np.array(e["tile"])
            assert tile.shape == (8, 8) and tile.min() == 0.0 and tile.max() == 1.0
    small = top_exemplars(scores, images, None, [0], ["bright"], top=2, max_tile=4)
    assert np.array(small[0]["exemplars"][0]["tile"]).shape == (4, 4)
    assert small[0]["exemplars"][0]["label"] is None
    json.dumps(result, allow_nan=False)


def test_top_exemplars_tabular_row_lists_the_unusual_features_first():
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(200, 10, generator=generator)
    table[7, 3] = 25.0  # sample 7 is extreme in feature 3 only
    scores = table[:, 3:4].clone()
    result = top_exemplars(scores, table, None, [0], ["f3"], top=3, feature_names=[f"feat{j}" for j in range(10)])
    first = result[0]["exemplars"][0]
    assert first["sample"] == 7
    row = first["row"]
    assert len(row) == 6 and next(iter(row)) == "feat3" and row["feat3"] == 25.0
    other = result[0]["exemplars"][1]["row"]  # control: an ordinary sample's most unusual feature is another one
    assert set(other) <= {f"feat{j}" for j in range(10)} and "tile" not in result[0]["exemplars"][1]
    assert list(top_exemplars(scores, table, None, [0], ["f3"], top=1)[0]["exemplars"][0]["row"])[0] == "x3"


def test_top_exemplars_text_context_marks_the_peak_token():
    tokens = [[f"t{i}" for i in range(20)], ["a", "b", "c"]]
    scores = torch.tensor([[1.0], [2.0]])
    result = top_exemplars(scores, torch.zeros(2, 20, dtype=torch.long), None, [0], ["u"], top=2, tokens=tokens,
                           positions=torch.tensor([10, 0]))
    contexts = [e["context"] for e in result[0]["exemplars"]]
    assert contexts == ["[[a]] b c", "t5 t6 t7 t8 t9 [[t10]] t11 t12 t13 t14 t15"]
    with pytest.raises(ValueError):
        top_exemplars(scores, torch.zeros(2, 4), None, [0], ["u", "v"])


# -- activation maximisation ----------------------------------------------------------------------------------------

def test_activation_maximization_finds_the_units_template(template_model):
    model, conv, kernels = template_model
    for unit in (0, 1):
        result = maximize_activation(model, conv, unit, (1, 8, 8), steps=64)
        assert result["steps"] == 64
        assert result["objective"] > 3 * max(result["objective_start"], 0.0) + 1.0
        image = np.array(result["image"])
        assert image.shape == (8, 8) and image.min() >= 0.0 and image.max() <= 1.0
        own = _corr(image, kernels[unit])
        others = [_corr(image, kernels[c]) for c in range(10) if c != unit]
        assert own > 0.5 and own > max(others) + 0.1  # control: no other unit's template matches as well
    assert all(p.grad is None for p in model.parameters())
    assert not conv._forward_hooks and model.training  # hook removed, training mode restored
    json.dumps(result, allow_nan=False)


def test_activation_maximization_along_a_dictionary_direction(template_model):
    model, conv, kernels = template_model
    direction = torch.zeros(10)
    direction[3] = 1.0
    along = maximize_activation(model, conv, 0, (1, 8, 8), direction=direction, steps=64)
    assert _corr(along["image"], kernels[3]) > 0.5 > _corr(along["image"], kernels[0])
    with pytest.raises(ValueError):
        maximize_activation(model, conv, 0, (64,))
    with pytest.raises(ValueError):
        maximize_activation(model, conv, 0, (1, 8, 8), direction=torch.ones(3), steps=1)


# -- tuning curves --------------------------------------------------------------------------------------------------

def test_grating_curve_peaks_at_the_detectors_orientation_and_is_flat_for_a_uniform_kernel():
    conv = edge_model()
    curves = [oriented_grating_curve(lambda b, c=c: torch.relu(conv(b))[:, c].mean(dim=(1, 2)), (1, 16, 16))
              for c in range(3)]
    vertical, horizontal, uniform = curves
    assert vertical["angles"][int(np.argmax(vertical["response"]))] == 0.0
    assert horizontal["angles"][int(np.argmax(horizontal["response"]))] == 90.0
    assert min(vertical["response"]) < 0.05 * max(vertical["response"])  # strongly tuned
    assert np.ptp(uniform["response"]) < 0.01 * np.mean(uniform["response"])  # control: untuned
    assert len(uniform["angles"]) == 12 and all(0 <= r <= 1 for r in uniform["response"])


def test_patch_position_curve_peaks_where_the_unit_reads():
    corner = patch_position_curve(lambda b: b[:, 0, :2, :2].sum(dim=(1, 2)), (1, 8, 8))
    far = patch_position_curve(lambda b: b[:, 0, 6:, 6:].sum(dim=(1, 2)), (1, 8, 8))
    assert corner["grid"] == [7, 7] and len(corner["positions"]) == 49
    assert corner["positions"][int(np.argmax(corner["response"]))] == [0, 0]
    assert far["positions"][int(np.argmax(far["response"]))] == [6, 6]  # control: another unit, another place
    assert corner["response"][0] == 4.0 and corner["response"][-1] == 0.0
    json.dumps(corner, allow_nan=False)


def test_feature_sweep_is_monotone_for_the_read_feature_and_flat_for_an_ignored_one():
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(300, 4, generator=generator)

    def unit(batch: torch.Tensor) -> torch.Tensor:
        return 2 * batch[:, 1] + 0.5

    used = feature_sweep_curve(unit, table, 1, points=11, feature_name="dose")
    ignored = feature_sweep_curve(unit, table, 2, points=11)
    assert used["factor"] == "dose" and ignored["factor"] == "x2"
    assert np.all(np.diff(used["response"]) > 0)
    assert used["values"][0] == pytest.approx(float(table[:, 1].quantile(0.01)), abs=1e-3)
    assert used["values"][-1] == pytest.approx(float(table[:, 1].quantile(0.99)), abs=1e-3)
    assert np.ptp(ignored["response"]) == 0.0  # control


# -- layer map ------------------------------------------------------------------------------------------------------

def test_layer_map_separates_clusters_and_not_shuffled_labels():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(120) % 2
    centres = torch.randn(2, 16, generator=generator) * 6
    activations = centres[labels] + torch.randn(120, 16, generator=generator)
    result = layer_map(activations, labels, class_names=["cat", "dog"])
    assert len(result["pca"]) == 120 and len(result["tsne"]) == 120
    assert result["labels"][:2] == ["cat", "dog"] and result["samples"] == list(range(120))
    assert result["separation"] > 0.5 and result["pca_explained"][0] > 0.5
    shuffled = labels[torch.randperm(120, generator=generator)]
    control = layer_map(activations, shuffled, tsne=False)
    assert abs(control["separation"]) < 0.2 and control["tsne"] is None
    sub = layer_map(activations, None, max_points=40, tsne=False)
    assert len(sub["samples"]) == 40 and sub["samples"] == sorted(sub["samples"]) and sub["separation"] is None
    assert sub == layer_map(activations, None, max_points=40, tsne=False)
    json.dumps(result, allow_nan=False)


# -- figures --------------------------------------------------------------------------------------------------------

def _evidence(digits) -> dict:
    images, labels = digits
    images, labels = images[:150], labels[:150]
    scores = torch.stack([images.mean(dim=(1, 2, 3)), images[:, 0, :, :4].mean(dim=(1, 2))], dim=1)
    conv = edge_model()
    return {
        "exemplars": top_exemplars(scores, images, labels, [0, 1], ["conv:u0", "conv:u1"], top=4),
        "activation_maximization": [{"component": "conv:u0", "image": [[0.0, 1.0], [0.5, 0.2]], "objective": 2.5,
                                     "objective_start": 0.1}],
        "tuning_curves": [
            {"component": "conv:u0",
             **oriented_grating_curve(lambda b: torch.relu(conv(b))[:, 0].mean(dim=(1, 2)), (1, 8, 8))},
            {"component": "conv:u1", **patch_position_curve(lambda b: b[:, 0, :2, :2].sum(dim=(1, 2)), (1, 8, 8))},
        ],
        "layer_map": {"layer": "conv", **layer_map(images.flatten(1), labels, tsne=False)},
    }


def test_decomposition_figures_draw_valid_evidence_deterministically(digits):
    evidence = _evidence(digits)
    json.dumps(evidence, allow_nan=False)
    figures = decomposition_figures({"evidence": evidence}, "D301-conv")
    assert [f.name for f in figures] == ["D301-conv-exemplars.svg", "D301-conv-activation-max.svg",
                                         "D301-conv-tuning.svg", "D301-conv-layer-map.svg"]
    for figure in figures:
        assert figure.inline.startswith("<svg") and figure.svg.rstrip().endswith("</svg>")
        assert any(ch.isdigit() for ch in figure.caption)
    assert "silhouette" in figures[-1].caption and "row 0, column 0" in figures[2].caption
    again = decomposition_figures({"evidence": evidence}, "D301-conv")
    assert [f.svg for f in again] == [f.svg for f in figures]


def test_decomposition_figures_skip_malformed_evidence():
    malformed = {
        "exemplars": [{"component": "u", "exemplars": [{"sample": 0, "activation": "high", "tile": [[0.0]]}]}],
        "activation_maximization": [{"component": "u", "image": [[0.0, "x"], [1.0]], "objective": 1.0}],
        "tuning_curves": [{"component": "u", "response": [1.0, 2.0], "angles": [0.0]},
                          {"component": "u", "response": [1.0], "positions": [["a", 0]]}],
        "layer_map": {"pca": [[0.0, 1.0, 2.0]], "labels": "x"},
    }
    assert decomposition_figures({"evidence": malformed}, "x") == []
    assert decomposition_figures({"evidence": {k: "nonsense" for k in malformed}}, "x") == []
    assert decomposition_figures({"evidence": None}, "x") == [] and decomposition_figures({}, "x") == []
    tabular = top_exemplars(torch.randn(20, 1), torch.randn(20, 5), None, [0], ["u"], top=3)
    assert decomposition_figures({"evidence": {"exemplars": tabular}}, "x") == []  # tables are drawn elsewhere
    nan_map = {"pca": [[float("nan"), 0.0], [1.0, 1.0]]}
    assert decomposition_figures({"evidence": {"layer_map": nan_map}}, "x") == []
