"""A Hugging Face model split by accelerate (device_map, part of it offloaded to disk) is audited where it lies,
with the same findings as the whole model on one device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from mechaudit.cli import main  # noqa: E402
from mechaudit.errors import InputError  # noqa: E402
from mechaudit.loading.huggingface import causal_lm, placement  # noqa: E402
from mechaudit.testing import compare_findings  # noqa: E402

SPLIT = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu", "transformer.h.0": "cpu",
         "transformer.h.1": "disk", "transformer.ln_f": "cpu", "lm_head": "cpu"}


def _tiny_gpt2(folder: Path) -> Path:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder / "gpt2", safe_serialization=True)
    return folder / "gpt2"


def _spec(folder: Path, name: str, factory_args: str) -> Path:
    spec = folder / f"{name}.toml"
    spec.write_text(f"""
[model]
name = "tiny GPT-2"
factory = "mechaudit.loading.huggingface:causal_lm"
factory_args = {{ {factory_args} }}

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
select = ["D101", "L202", "L207", "R301"]
""", encoding="utf-8")
    return spec


def test_split_model_lies_on_its_devices(tmp_path: Path) -> None:
    directory = _tiny_gpt2(tmp_path)
    split = causal_lm(path=str(directory), device_map=SPLIT, offload_folder=str(tmp_path / "offload"))
    whole = causal_lm(path=str(directory))
    assert split.transformer.h[1].mlp.c_fc.weight.device.type == "meta"  # offloaded: loaded per forward pass
    assert split.transformer.h[0].mlp.c_fc.weight.device.type == "cpu"
    tokens = torch.randint(1, 40, (3, 10))
    assert torch.allclose(split(tokens), whole(tokens))


def test_placement_arguments() -> None:
    assert placement() == {}
    assert placement(device_map="auto", max_memory={"0": "20GiB", "cpu": "60GiB"}, dtype="bfloat16") == {
        "device_map": "auto", "max_memory": {0: "20GiB", "cpu": "60GiB"}, "dtype": torch.bfloat16}
    with pytest.raises(InputError, match="need a device_map"):
        placement(max_memory={"cpu": "1GiB"})
    with pytest.raises(InputError, match="is not one of"):
        placement(dtype="float64")


@pytest.mark.slow
def test_audit_of_a_split_model_equals_the_whole_model(tmp_path: Path) -> None:
    directory = _tiny_gpt2(tmp_path).as_posix()
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 40, (48, 10))
    np.savez(tmp_path / "prompts.npz", inputs=tokens, labels=tokens[:, 3], corrupted=rng.integers(1, 40, (48, 10)))
    device_map = ", ".join(f'"{k}" = "{v}"' for k, v in SPLIT.items())
    whole = _spec(tmp_path, "whole", f'path = "{directory}"')
    split = _spec(tmp_path, "split", f'path = "{directory}", device_map = {{ {device_map} }}, '
                                     f'offload_folder = "{(tmp_path / "offload").as_posix()}"')
    results = []
    for spec in (whole, split):
        out = tmp_path / spec.stem
        assert main(["audit", str(spec), "--out", str(out), "-q"]) in (0, 1)
        results.append(json.loads((out / "findings.json").read_text(encoding="utf-8")))
    assert [r["status"] for r in results[1]["rules"]] == [r["status"] for r in results[0]["rules"]]
    assert {r["status"] for r in results[1]["rules"]} <= {"pass", "fail"}  # every rule ran on the split model
    differ, largest = compare_findings(*results)
    assert differ == [] and largest <= 1e-5, (differ, largest)
