"""A GPT-2 causal language model from a local directory (config + safetensors), audited from the command line:
heads, MLP neurons (Hugging Face's Conv1D) and the circuit edges between them across GPT-2's LayerNorms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import read_findings  # noqa: E402

from mechaudit.cli import main  # noqa: E402

LAYERS = ["transformer.h.0.attn", "transformer.h.0.mlp.c_fc", "transformer.h.1.attn", "transformer.h.1.mlp.c_fc"]


def _write_audit(folder: Path) -> Path:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder / "gpt2", safe_serialization=True)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 40, (48, 10))
    np.savez(folder / "prompts.npz", inputs=tokens, labels=tokens[:, 3], corrupted=rng.integers(1, 40, (48, 10)))
    spec = folder / "gpt2.toml"
    spec.write_text(f"""
[model]
name = "tiny GPT-2"
factory = "mechaudit.loading.huggingface:causal_lm"
factory_args = {{ path = "{(folder / 'gpt2').as_posix()}" }}

[data]
file = "prompts.npz"
inputs = "inputs"
labels = "labels"

[data.pairs]
clean = "inputs"
corrupted = "corrupted"

[task]
kind = "next-token"

[behaviour]
kind = "label_logit"

[audit]
layers = {LAYERS!r}
select = ["D101", "L202", "L207", "R301", "R302"]
""".replace("'", '"'), encoding="utf-8")
    return spec


@pytest.mark.slow
def test_gpt2_heads_and_mlp_neurons_are_audited_with_circuit_edges(tmp_path: Path) -> None:
    spec = _write_audit(tmp_path)
    out = tmp_path / "out"
    code = main(["audit", str(spec), "--format", "json", "--out", str(out), "-q"])
    data = read_findings(out)
    assert code in (0, 1)
    assert {r["id"]: r["status"] for r in data["rules"] if r["status"] == "error"} == {}
    kinds = {c["layer"]: (c["kind"], c["units"]) for c in data["metadata"]["components"]}
    assert kinds == {"transformer.h.0.attn": ("heads", 4), "transformer.h.0.mlp.c_fc": ("linear", 128),
                     "transformer.h.1.attn": ("heads", 4), "transformer.h.1.mlp.c_fc": ("linear", 128)}
    assert {f["location"]["layer"] for f in data["findings"] if f["rule_id"] == "L202"} == set(LAYERS)
    (r301,) = [f for f in data["findings"] if f["rule_id"] == "R301"]
    assert r301["evidence"]["unconnected_layers"] == []
    assert "strongest edges of 1536;" in r301["message"]        # 4 x 128 + 128 x 4 + 4 x 128: every pair scored
