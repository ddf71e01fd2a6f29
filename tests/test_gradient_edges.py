"""Circuit edges across LayerNorm, attention and MLPs (pre-LN transformers, BERT, GPT-2), scored by autograd: each
edge score is the finite-difference change of the downstream unit's activation when only the upstream unit's
change is let through, dotted with the behaviour's gradient there."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechaudit.examples.induction.model import Attention
from mechaudit.model_view import ModelView, from_units_view, units_view
from mechaudit.techniques.circuits import at_position, edge_attribution, target_logit
from mechaudit.techniques.gradient_edges import _by_downstream_unit, _by_upstream_unit

D, HEADS, T, VOCAB = 16, 4, 6, 20


class PreNormBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = Attention(D, HEADS, T)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PreNormTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.blocks = nn.Sequential(PreNormBlock(), PreNormBlock())
        self.ln_f, self.unembed = nn.LayerNorm(D), nn.Linear(D, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.ln_f(self.blocks(self.embed(tokens))))


def _setup(layers: tuple[str, ...]):
    torch.manual_seed(0)
    model = PreNormTransformer().double().eval()
    with torch.no_grad():
        for ln in (m for m in model.modules() if isinstance(m, nn.LayerNorm)):  # LayerNorms that do something
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.normal_(0, 0.1)
    clean, corrupted = torch.randint(0, VOCAB, (2, 1, T))
    return model, ModelView.discover(model, clean, only=layers), clean, corrupted, torch.tensor([3])


def _finite_difference(model, view, clean, corrupted, target, upstream, layer, eps=1e-6) -> torch.Tensor:
    """score(u, v) for one sample: d/de of grad_v . z_v when z_u moves by e * (z_u_ref - z_u), by central
    differences, with grad_v the behaviour's gradient at v on the clean run."""
    def record(store):
        return lambda z, _args: store.append(z)

    acts = {}
    for name, tokens in (("clean", clean), ("ref", corrupted)):
        store = []
        handle = view.hook(upstream, record(store))
        with torch.no_grad():
            model(tokens)
        handle.remove()
        acts[name] = store[0]
    delta = units_view(acts["ref"] - acts["clean"], upstream)
    captured = []
    handle = view.hook(layer, lambda z, _args: (z.retain_grad(), captured.append(z))[-1] and None)
    metric = at_position(target_logit, -1)(model(clean), target).sum()
    metric.backward()
    handle.remove()
    grad = units_view(captured[0].grad, layer)
    scores = torch.zeros(upstream.size, layer.size, dtype=torch.float64)
    for u in range(upstream.size):
        only = torch.zeros_like(delta)
        only[:, u] = delta[:, u]
        moved = {}
        for sign in (1, -1):
            shift = view.hook(upstream, lambda z, _a, s=sign: z + s * eps * from_units_view(only, z, upstream))
            seen = []
            read = view.hook(layer, record(seen))
            with torch.no_grad():
                model(clean)
            shift.remove()
            read.remove()
            moved[sign] = units_view(seen[0], layer)
        change = (moved[1] - moved[-1]) / (2 * eps)
        scores[u] = (change * grad).sum(2).abs().sum(0)
    return scores


@pytest.mark.parametrize("layers", [("blocks.0.attn", "blocks.1.attn"),          # heads -> heads across LN + MLP
                                    ("blocks.0.attn", "blocks.0.mlp.0"),         # heads -> MLP units across LN
                                    ("blocks.0.mlp.0", "blocks.1.attn")])        # MLP units -> heads
def test_edges_across_layernorm_match_finite_differences(layers: tuple[str, ...]) -> None:
    model, view, clean, corrupted, target = _setup(layers)
    scores = edge_attribution(view, clean, target, at_position(target_logit, -1), reference=corrupted)
    assert not scores.unconnected
    upstream, layer = view.layers
    expected = _finite_difference(model, view, clean, corrupted, target, upstream, layer)
    found = torch.tensor([[scores.edges[(upstream.address(u), layer.address(v))] for v in range(layer.size)]
                          for u in range(upstream.size)], dtype=torch.float64)
    assert float(expected.abs().max()) > 1e-3                      # the edges carry something
    assert torch.allclose(found, expected, rtol=1e-5, atol=1e-9 * float(expected.abs().max()))


def test_jacobian_vector_and_vector_jacobian_products_agree() -> None:
    model, view, clean, corrupted, target = _setup(("blocks.0.attn", "blocks.0.mlp.0"))
    upstream, layer = view.layers
    store = {}

    def keep(name):
        def hook(z, _args):
            z.retain_grad()
            store[name] = z
        return hook

    ref = {}
    with torch.no_grad():
        for l in view.layers:
            h = view.hook(l, lambda z, _a, n=l.name: ref.__setitem__(n, z))
            model(corrupted)
            h.remove()
    handles = [view.hook(l, keep(l.name)) for l in view.layers]
    at_position(target_logit, -1)(model(clean), target).sum().backward(retain_graph=True)
    for handle in handles:
        handle.remove()
    up, out = store[upstream.name], store[layer.name]
    args = (upstream, up, ref[upstream.name] - up.detach(), layer, out, out.grad)
    assert torch.allclose(_by_downstream_unit(*args), _by_upstream_unit(*args), rtol=1e-8)


def test_unrelated_layers_stay_unconnected() -> None:
    """An upstream layer the downstream one does not read gets no edges (listed as unconnected)."""
    class TwoBranches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            side = self.a(x).sum(-1, keepdim=True)  # runs first, but b does not read it
            return self.head(self.b(x)) + side

    model = TwoBranches().eval()
    x = torch.randn(8, 1, 4)  # token-shaped, so that the weights cannot be split by unit
    view = ModelView.discover(model, x[:2], only=("a", "b"))
    scores = edge_attribution(view, x, torch.zeros(8, dtype=torch.long),
                              lambda out, t: out[:, 0, 0])
    assert scores.unconnected == [("a", "b")]
