"""Pictures of what units and heads do (issue 18): attention patterns of flagged heads, the activation atlas,
exemplars with receptive fields, region tuning, per-column attribution for tables, and their figures.

Each technique is checked on a planted truth with a control; each figure on well-formed and malformed evidence.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from fixtures.localization_toys import write_tabular
from report_cases import example_result

from mechaudit.engine import run_audit
from mechaudit.examples.induction.model import AttentionOnlyTransformer
from mechaudit.report.document import build_document
from mechaudit.report.html_report import render_html
from mechaudit.report.unit_figures import (
    atlas_figure,
    attention_figure,
    columns_figure,
    token_attention_figure,
    token_contexts_figure,
    unit_columns_figure,
)
from mechaudit.spec import load_spec
from mechaudit.techniques.atlas import activation_atlas
from mechaudit.techniques.attention_patterns import head_patterns
from mechaudit.techniques.tuning import region_sweep_curve

# -- attention patterns ------------------------------------------------------------------------------------------

def test_head_patterns_equal_the_models_own_weights_for_softmax_mha_and_sdpa() -> None:
    torch.manual_seed(0)
    model = AttentionOnlyTransformer().eval()
    tokens = torch.randint(0, 32, (3, 32))
    captured = head_patterns(model, model.blocks[0].attn, 4, tokens)
    expected = model.blocks[0].attn.pattern(model.embed(tokens) + model.pos(torch.arange(32)))
    assert torch.allclose(captured, expected.detach(), atol=1e-6)

    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    x = torch.randn(2, 5, 16)
    _, expected = mha(x, x, x, need_weights=True, average_attn_weights=False)
    assert torch.allclose(head_patterns(Wrapped().eval(), mha, 4, x), expected.detach(), atol=1e-6)

    class Fused(torch.nn.Module):
        def forward(self, x):
            q = x.reshape(2, 5, 4, 4).transpose(1, 2)
            return F.scaled_dot_product_attention(q, q, q, is_causal=True)

    fused = Fused()
    q = x.reshape(2, 5, 4, 4).transpose(1, 2)
    expected = (q @ q.transpose(-1, -2) / 2).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), -1e9).softmax(-1)
    assert torch.allclose(head_patterns(fused, fused, 4, x), expected, atol=1e-6)


def test_head_patterns_of_a_block_without_attention_weights_is_none() -> None:
    linear = torch.nn.Linear(4, 4)
    assert head_patterns(linear, linear, 2, torch.randn(3, 4)) is None


@pytest.mark.slow
def test_flagged_induction_heads_carry_their_patterns_and_the_previous_token_head_looks_back() -> None:
    """The planted previous-token head attends to the token before (measured: mean weight 0.86); the induction
    head does not (measured 0.08): the pattern tells the two apart."""
    result = example_result("induction")
    patterns = {row["component"]: row for f in result.findings if f.rule_id in ("L202", "L207")
                for row in f.evidence.get("attention_patterns", [])}
    assert {"blocks.0.attn:h2", "blocks.1.attn:h3"} <= set(patterns)

    def on_previous(component: str) -> float:
        mean = torch.tensor(patterns[component]["mean"])
        return float(torch.diagonal(mean, offset=-1).mean())
    assert on_previous("blocks.0.attn:h2") > 0.6 and on_previous("blocks.1.attn:h3") < 0.3
    document = build_document(result)
    drawn = [fig for view in document.findings for fig in view.figures if fig.name.endswith("-attention.svg")]
    assert drawn and all("attention_patterns" in fig.sources for fig in drawn)
    page = render_html(result)  # the figure replaces the raw matrices in the evidence tables
    assert "Attention patterns" in page and '"evidence-key">attention patterns<' not in page
    assert "<th>example tokens</th>" not in page


def test_attention_figure_draws_valid_patterns_and_skips_malformed_ones() -> None:
    eye = torch.eye(4).tolist()
    figure = attention_figure([{"component": "b.attn:h1", "mean": eye, "example": eye, "samples": 8,
                                "example_tokens": ["a", "b", "c", "d"]}], "01-x")
    assert figure is not None and figure.svg.count("<image") >= 2 and "on itself 1.00" in figure.caption
    assert attention_figure([{"component": "h", "mean": [[1.0, 0.0]]}], "01-x") is None  # not square
    assert attention_figure([{"component": "h", "mean": [[float("nan")]]}], "01-x") is None
    assert attention_figure("not a list", "01-x") is None


# -- activation atlas ----------------------------------------------------------------------------------------------

def test_atlas_cells_keep_apart_what_the_layer_keeps_apart() -> None:
    """Two clusters of activations, each with its own image: no cell mixes them, and the marked share follows the
    marked cluster. Control: activations that ignore the images give cells that mix both kinds."""
    generator = torch.Generator().manual_seed(0)
    n = 120
    kind = torch.arange(n) % 2
    images = torch.zeros(n, 1, 8, 8)
    images[kind == 1, :, :, 4:] = 1.0
    separated = (kind[:, None].float() * 10 + torch.randn(n, 6, generator=generator))[:, :, None]
    labels = [str(int(k)) for k in kind]
    atlas = activation_atlas(separated, images, labels, marked=kind.bool(), grid=6)
    assert atlas["method"] == "t-SNE" and sum(c["count"] for c in atlas["cells"]) <= n
    assert all(c["label_share"] == 1.0 and c["marked_share"] == float(c["label"] == "1") for c in atlas["cells"])
    bright = [c for c in atlas["cells"] if c["label"] == "1"]
    assert bright and all(c["image"][0][-1] == 1.0 and c["image"][0][0] == 0.0 for c in bright)

    mixed = activation_atlas(torch.randn(n, 6, 1, generator=generator), images, labels, grid=2)
    assert min(c["label_share"] for c in mixed["cells"]) < 0.9
    figure = atlas_figure({"layer": "features.0", **atlas}, "01-x")
    assert figure is not None and "carry it more often than the 50%" in figure.caption and figure.svg.count("<image") == len(
        atlas["cells"])


def test_atlas_figure_skips_malformed_evidence() -> None:
    assert atlas_figure({"grid": 4, "cells": [{"row": 9, "col": 0, "image": [[0.0]]}]}, "01-x") is None
    assert atlas_figure({"grid": 99, "cells": []}, "01-x") is None
    assert atlas_figure([], "01-x") is None


# -- the digits trace units: exemplars, receptive fields, tuning, atlas -------------------------------------------

@pytest.mark.slow
def test_digits_trace_units_are_pictured_with_receptive_fields_and_region_tuning() -> None:
    flips = next(f for f in example_result("digits").findings if f.rule_id == "L201" and f.metric == "flip_rate")
    evidence = flips.evidence
    units = [u["component"] for u in next(r for r in evidence["what_if"]["layers"]
                                          if r["layer"] == evidence["what_if"]["best"])["units"][:3]]
    assert [row["component"] for row in evidence["exemplars"]] == units
    for row in evidence["exemplars"]:  # features.0 is a 3x3 convolution: one receptive field is at most 3x3
        for exemplar in row["exemplars"]:
            top, left, bottom, right = exemplar["receptive_field"]
            assert 0 < bottom - top <= 3 and 0 < right - left <= 3
    for curve in evidence["tuning_curves"]:  # the units that carry the watermark respond to its value
        assert curve["factor"] == "value of watermark" and curve["response"][-1] > curve["response"][0]
    assert evidence["activation_atlas"]["layer"] == evidence["what_if"]["best"]
    names = [fig.name for view in build_document(example_result("digits")).findings for fig in view.figures]
    for kind in ("exemplars", "activation-max", "tuning", "atlas", "heatmaps"):
        assert any(name.endswith(f"-{kind}.svg") for name in names), kind


def test_region_sweep_responds_to_a_read_region_and_not_to_an_ignored_one() -> None:
    inputs = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 3, 3] = 1

    def reads(batch):
        return batch[:, 0, 3, 3] * 2

    def ignores(batch):
        return batch[:, 0, 0, 0]
    read = region_sweep_curve(reads, inputs, mask, 0.0, 1.0, points=3, region="corner")
    assert read["response"] == [0.0, 1.0, 2.0] and read["factor"] == "value of corner"
    flat = region_sweep_curve(ignores, inputs, mask, 0.0, 1.0, points=3)
    assert len(set(flat["response"])) == 1


# -- text and tables -----------------------------------------------------------------------------------------------

def test_token_contexts_highlight_the_activating_token() -> None:
    entries = [{"component": "fc:u3", "exemplars": [{"activation": 2.5, "context": "a b [[c]] d"},
                                                    {"activation": 1.0, "context": "[[x]] y"}]}]
    figure = token_contexts_figure(entries, "01-x")
    assert figure is not None and ">c<" in figure.svg.replace(" ", "") and "#ffd54f" in figure.svg
    assert token_contexts_figure([{"component": "u", "exemplars": [{"context": "no peak"}]}], "01-x") is None


@pytest.fixture(scope="module")
def tabular(tmp_path_factory) -> dict[bool, object]:
    def audit(leak: bool):
        spec = load_spec(write_tabular(tmp_path_factory.mktemp(f"columns{leak}"), leak))
        return run_audit(dataclasses.replace(spec, options=dataclasses.replace(spec.options, select=("L201",))))
    return {leak: audit(leak) for leak in (True, False)}


def test_tables_get_attribution_per_column_with_the_leaked_column_on_top(tabular) -> None:
    """The leaked protected column takes most of the attribution of some class (measured: 0.74); in the control it
    takes little of every class (measured: at most 0.04)."""
    def shares(result) -> list[float]:
        finding = next(f for f in result.findings if f.metric == "attribution_ratio")
        columns = finding.evidence["attribution_per_column"]
        assert columns["columns"][columns["region_column"]] == "sex"
        return [row[columns["region_column"]] for row in columns["mean_share_per_class"]]
    assert max(shares(tabular[True])) > 0.4 and max(shares(tabular[False])) < 0.2
    figures = [fig for view in build_document(tabular[True]).findings for fig in view.figures]
    assert any(fig.name.endswith("-columns.svg") and "sex" in fig.svg for fig in figures)


def test_columns_figure_skips_malformed_evidence() -> None:
    assert columns_figure({"columns": ["a"], "classes": ["0"], "mean_share_per_class": [[0.1, 0.2]]}, "x") is None
    assert columns_figure({"columns": [], "classes": [], "mean_share_per_class": []}, "x") is None


@pytest.fixture(scope="module")
def critical_unit_of_a_table(tmp_path_factory):
    """L202 on the toy MLP whose unit fc1:u0 alone reads x0 (the signal); fc1:u1..u7 read x1..x3."""
    from conftest import write_project

    project = write_project(tmp_path_factory.mktemp("critical"), factory_args={"spread": 1},
                            data_table='labels = "labels"', extra='[audit]\nselect = ["L202"]')
    return load_spec(project.spec)


def test_a_tabular_critical_unit_gets_bars_of_the_columns_it_reads(critical_unit_of_a_table) -> None:
    """Planted: fc1:u0 reads only x0, so x0 takes all its attribution; control: fc1:u2 reads only x3."""
    from mechaudit.checks.decomposition_evidence import unit_pictures
    from mechaudit.engine import prepare

    result = run_audit(critical_unit_of_a_table)
    [finding] = [f for f in result.findings if f.status == "fail"]
    [row] = finding.evidence["column_attribution"]
    assert row["component"] == "fc1:u0" and row["columns"][0] == "x0" and row["shares"][0] > 0.99
    [view] = [v for v in build_document(result).findings if v.data["rule_id"] == "L202"]
    [figure] = [fig for fig in view.figures if fig.sources == ("column_attribution",)]
    assert "fc1:u0: x0 (100%)" in figure.caption and ">x3<" in figure.svg
    context, _ = prepare(critical_unit_of_a_table)
    [other] = unit_pictures(context, ["fc1:u2"])["column_attribution"]
    assert other["columns"][0] == "x3" and other["shares"][0] > 0.99


def test_column_bars_that_cannot_be_made_keep_the_units_exemplars(critical_unit_of_a_table, monkeypatch) -> None:
    """No gradient reaches the inputs (the model detaches them, as one casting float ids does): no bars, no
    warning; the bars raising: a warning; the exemplars stay in both cases."""
    from mechaudit.checks import decomposition_evidence
    from mechaudit.engine import prepare

    context, _ = prepare(critical_unit_of_a_table)
    handle = context.model.register_forward_pre_hook(lambda _module, args: (args[0].detach(), *args[1:]))
    try:
        detached = decomposition_evidence.unit_pictures(context, ["fc1:u2"])
    finally:
        handle.remove()
    assert "exemplars" in detached and "column_attribution" not in detached

    def broken(*_args):
        raise RuntimeError("no bars")
    monkeypatch.setattr(decomposition_evidence, "_column_attribution", broken)
    with pytest.warns(UserWarning, match="no column attribution of fc1:u2: RuntimeError: no bars"):
        pictures = decomposition_evidence.unit_pictures(context, ["fc1:u2"])
    assert "exemplars" in pictures and "column_attribution" not in pictures


def test_unit_columns_figure_skips_malformed_evidence() -> None:
    assert unit_columns_figure([{"component": "u", "columns": ["a", "b"], "shares": [0.5]}], "x") is None
    assert unit_columns_figure([{"component": "u", "columns": ["a"], "shares": ["high"]}], "x") is None
    assert unit_columns_figure({"component": "u"}, "x") is None
    assert unit_columns_figure([{"component": "u", "columns": ["a"], "shares": [1.0]}], "x") is not None


def test_token_attention_shades_the_tokens_the_last_position_reads() -> None:
    pattern = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.9, 0.1]]
    figure = token_attention_figure([{"component": "b.attn:h0", "mean": pattern, "example": pattern,
                                      "example_tokens": ["a", "b", "c"]}], "01-x")
    assert figure is not None and "token 1 (b, weight 0.90)" in figure.caption
    assert token_attention_figure([{"component": "h", "example": pattern, "example_tokens": ["a"]}], "01-x") is None


def test_per_class_evidence_keeps_the_ten_most_predicted_of_thirty_classes() -> None:
    """30 predicted classes, class c predicted c+1 times (ties broken by index): the maps and column shares keep
    classes 20..29 only, record all 30, and the captions say so."""
    from mechaudit.checks.forbidden_input import _attribution_maps, _attribution_per_column
    from mechaudit.report.figures import _heatmap_figures

    predictions = torch.cat([torch.full((c + 1,), c) for c in range(30)])
    n = len(predictions)
    maps = _attribution_maps(torch.rand(n, 1, 8, 8), torch.zeros(1, 1, 8, 8), predictions,
                             torch.ones(n, dtype=torch.bool), str, torch.rand(n, 1, 8, 8))
    assert maps["classes"] == [str(c) for c in range(20, 30)] and len(maps["mean_per_class"]) == 10
    assert maps["classes_total"] == 30
    columns = _attribution_per_column(torch.rand(n, 4), predictions, str, None, 0)
    assert columns["classes"] == maps["classes"] and len(columns["mean_share_per_class"]) == 10
    assert columns["classes_total"] == 30
    finding = {"evidence": {"attribution_maps": maps}, "location": {"component": "input:box"}}
    assert "10 of 30 classes" in _heatmap_figures(finding, "01-x")[0].caption
    assert "10 of 30 classes" in columns_figure(columns, "01-x").caption
    few = _attribution_maps(torch.rand(6, 1, 8, 8), torch.zeros(1, 1, 8, 8), torch.tensor([3, 1, 1, 2, 2, 2]),
                            torch.ones(6, dtype=torch.bool), str, torch.rand(6, 1, 8, 8))
    assert few["classes"] == ["1", "2", "3"] and few["classes_total"] == 3
    assert "classes, the most" not in _heatmap_figures({"evidence": {"attribution_maps": few}}, "01-x")[0].caption


def test_on_40_tokens_the_last_position_is_the_true_last_and_the_captions_say_what_is_cut() -> None:
    """A 40-token sequence: the evidence keeps the first 32 query rows, and also the true last query row over the
    last 32 keys; the token figure shades that row (not query 31's) and both captions state the truncation."""
    from types import SimpleNamespace

    from mechaudit.checks.decomposition_evidence import _pattern
    from mechaudit.loading.token_text import IDS
    from mechaudit.model_view import Layer

    torch.manual_seed(0)
    model = AttentionOnlyTransformer(max_len=40).eval()
    tokens = torch.randint(0, 32, (2, 40))
    context = SimpleNamespace(model=model, device=torch.device("cpu"), data=SimpleNamespace(token_text=IDS))
    row = _pattern(context, Layer("blocks.1.attn", "heads", 4, 1), 3, tokens)
    full = head_patterns(model, model.blocks[1].attn, 4, tokens)[0, 3]
    assert row["positions"] == 40 and len(row["example"]) == 32 and row["last_row_start"] == 8
    assert torch.allclose(torch.tensor(row["last_row"]), full[-1, 8:], atol=1e-3)
    assert row["last_row_tokens"] == [f"t{t}" for t in tokens[0, 8:].tolist()]  # no vocabulary declared: ids
    figure = token_attention_figure([row], "01-x")
    strongest = int(full[-1, 8:].argmax())
    assert f"token {strongest} ({row['last_row_tokens'][strongest]}," in figure.caption
    assert "the last 32 of 40 tokens" in figure.caption
    assert "the first 32 of 40 positions" in attention_figure([row], "01-x").caption
    cut = {key: value for key, value in row.items() if not key.startswith("last_row")}  # no true last row recorded
    assert token_attention_figure([cut], "01-x") is None
