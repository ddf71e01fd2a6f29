"""The residual stream as a layer (kind ``stream``): a named module whose output is one vector per token."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from mechaudit.engine import run_audit
from mechaudit.errors import InputError
from mechaudit.examples import example_spec
from mechaudit.model_view import ModelView, units_view
from mechaudit.spec import load_spec
from mechaudit.techniques.node_ablation import ablated


class TupleBlock(nn.Module):
    """A block that returns (stream, extra), as Hugging Face layers do."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mix = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + self.mix(x), x.sum()


class TinyStreamModel(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, width)
        self.block = TupleBlock(width)
        self.head = nn.Linear(width, 3)
        self.act = nn.ReLU()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        stream, _ = self.block(self.embed(tokens))
        return self.head(self.act(stream.mean(1)))


def test_a_named_block_is_a_stream_layer_with_typed_addresses() -> None:
    model, tokens = TinyStreamModel().eval(), torch.randint(0, 10, (4, 5))
    view = ModelView.discover(model, tokens, only=("block", "head"))
    stream = view.layer("block")
    assert (stream.kind, stream.size, stream.prefix) == ("stream", 6, "d")
    assert view.resolve("block:d5") == (stream, 5)
    with pytest.raises(InputError, match="block has units d0..d5"):
        view.resolve("block:d6")
    with pytest.raises(InputError, match="one vector per token"):
        ModelView.discover(model, tokens, only=("act",))       # runs, but (samples, width): not a stream
    with pytest.raises(InputError, match="not a module of the model"):
        ModelView.discover(model, tokens, only=("nowhere",))


def test_ablating_a_stream_dimension_rewrites_the_first_element_of_a_tuple_output() -> None:
    model, tokens = TinyStreamModel().eval(), torch.randint(0, 10, (4, 5))
    view = ModelView.discover(model, tokens, only=("block",))
    layer = view.layer("block")
    seen = []
    with torch.no_grad(), ablated(view, ["block:d2"], {"block": torch.full((6, 5), 7.0)}):
        handle = model.block.register_forward_hook(lambda _m, _a, output: seen.append(output))  # runs after
        model(tokens)
    handle.remove()
    stream, extra = seen[0]
    assert isinstance(seen[0], tuple) and torch.isfinite(extra)
    assert torch.all(stream[..., 2] == 7.0)                                # only dimension 2, at every token
    with torch.no_grad():
        clean, _ = model.block(model.embed(tokens))
    assert torch.equal(stream[..., [0, 1, 3, 4, 5]], clean[..., [0, 1, 3, 4, 5]])
    assert units_view(clean, layer).shape == (4, 6, 5)                     # (samples, dims, tokens)


@pytest.fixture(scope="module")
def stream_audit():
    spec = load_spec(example_spec("induction"))
    options = dataclasses.replace(spec.options, layers=("blocks.0.attn", "blocks.1.attn", "blocks.0", "blocks.1"),
                                  select=("D101", "D103", "L202"), max_samples=64,
                                  rules=(("D103", "test", {"expansion": 4, "k": 4, "seeds": 2}),))  # fixed size, two seeds
    return run_audit(spec=dataclasses.replace(spec, options=options))


def test_rules_run_on_residual_streams_next_to_heads(stream_audit) -> None:
    statuses = {run.rule_id: run.status for run in stream_audit.rules}
    assert "error" not in statuses.values(), statuses
    dictionaries = {f.location.layer: f.evidence for f in stream_audit.findings
                    if f.rule_id == "D103" and f.metric == "fvu"}
    for layer in ("blocks.0", "blocks.1", "blocks.0.attn", "blocks.1.attn"):
        evidence = dictionaries[layer]                # one vector of 64 dims per token, 32 tokens per prompt
        assert evidence["width"] == 64 and evidence["positions_per_sample"] == 32
        assert evidence["vectors"] == 64 * 32 and evidence["features"] == 4 * 64
    stream_fvu = [dictionaries[name]["fvu"] for name in ("blocks.0", "blocks.1")]
    assert max(stream_fvu) < 0.1                      # the residual stream is well reconstructed
    failing = {f.location.component for f in stream_audit.findings if f.rule_id == "L202" and f.status == "fail"}
    assert failing == {"blocks.0.attn:h2", "blocks.1.attn:h3"}   # no single stream dimension is critical


def test_probes_read_the_token_position_they_are_told_to() -> None:
    """A concept carried only by the first token: decodable from the stream at the first position, not the last
    (the control reading), and the mean over tokens sits in between."""
    import mechaudit
    from mechaudit.loading import AuditData

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 10, (200, 5), generator=generator)
    concept = (tokens[:, 0] >= 5).long()                  # the first token's half of the vocabulary
    model = TinyStreamModel(width=8).eval()
    data = AuditData(inputs=tokens, concepts={"first_half": concept})
    decodability = {}
    for position in ("first", "last", "mean"):
        result = mechaudit.audit(model, data, task="regression", select=["L205"], layers=["block"],
                                 rules={"L205": {"position": position}})
        (finding,) = result.findings
        profile = {row["layer"]: row["decodability"] for row in finding.evidence["profile"]}
        decodability[position] = profile["block"]
        assert finding.evidence["position"] == position
    assert decodability["first"] > 0.9 and decodability["last"] < 0.2
    assert decodability["last"] < decodability["mean"] < decodability["first"]
