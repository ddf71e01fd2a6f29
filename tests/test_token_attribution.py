"""Per-token attribution over the input embedding (L207's ``token_attribution`` evidence) on the induction example.

The planted copy mechanism: the clean prompt differs from its corrupted twin only before the last period, and what
the induction circuit reads there is the earlier occurrences of the current (last) token and of the token to copy
(the label). Measured on the first 3 pairs (the ones L207 records): those positions hold 5.6x, 7.1x and 3.2x their
share of the changed positions of the absolute attribution (mean 5.3x; 1.8x to 10x, median 5.2x, over the first 30
pairs); randomly initialised models of the same architecture a mean of 0.59x to 1.32x (seeds 0-9; 1.30x for seed 0,
the one tested): 2.5x separates them. The control (every head pruned) scores exactly zero everywhere, as its
behaviour does not change between the prompts. Completeness gaps are below 1e-5
for differences of 8 to 13 logits.
"""

import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("captum")
from safetensors.torch import load_file  # noqa: E402

from mechaudit.checks.token_evidence import token_attribution  # noqa: E402
from mechaudit.examples.induction.model import build  # noqa: E402
from mechaudit.loading.token_text import IDS, from_vocabulary  # noqa: E402
from mechaudit.report.token_figures import token_attribution_figures  # noqa: E402
from mechaudit.techniques.circuits import target_logit  # noqa: E402
from mechaudit.techniques.token_attribution import input_embedding, token_attributions  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "mechaudit" / "examples" / "induction"
DATA = np.load(EXAMPLE / "audit_data.npz")
CLEAN, CORRUPTED, LABELS = (torch.tensor(DATA[key]) for key in ("clean", "corrupted", "labels"))
SEPARATES = 2.5  # concentration of the planted mechanism (mean 5.3x) vs random weights (at most 1.32x)


