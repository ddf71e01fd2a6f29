"""Attention heads as components: discovery, addresses, the units view and the one hook function."""

from __future__ import annotations

import pytest
import torch
from fixtures.exactness import assert_equal_up_to_rounding
from torch import nn

from mechaudit.errors import InputError
from mechaudit.examples.induction.model import build
from mechaudit.model_view import ModelView, from_units_view, units_view


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
    assert_equal_up_to_rounding(hooked, expected)


@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_multihead_attention_exposes_heads(batch_first: bool) -> None:
    """nn.MultiheadAttention applies out_proj's weights without calling it: its heads are hooked at the module,
    and hooking a head to zero is removing that head's columns of out_proj (samples first either way)."""
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x if batch_first else x.transpose(0, 1)
            out = self.attn(x, x, x)[0]
            return self.head((out if batch_first else out.transpose(0, 1)).mean(1))

    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(5, 4, 8)
    view = ModelView.discover(model, x[:2])
    layer = view.layer("attn")
    assert [(l.name, l.kind, l.size) for l in view.layers] == [("attn", "heads", 2), ("head", "linear", 3)]
    seen = []
    handles = [view.hook(layer, lambda z, _args: seen.append(z.shape)),
               view.hook(layer, lambda z, _args: from_units_view(
                   units_view(z, layer).index_fill(1, torch.tensor([1]), 0.0), z, layer))]
    with torch.no_grad():
        hooked = model(x)
    for handle in handles:
        handle.remove()
    assert seen == [(5, 4, 8)]
    with torch.no_grad():
        untouched = model(x)
        model.attn.out_proj.weight[:, 4:8] = 0.0
        expected = model(x)
    assert_equal_up_to_rounding(hooked, expected)
    assert not torch.allclose(untouched, expected, atol=1e-3)   # the control: the head mattered
    assert not model.attn._forward_hooks                         # every hook removed


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "gpt_neox"])
def test_hugging_face_blocks_expose_heads(family: str) -> None:
    """Llama keeps only ``head_dim`` on its attention (GQA: 4 query heads, 2 key-value heads), GPT-NeoX a head size
    and the config (mechaudit.attention_heads): their heads are found all the same."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "llama":
        config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2)
        model, block, site = transformers.LlamaModel(config), "layers.1.self_attn", "o_proj"
    elif family == "gpt_neox":
        config = transformers.GPTNeoXConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4)
        model, block, site = transformers.GPTNeoXModel(config), "layers.1.attention", "dense"
    elif family == "bert":
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
        if family == "gpt2":
            projection.weight[8:16, :] = 0.0
        else:
            projection.weight[:, 8:16] = 0.0
        expected = model(tokens).last_hidden_state
    assert_equal_up_to_rounding(hooked, expected)


def test_gpt2_mlp_neurons_are_linear_units() -> None:
    """GPT-2's MLP is Hugging Face's Conv1D (weight stored (in, out)): its neurons are addressed and hooked like
    any Linear unit, and hooking one to zero is zeroing its column of the stored weight and its bias."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2Model(config).eval()
    tokens = torch.randint(0, 50, (2, 7))
    view = ModelView.discover(model, tokens)
    layer, unit = view.resolve("h.0.mlp.c_fc:u5")
    assert (layer.kind, layer.size, unit) == ("linear", 128, 5)
    handle = view.hook(layer, lambda z, _args: from_units_view(
        units_view(z, layer).index_fill(1, torch.tensor([unit]), 0.0), z, layer))
    with torch.no_grad():
        hooked = model(tokens).last_hidden_state
    handle.remove()
    with torch.no_grad():
        model.h[0].mlp.c_fc.weight[:, unit] = 0.0
        model.h[0].mlp.c_fc.bias[unit] = 0.0
        expected = model(tokens).last_hidden_state
    assert_equal_up_to_rounding(hooked, expected)


def test_torch_transformer_encoder_is_audited_head_by_head() -> None:
    """nn.TransformerEncoderLayer's fused fast path (eval, no gradients) never calls its attention module; the
    audit switches it off, so heads are found, ablated and connected in the circuit, and restores it."""
    from mechaudit.engine import run_audit
    from mechaudit.loading import AuditData, LoadedModel
    from mechaudit.rulebook import load_rulebook
    from mechaudit.spec import AuditSpec, BehaviourSpec, DataSpec, ModelSpec, Options

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(20, 16)
            layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.unembed = nn.Linear(16, 20)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.unembed(self.encoder(self.embed(tokens)))

    torch.manual_seed(0)
    model = Encoder().eval()
    tokens = torch.randint(0, 20, (48, 8))
    data = AuditData(inputs=tokens, labels=torch.randint(0, 20, (48,)), pairs=(tokens, torch.randint(0, 20, (48, 8))))
    spec = AuditSpec(model=ModelSpec(name="encoder"), data=DataSpec(file=__file__), task="next-token",
                     options=Options(seed=0, select=("L202", "L207", "R301")), behaviour=BehaviourSpec(kind="label_logit"))
    result = run_audit(spec, load_rulebook("default"), loaded=LoadedModel(model, "encoder", "test", {}), data=data)
    assert torch.backends.mha.get_fastpath_enabled()
    statuses = {r.rule_id: r.status for r in result.rules}
    assert statuses["L202"] == statuses["R301"] == "pass"
    (patched,) = [f for f in result.findings if f.rule_id == "L207"]  # an untrained model on random pairs: the
    assert patched.metric == "behaviour_absent" or patched.status == "pass", patched.message  # gap may be noise
    heads = [c["layer"] for c in result.metadata["components"] if c["kind"] == "heads"]
    assert heads == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert {f.location.component for f in result.findings if f.rule_id == "L202"} >= set(heads)
    (circuit,) = [f for f in result.findings if f.rule_id == "R301"]
    assert circuit.evidence["unconnected_layers"] == []
    sizes = [c["units"] for c in result.metadata["components"]]
    assert f"strongest edges of {sum(a * b for a, b in zip(sizes, sizes[1:]))};" in circuit.message  # every pair
