"""Architectures mechaudit was not written against, built tiny from configs (random weights, nothing downloaded) and
audited as a user passes them: Hugging Face models as they come (a ``ModelOutput``), fused and grouped-query
attention, ``torch.compile``, recurrent and sequence-first layers, rows folded per sample (OPT's MLP, Swin's
windows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.third_party_models import view_cnn
from torch import nn

import mechaudit
from mechaudit.errors import InputError
from mechaudit.loading import AuditData

transformers = pytest.importorskip("transformers")

VOCAB, TOKENS, SAMPLES = 60, 6, 10


def _tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (SAMPLES, TOKENS), generator=torch.Generator().manual_seed(seed))


def _hf(name: str, config: str, **values) -> nn.Module:
    torch.manual_seed(0)
    built = getattr(transformers, config)(**values, attn_implementation="eager")
    return getattr(transformers, name)(built).eval()


def _gpt2() -> nn.Module:  # fused c_attn (a Conv1D), tied embeddings
    return _hf("GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=16)


def _llama() -> nn.Module:  # RoPE, grouped-query attention (2 key/value heads for 4 query heads), SwiGLU, RMSNorm
    return _hf("LlamaForCausalLM", "LlamaConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, max_position_embeddings=16)


def _distilbert() -> nn.Module:  # q_lin/k_lin/v_lin/out_lin
    return _hf("DistilBertForSequenceClassification", "DistilBertConfig", vocab_size=VOCAB, dim=32, n_layers=2,
               n_heads=4, hidden_dim=48, max_position_embeddings=16, num_labels=3)


def _vit() -> nn.Module:  # a patch convolution, then .flatten(2).transpose(1, 2)
    return _hf("ViTForImageClassification", "ViTConfig", image_size=8, patch_size=4, num_channels=3, hidden_size=32,
               num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, num_labels=3)


def _torch_encoder() -> nn.Module:  # nn.MultiheadAttention's fused in_proj
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 48, dropout=0.0, batch_first=True)
    return nn.Sequential(nn.Embedding(VOCAB, 32), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                         nn.Flatten(), nn.Linear(32 * TOKENS, 3)).eval()


IMAGES = torch.randn(SAMPLES, 3, 8, 8, generator=torch.Generator().manual_seed(0))
IDIOMS = {  # model, inputs, task, the attention blocks and their head count
    "gpt2": (_gpt2, _tokens(), "next-token", {f"transformer.h.{i}.attn": 4 for i in range(2)}),
    "llama-gqa": (_llama, _tokens(), "next-token", {f"model.layers.{i}.self_attn": 4 for i in range(2)}),
    "distilbert": (_distilbert, _tokens(), "classification",
                   {f"distilbert.transformer.layer.{i}.attention": 4 for i in range(2)}),
    "vit": (_vit, IMAGES, "classification", {f"vit.layers.{i}.attention": 4 for i in range(2)}),
    "torch-encoder": (_torch_encoder, _tokens(), "classification", {f"1.layers.{i}.self_attn": 4 for i in range(2)}),
}


def _labels(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        output = model(inputs)
    logits = output if isinstance(output, torch.Tensor) else output.logits
    return (logits[:, -1] if logits.dim() == 3 else logits).argmax(-1)


@pytest.mark.parametrize("name", list(IDIOMS))
def test_models_as_they_come_are_audited_head_by_head_without_a_rule_error(name: str) -> None:
    factory, inputs, task, heads = IDIOMS[name]
    model = factory()  # a Hugging Face model returns a ModelOutput: audited on its logits, no wrapper
    result = mechaudit.audit(model, inputs, labels=_labels(model, inputs), task=task, select=["D101", "L202"])
    found = {c["layer"]: c["units"] for c in result.metadata["components"] if c["kind"] == "heads"}
    assert found == heads
    assert not [f.message for f in result.findings if f.status == "error"]
    assert {f.rule_id for f in result.findings} == {"D101", "L202"}


def test_token_ids_given_as_floats_reach_a_hugging_face_classifier_as_ids() -> None:
    model = _distilbert()
    tokens = _tokens()
    result = mechaudit.audit(model, tokens.numpy().astype(np.float32), labels=_labels(model, tokens),
                             select=["L202", "L203"], layers=["pre_classifier"])
    statuses = {f.rule_id: (f.status, f.message) for f in result.findings}
    assert statuses["L202"][0] in ("pass", "fail"), statuses
    assert statuses["L203"] == ("skipped", "skipped: the inputs are token ids (integers): input attribution needs "
                                           "real-valued inputs")  # ids are not perturbed as real values


def test_a_compiled_model_is_audited_as_the_module_it_compiles() -> None:
    inputs = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    eager = view_cnn()
    labels = eager(inputs).argmax(-1).detach()

    def layers(model: nn.Module) -> list[str]:
        result = mechaudit.audit(model, inputs, labels=labels, select=["D101"])
        assert all(f.status != "error" for f in result.findings)
        return [c["layer"] for c in result.metadata["components"]]

    assert layers(torch.compile(eager)) == layers(eager) == ["conv1", "conv2", "fc1", "fc2"]


def test_l207_skips_a_language_model_without_a_behaviour_instead_of_failing() -> None:
    model, inputs = _gpt2(), _tokens()
    data = AuditData(inputs=inputs, labels=_labels(model, inputs), pairs=(inputs, _tokens(1)))
    (finding,) = mechaudit.audit(model, data, task="next-token", select=["L207"]).findings
    assert finding.status == "skipped"
    assert "not classification and the spec declares no [behaviour]" in finding.message


def test_a_sequence_first_layer_is_audited_samples_first() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 24, dropout=0.0)  # batch_first=False: (tokens, samples, width)

    class SequenceFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.encoder, self.head = nn.Embedding(VOCAB, 16), nn.TransformerEncoder(
                layer, 1, enable_nested_tensor=False), nn.Linear(16, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(ids.long()).transpose(0, 1)).mean(0))

    result = mechaudit.audit(SequenceFirst().eval(), _tokens(), select=["D101"])
    assert not result.metadata.get("skipped_layers")
    components = {c["layer"]: (c["kind"], c.get("layout")) for c in result.metadata["components"]}
    assert components["encoder.layers.0.linear1"] == ("linear", "samples on axis 1 (sequence-first)")
    assert components["encoder.layers.0.self_attn"] == ("heads", None)  # its heads are turned samples first


class _Recurrent(nn.Module):
    def __init__(self, reads: str) -> None:
        super().__init__()
        self.reads = reads
        self.embed, self.rnn, self.head = nn.Embedding(VOCAB, 8), nn.GRU(8, 12, batch_first=True), nn.Linear(12, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        sequence, state = self.rnn(self.embed(ids.long()))
        return self.head(sequence[:, -1] if self.reads == "sequence" else state[-1])


def _recurrent(reads: str) -> nn.Module:
    torch.manual_seed(0)
    return _Recurrent(reads).eval()


def test_a_recurrent_layer_is_named_in_the_skip_and_audited_as_a_stream_when_named() -> None:
    inputs = _tokens()
    (skipped,) = mechaudit.audit(_recurrent("sequence"), inputs, select=["D101"]).findings
    assert skipped.status == "skipped" and "left out: rnn (a recurrent layer (GRU): audited only when named" in (
        skipped.message)
    result = mechaudit.audit(_recurrent("sequence"), inputs, select=["D101"], layers=["rnn"])
    assert [(c["layer"], c["kind"], c["units"]) for c in result.metadata["components"]] == [("rnn", "stream", 12)]


def test_a_named_stream_the_output_does_not_read_is_refused() -> None:
    with pytest.raises(InputError, match="'rnn' cannot be audited: the model's output does not read the first"):
        mechaudit.audit(_recurrent("state"), _tokens(), select=["L202"], layers=["rnn", "head"])


def test_a_stream_the_output_does_not_read_is_found_when_every_parameter_is_frozen() -> None:
    from mechaudit.model_view import _unread_streams

    frozen, reading = _recurrent("state").requires_grad_(False), _recurrent("sequence").requires_grad_(False)
    assert _unread_streams(frozen, _tokens()[:2], {"rnn": frozen.rnn}) == ["rnn"]
    assert _unread_streams(reading, _tokens()[:2], {"rnn": reading.rnn}) == []  # control: read


def _swin() -> nn.Module:  # window attention: heads computed on (samples x windows, tokens, width)
    return _hf("SwinForImageClassification", "SwinConfig", image_size=8, patch_size=2, num_channels=3, embed_dim=16,
               depths=[1], num_heads=[2], window_size=2, num_labels=3)


def test_window_attention_folding_windows_into_the_batch_is_audited_by_sample() -> None:
    model = _swin()  # windows are folded sample-major (Swin's window_partition): verified at discovery
    result = mechaudit.audit(model, IMAGES, labels=_labels(model, IMAGES), select=["L202"])
    assert not [f.message for f in result.findings if f.status == "error"]
    assert not result.metadata.get("skipped_layers")
    components = {c["layer"]: (c["kind"], c["units"], c.get("layout")) for c in result.metadata["components"]}
    folded = "4 rows per sample folded into axis 0 (each sample's rows together)"
    assert components["swin.encoder.layers.0.blocks.0.attention"] == ("heads", 2, folded)
    assert components["swin.encoder.layers.0.blocks.0.attention.q_proj"] == ("linear", 16, folded)
    assert components["swin.encoder.layers.0.blocks.0.mlp.fc1"][2] is None


def _opt() -> nn.Module:  # the MLP runs on hidden_states.reshape(-1, width): (samples x tokens, width)
    return _hf("OPTForSequenceClassification", "OPTConfig", vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
               num_attention_heads=2, ffn_dim=24, max_position_embeddings=16, word_embed_proj_dim=16, num_labels=3,
               pad_token_id=0)


def test_opts_folded_mlp_is_audited_by_sample() -> None:
    model, tokens = _opt(), _tokens()
    result = mechaudit.audit(model, tokens, labels=_labels(model, tokens), select=["D101", "L202"])
    assert not [f.message for f in result.findings if f.status == "error"]
    assert not result.metadata.get("skipped_layers")
    components = {c["layer"]: (c["units"], c.get("layout")) for c in result.metadata["components"]}
    assert components["model.decoder.layers.0.fc1"] == (24, "6 rows per sample folded into axis 0 (each sample's "
                                                            "rows together)")
    assert {f.location.layer for f in result.findings if f.rule_id == "L202"} >= {"model.decoder.layers.0.fc1",
                                                                                  "model.decoder.layers.0.fc2"}


def test_r303_skips_token_ids_instead_of_feeding_them_a_real_valued_baseline() -> None:
    model, tokens = _distilbert(), _tokens()
    mask = torch.zeros(TOKENS)
    mask[:2] = 1
    (finding,) = mechaudit.audit(model, tokens, labels=_labels(model, tokens), masks={"first": mask}, select=["R303"],
                                 behaviour={"kind": "predicted_logit"}).findings
    assert (finding.status, finding.message) == ("skipped", "skipped: the inputs are token ids (integers): input "
                                                            "attribution needs real-valued inputs")


def test_a_hugging_face_output_without_logits_is_refused_naming_its_fields() -> None:
    encoder = _hf("BertModel", "BertConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                  num_attention_heads=4, intermediate_size=48, max_position_embeddings=16)
    with pytest.raises(InputError, match=r"returns a BaseModelOutput\w* \(last_hidden_state, pooler_output\); "
                                         r"expected a tensor of outputs \(or a Hugging Face output with logits\)"):
        mechaudit.audit(encoder, _tokens(), select=["D101"])


class _TupleBlock(nn.Module):  # returns (hidden states, None), as many custom and older Hugging Face blocks do
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x + torch.relu(self.fc(x)), None


class _Stacked(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(VOCAB, 8), nn.Linear(8, 3)
        self.first, self.second = ((nn.LSTM(8, 8, batch_first=True), nn.LSTM(8, 8, batch_first=True))
                                   if kind == "lstm" else (_TupleBlock(), _TupleBlock()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.second(self.first(self.embed(ids.long()))[0])[0][:, -1])


@pytest.mark.parametrize("kind", ["lstm", "block"])
def test_stacked_streams_named_together_are_both_audited(kind: str) -> None:
    torch.manual_seed(0)  # the first stream is read through the second: the autograd check must not cut the graph
    result = mechaudit.audit(_Stacked(kind).eval(), _tokens(), select=["D101"], layers=["first", "second"])
    assert [(c["layer"], c["kind"]) for c in result.metadata["components"]] == [("first", "stream"),
                                                                                ("second", "stream")]


def test_a_compiled_model_keeps_its_dtype_and_forward_arguments() -> None:
    inputs = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    eager = view_cnn()
    labels = eager(inputs).argmax(-1).detach()
    result = mechaudit.audit(torch.compile(eager), inputs, labels=labels, select=["D101", "L202"], dtype="bfloat16")
    assert not [f.message for f in result.findings if f.status == "error"]
    assert {f.rule_id for f in result.findings} == {"D101", "L202"}


def test_a_factory_returning_a_compiled_model_keeps_its_forward_arguments(tmp_path, monkeypatch) -> None:
    from mechaudit.loading.model import load_model
    from mechaudit.spec import ModelSpec

    (tmp_path / "compiled_factory.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Scaled(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Linear(4, 2)\n\n    def forward(self, x, scale=1.0):\n        return self.fc(x) * scale\n\n"
        "def build():\n    torch.manual_seed(0)\n    return torch.compile(Scaled())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model(ModelSpec(name="scaled", factory="compiled_factory:build", forward_kwargs={"scale": 100.0}),
                        search_path=tmp_path)
    x, module = torch.randn(2, 4), loaded.module
    assert type(module).__name__ == "Scaled"  # the eager module, its forward bound to scale=100
    with torch.no_grad():
        assert torch.allclose(module(x), 100.0 * module.fc(x))


class _DictOutput(nn.Module):  # a custom model returning a mapping with logits, a parameter of its own at the top
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.temperature = nn.Parameter(torch.tensor(2.0))
        self.register_buffer("offset", torch.ones(3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(x) / self.temperature + self.offset}


def test_the_logits_field_holds_the_models_own_parameters_and_buffers() -> None:
    from mechaudit.loading.auditable import LogitsField

    model = _DictOutput()
    wrapped = LogitsField(model)
    assert set(wrapped.state_dict()) == set(model.state_dict()) == {"fc.weight", "fc.bias", "temperature", "offset"}
    assert any(p is model.temperature for p in wrapped.parameters())


def test_the_logits_field_moved_to_a_dtype_moves_the_buffers_its_model_reads() -> None:
    from mechaudit.loading.auditable import LogitsField

    model = _DictOutput()
    wrapped = LogitsField(model).to(torch.float64)
    assert model.offset.dtype == model.temperature.dtype == torch.float64
    wrapped.offset.fill_(5.0)  # the buffer the wrapper holds is the one the model's forward reads
    with torch.no_grad():
        assert torch.equal(wrapped(torch.zeros(1, 4, dtype=torch.float64)), (model.fc.bias / 2.0 + 5.0)[None])


def test_a_mapping_output_is_cast_back_to_float32() -> None:
    from mechaudit.loading.auditable import auditable
    from mechaudit.precision import cast_forward

    model, tokens = _distilbert(), _tokens()
    wrapped, _ = auditable(cast_forward(model, "bfloat16"), AuditData(inputs=tokens), torch.device("cpu"))
    with torch.no_grad():
        assert wrapped(tokens).dtype == torch.float32
        assert model(tokens).logits.dtype == torch.float32  # the ModelOutput's attribute follows its item
    assert cast_forward(_DictOutput(), "bfloat16")(torch.ones(2, 4))["logits"].dtype == torch.float32


def test_a_stream_returning_a_tensor_costs_no_autograd_forward() -> None:
    from mechaudit.model_view import ModelView

    model = _Stacked("block").eval()
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    ModelView.discover(model, _tokens()[:2], only=("embed",))  # an nn.Embedding returns a tensor
    assert len(calls) == 1
    ModelView.discover(model, _tokens()[:2], only=("first",))  # a tuple: checked by autograd, a second forward
    assert len(calls) == 3


def test_float_token_ids_are_checked_on_every_sample_before_conversion() -> None:
    model, tokens = _distilbert(), _tokens().float()
    negative = tokens.clone()
    negative[5, 2] = -3
    with pytest.raises(InputError, match=r"audit data inputs: are token ids for this model, but 1 are negative "
                                         r"\(first: -3 at index \[5, 2\]\)"):
        mechaudit.audit(model, negative, labels=torch.arange(SAMPLES) % 3, select=["D101"])
    fractional = tokens.clone()
    fractional[5, 2] = 3.5  # not token ids: left as floats (not rounded to 3), and the model's forward fails on them
    with pytest.raises(InputError, match="forward pass failed"):
        mechaudit.audit(model, fractional, labels=torch.arange(SAMPLES) % 3, select=["D101"])


def test_negative_token_ids_are_named_by_where_they_are() -> None:
    from mechaudit.loading.auditable import as_token_ids

    tokens = _tokens().float()
    negative = tokens.clone()
    negative[0, 0] = -1
    with pytest.raises(InputError, match=r"audit data cues\[1\]: "):  # no pairs: the cues are not called pairs
        as_token_ids(AuditData(inputs=tokens, cues=(tokens, negative)))
    with pytest.raises(InputError, match=r"audit data pairs\[0\]: "):
        as_token_ids(AuditData(inputs=tokens, pairs=(negative, tokens), cues=(tokens, tokens)))


def test_infinite_inputs_are_not_taken_for_token_ids() -> None:
    from mechaudit.loading.auditable import auditable

    model = nn.Sequential(nn.Embedding(VOCAB, 8), nn.Flatten(), nn.Linear(8 * TOKENS, 3)).eval()  # fails on floats
    tokens = _tokens().float()
    tokens[3, 1] = float("inf")  # inf == round(inf): not a whole number all the same
    _, data = auditable(model, AuditData(inputs=tokens), torch.device("cpu"))
    assert data.inputs.is_floating_point()


def test_token_ids_are_recognised_in_two_forward_passes() -> None:
    from mechaudit.loading.auditable import auditable

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(VOCAB, 8), nn.Flatten(), nn.Linear(8 * TOKENS, 3)).eval()  # fails on floats
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    _, data = auditable(model, AuditData(inputs=_tokens().float()), torch.device("cpu"))
    assert data.inputs.dtype == torch.int64 and len(calls) == 2
