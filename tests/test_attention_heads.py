"""Attention heads found without the spec's help: from the module's attributes, the model's config, and a note
where a layer computes attention but its heads cannot be split."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from mechaudit.model_view import ModelView


class FusedAttention(nn.Module):
    """A timm-style block: one ``qkv`` Linear, heads split by reshaping, a ``proj`` output projection."""

    def __init__(self, width: int = 16, heads: int = 4, record: str = "num_heads") -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self._heads = heads
        if record == "num_heads":
            self.num_heads = heads
        elif record == "head_dim":
            self.head_dim = width // heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, w = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self._heads, w // self._heads).permute(2, 0, 3, 1, 4)
        z = torch.softmax(q @ k.transpose(-1, -2) / (w // self._heads) ** 0.5, -1) @ v
        return self.proj(z.transpose(1, 2).reshape(n, t, w))


class Tiny(nn.Module):
    def __init__(self, record: str, config_heads: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 16)
        self.attn = FusedAttention(record=record)
        self.head = nn.Linear(16, 10)
        if config_heads is not None:
            self.config = SimpleNamespace(num_attention_heads=config_heads)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.embed(tokens)))


def _view(model: nn.Module) -> ModelView:
    torch.manual_seed(0)
    return ModelView.discover(model.eval(), torch.randint(0, 10, (2, 5)))


def test_fused_qkv_heads_from_the_modules_head_count() -> None:
    view = _view(Tiny("num_heads"))
    layer = view.layer("attn")
    assert (layer.kind, layer.size, layer.site) == ("heads", 4, "attn.proj")
    assert not view.notes


def test_fused_qkv_heads_from_a_head_size_or_the_model_config() -> None:
    assert view_heads(_view(Tiny("head_dim"))) == 4
    assert view_heads(_view(Tiny("none", config_heads=2))) == 2


def view_heads(view: ModelView) -> int:
    return view.layer("attn").size


def test_attention_whose_heads_cannot_be_split_is_noted() -> None:
    view = _view(Tiny("none"))  # the control: no count on the module, no config
    assert "attn" not in [layer.name for layer in view.layers]
    assert "computes attention but its heads are not split" in view.notes["attn"]
    described = {entry["layer"]: entry for entry in view.describe()}
    assert "heads are not split" in described["attn.qkv"]["note"]
    assert "note" not in described["head"]


def test_plain_mlp_is_neither_heads_nor_noted() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    view = ModelView.discover(model, torch.randn(2, 4))
    assert [layer.kind for layer in view.layers] == ["linear", "linear"] and not view.notes


class Pooled(nn.Module):
    """Float inputs (samples, 5 tokens * 16): the unsplit attention block, then a classifier on the mean token."""

    def __init__(self) -> None:
        super().__init__()
        self.attn, self.head = FusedAttention(record="none"), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x.reshape(x.shape[0], 5, 16)).mean(1))


def test_the_audit_states_why_attention_is_audited_as_plain_units() -> None:
    import mechaudit

    torch.manual_seed(0)
    result = mechaudit.audit(Pooled().eval(), torch.randn(16, 80), select=["D101"])
    notes = {c["layer"]: c.get("note", "") for c in result.metadata["components"]}
    assert notes["attn.qkv"].startswith("attn computes attention but its heads are not split")
    assert notes["head"] == ""

