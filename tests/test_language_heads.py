"""Attention heads as components: discovery, addresses, the units view and the one hook function."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechaudit.errors import InputError
from mechaudit.examples.induction.model import build
from mechaudit.model_view import ModelView, attention_blocks, from_units_view, units_view


def _induction_view() -> tuple[nn.Module, ModelView, torch.Tensor]:
    torch.manual_seed(0)
    model = build().eval()
    tokens = torch.randint(0, 32, (3, 32))
    return model, ModelView.discover(model, tokens[:2]), tokens


def test_heads_are_discovered_in_forward_order_with_typed_addresses() -> None:
    _, view, _ = _induction_view()
    heads = [(l.name, l.kind, l.size, l.site) for l in view.layers if l.kind == "heads"]
    assert heads == [("blocks.0.attn", "heads", 4, "blocks.0.attn.out"), ("blocks.1.attn", "heads", 4, "blocks.1.attn.out")]
    names = [l.name for l in view.layers]
    assert names.index("blocks.0.attn.qkv") < names.index("blocks.0.attn") < names.index("blocks.0.attn.out")
    layer, head = view.resolve("blocks.1.attn:h3")
    assert (layer.name, head, layer.address(head)) == ("blocks.1.attn", 3, "blocks.1.attn:h3")
    for bad in ("blocks.1.attn:h4", "blocks.1.attn:u0", "blocks.0.attn.out:h0"):
        with pytest.raises(InputError):
            view.resolve(bad)
    assert {"layer": "blocks.0.attn", "kind": "heads", "units": 4, "unit_prefix": "h", "output": False} in view.describe()


def test_only_selects_head_layers() -> None:
    model, _, tokens = _induction_view()
    view = ModelView.discover(model, tokens[:2], only=("blocks.1.attn",))
    assert [l.name for l in view.layers] == ["blocks.1.attn"]


def test_units_view_of_heads_splits_the_concatenated_output_and_inverts() -> None:
    _, view, _ = _induction_view()
    layer = view.layer("blocks.0.attn")
    z = torch.randn(2, 5, 64)                       # (samples, tokens, heads * head dim)
    units = units_view(z, layer)
    assert units.shape == (2, 4, 5 * 16)
    assert torch.equal(units[:, 1].reshape(2, 5, 16), z[..., 16:32])
    assert torch.equal(from_units_view(units, z, layer), z)


def test_hooking_a_head_is_the_same_as_removing_its_columns_of_the_output_projection() -> None:
    model, view, tokens = _induction_view()
    layer = view.layer("blocks.1.attn")
    handle = view.hook(layer, lambda z, _args: from_units_view(
        units_view(z, layer).index_fill(1, torch.tensor([2]), 0.0), z, layer))
    with torch.no_grad():
        hooked = model(tokens)
    handle.remove()
    with torch.no_grad():
        model.blocks[1].attn.out.weight[:, 32:48] = 0.0
        expected = model(tokens)
    assert torch.allclose(hooked, expected, atol=1e-5)


def test_torch_multihead_attention_gets_no_heads() -> None:
    """nn.MultiheadAttention applies out_proj's weights without calling it: nothing to hook (documented)."""
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attn(x, x, x)[0].mean(1))

    model = Model().eval()
    assert "attn" in attention_blocks(model)           # recognised by its attributes ...
    view = ModelView.discover(model, torch.randn(2, 4, 8))
    assert [l.kind for l in view.layers] == ["linear"]  # ... but out_proj never runs, so it is not a layer


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_hugging_face_blocks_expose_heads(family: str) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "bert":
        config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=16)
        model, block, site = transformers.BertModel(config), "encoder.layer.1.attention", "output.dense"
    else:
        config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                         bos_token_id=0, eos_token_id=0)
        model, block, site = transformers.GPT2Model(config), "h.1.attn", "c_proj"
    model.eval()
    tokens = torch.randint(0, 50, (2, 7))
    view = ModelView.discover(model, tokens)
    layer = view.layer(block)
    assert (layer.kind, layer.size, layer.site) == ("heads", 4, f"{block}.{site}")
    handle = view.hook(layer, lambda z, _args: from_units_view(
        units_view(z, layer).index_fill(1, torch.tensor([1]), 0.0), z, layer))
    with torch.no_grad():
        hooked = model(tokens).last_hidden_state
    handle.remove()
    projection = dict(model.named_modules())[f"{block}.{site}"]
    with torch.no_grad():  # the same head removed from the projection's weights (Conv1D stores them transposed)
        if family == "bert":
            projection.weight[:, 8:16] = 0.0
        else:
            projection.weight[8:16, :] = 0.0
        expected = model(tokens).last_hidden_state
    assert torch.allclose(hooked, expected, atol=1e-5)