def last_logit(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The example's declared behaviour: the logit of the correct next token at the last position."""
    return target_logit(outputs[:, -1], targets)


def model(name: str | None) -> torch.nn.Module:
    torch.manual_seed(0)
    built = build()
    if name is not None:
        built.load_state_dict(load_file(EXAMPLE / f"{name}.safetensors"))
    return built.eval()


def concentration(rows) -> list[float]:
    """Per sample: the share of absolute attribution on the earlier occurrences of the last token and of the token
    to copy, over those positions' share of the positions the two prompts differ at (1: no concentration)."""
    ratios = []
    for row in rows:
        tokens, scores = CLEAN[row.sample], torch.tensor(row.scores).abs()
        changed = CLEAN[row.sample] != CORRUPTED[row.sample]
        mechanism = changed & ((tokens == tokens[-1]) | (tokens == LABELS[row.sample]))
        ratios.append(float(scores[mechanism].sum() / scores.sum()) / float(mechanism.sum() / changed.sum()))
    return ratios


def attributions(name: str | None):
    return token_attributions(model(name), CLEAN[:3], LABELS[:3], last_logit, CORRUPTED[:3])


def test_the_embedding_found_is_the_token_embedding() -> None:
    built = model(None)
    assert input_embedding(built, CLEAN[:1]) is built.embed  # the first nn.Embedding called, not the positions'


def test_induction_attribution_concentrates_on_what_the_circuit_copies_and_is_complete() -> None:
    rows = attributions("induction")
    ratios = concentration(rows)
    assert np.mean(ratios) > SEPARATES and min(ratios) > SEPARATES, ratios  # measured 5.6, 7.1, 3.2
    for row in rows:
        assert row.difference > 5  # 13.3, 13.4, 8.0
        assert abs(row.completeness_gap) < 1e-3 * row.difference
        assert abs(sum(row.scores) - row.difference) < 1e-3 * row.difference  # all 32 tokens are shown
    chunked = token_attributions(model("induction"), CLEAN[:3], LABELS[:3], last_logit, CORRUPTED[:3], batch_size=7)
    assert np.allclose([r.scores for r in chunked], [r.scores for r in rows], atol=1e-4)  # paths cut into passes


def test_a_random_model_does_not_concentrate() -> None:
    ratios = concentration(attributions(None))
    assert np.mean(ratios) < SEPARATES, ratios  # measured 1.34, 1.35, 1.22 (seed 0)


def test_the_control_has_nothing_to_attribute() -> None:
    for row in attributions("induction-control"):
        assert abs(row.difference) < 1e-4 and max(abs(s) for s in row.scores) < 1e-4


def test_the_evidence_is_left_out_for_float_inputs_and_on_failure() -> None:
    plain = types.SimpleNamespace(model=model(None), device="cpu")  # no Hugging Face embeddings: floats are features
    assert token_attribution(plain, torch.zeros(2, 5), None, LABELS[:2], last_logit) == {}

    def broken(tokens):
        raise RuntimeError("boom")

    context = types.SimpleNamespace(model=broken, device="cpu", batch_size=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert token_attribution(context, CLEAN[:2], CORRUPTED[:2], LABELS[:2], last_logit) == {}
    assert any("no token attribution" in str(w.message) for w in caught)

    class Undecodable:
        def names(self, ids):
            raise ValueError("bad vocabulary")

    context = types.SimpleNamespace(model=model("induction"), device="cpu", batch_size=64,
                                    data=types.SimpleNamespace(token_text=Undecodable()))
    with warnings.catch_warnings(record=True) as caught:  # naming the tokens fails: left out too, never an error
        warnings.simplefilter("always")
        assert token_attribution(context, CLEAN[:2], CORRUPTED[:2], LABELS[:2], last_logit) == {}
    assert any("bad vocabulary" in str(w.message) for w in caught)


def test_the_figure_shows_the_tokens_shaded_by_their_scores() -> None:
    built = model("induction")
    context = types.SimpleNamespace(model=built, device="cpu", batch_size=64, data=types.SimpleNamespace(token_text=IDS))
    evidence = token_attribution(context, CLEAN[:3], CORRUPTED[:3], LABELS[:3], last_logit)
    finding = {"evidence": {"behaviour": "logit of the correct next token", **evidence}}
    [figure] = token_attribution_figures(finding, "07-L207")
    assert figure.sources == ("token_attribution",)
    assert "logit of the correct next token" in figure.caption and "corrupted prompt" in figure.caption
    assert "t17 stands for token id 17" in figure.caption
    for token in set(CLEAN[0].tolist()):
        assert f">t{token}<" in figure.svg  # no vocabulary declared: ids, never invented words
    words = [f"w{i}" if i % 2 else f"even{i}" for i in range(32)]
    context.data.token_text = from_vocabulary(words)
    [row, *_] = token_attribution(context, CLEAN[:3], CORRUPTED[:3], LABELS[:3], last_logit)["token_attribution"]
    assert row["tokens"] == [words[t] for t in CLEAN[0].tolist()]
    assert token_attribution_figures({"evidence": {"token_attribution": [{"tokens": ["a"], "scores": []}]}},
                                     "x") == []


@pytest.mark.slow
def test_the_induction_audit_records_and_draws_the_token_attribution() -> None:
    from report_cases import example_result

    from mechaudit.report.document import build_document

    document = build_document(example_result("induction"))
    [view] = [v for v in document.findings if v.data["rule_id"] == "L207"]
    rows = view.data["evidence"]["token_attribution"]
    assert [row["sample"] for row in rows] == [0, 1, 2] and all(len(row["tokens"]) == 32 for row in rows)
    assert any(figure.sources == ("token_attribution",) for figure in view.figures)


def test_a_hugging_face_gpt2_attributes_through_its_token_embedding() -> None:
    """Through the loader's wrapper: ``get_input_embeddings()`` (``wte``, whose weight the LM head shares), not the
    position embedding; the scores are complete."""
    transformers = pytest.importorskip("transformers")
    from mechaudit.loading.huggingface import LogitsOnly

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=4, n_positions=16)
    wrapped = LogitsOnly(transformers.GPT2LMHeadModel(config).eval())
    tokens = torch.randint(0, 40, (2, 12))
    corrupted = tokens.clone()
    corrupted[:, :6] = torch.randint(0, 40, (2, 6))
    assert input_embedding(wrapped, tokens[:1]) is wrapped.hf_model.transformer.wte
    rows = token_attributions(wrapped, tokens, tokens[:, -1], last_logit, corrupted)
    for row in rows:
        assert abs(row.completeness_gap) <= 0.05 * abs(row.difference) + 1e-4, (row.completeness_gap, row.difference)
        assert all(score == 0 for score in row.scores[6:])  # the positions both prompts share
