import pytest
import torch
from torch import nn

from mechaudit.errors import InputError
from mechaudit.examples.digits.model import build
from mechaudit.model_view import ModelView, units_view


def digits_view() -> ModelView:
    return ModelView.discover(build().eval(), torch.zeros(2, 1, 8, 8))


def test_layers_in_execution_order_with_addresses() -> None:
    view = digits_view()
    assert [(l.name, l.kind, l.size) for l in view.layers] == [
        ("features.0", "conv", 8), ("features.2", "conv", 16), ("classifier.0", "linear", 32),
        ("classifier.2", "linear", 10)]
    assert [l.is_output for l in view.layers] == [False, False, False, True]
    assert view.layers[1].address(7) == "features.2:ch7"
    assert view.layers[2].address(12) == "classifier.0:u12"


def test_resolve_addresses() -> None:
    view = digits_view()
    layer, unit = view.resolve("features.2:ch15")
    assert (layer.name, unit) == ("features.2", 15)
    assert view.resolve("classifier.0")[1] is None
    for bad in ("features.2:ch16", "features.2:u1", "nowhere:u0", "features.2:"):
        with pytest.raises(InputError):
            view.resolve(bad)


def test_only_selected_layers_and_unknown_layer() -> None:
    view = ModelView.discover(build().eval(), torch.zeros(2, 1, 8, 8), only=("classifier.0",))
    assert [l.name for l in view.layers] == ["classifier.0"]
    with pytest.raises(InputError, match="not a Linear or Conv"):
        ModelView.discover(build().eval(), torch.zeros(2, 1, 8, 8), only=("features.1",))


def test_units_view_shapes() -> None:
    view = ModelView.discover(nn.Sequential(nn.Linear(3, 5)), torch.zeros(2, 3))
    layer = view.layers[0]
    assert units_view(torch.zeros(2, 5), layer).shape == (2, 5, 1)
    assert units_view(torch.zeros(2, 7, 5), layer).shape == (2, 5, 7)  # tokens become positions
    conv = digits_view().layers[0]
    assert units_view(torch.zeros(2, 8, 8, 8), conv).shape == (2, 8, 64)
