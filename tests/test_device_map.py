"""A Hugging Face model split by accelerate (device_map, part of it offloaded to disk) is audited where it lies,
with the same findings as the whole model on one device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from test_language_gpt2 import _write_audit as write_gpt2_audit  # noqa: E402

from mechaudit.cli import main  # noqa: E402
from mechaudit.errors import InputError  # noqa: E402
from mechaudit.loading.huggingface import causal_lm, placement  # noqa: E402
from mechaudit.testing import compare_findings  # noqa: E402

SPLIT = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu", "transformer.h.0": "cpu",
         "transformer.h.1": "disk", "transformer.ln_f": "cpu", "lm_head": "cpu"}


def _tiny_gpt2(folder: Path) -> Path:
    """test_language_gpt2's audit (a 2-block GPT-2 saved in ``folder/gpt2``, prompts, a spec); returns its spec."""
    return write_gpt2_audit(folder)


def test_split_model_lies_on_its_devices(tmp_path: Path) -> None:
    _tiny_gpt2(tmp_path)
    directory = tmp_path / "gpt2"
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
    whole = _tiny_gpt2(tmp_path)
    directory = (tmp_path / "gpt2").as_posix()
    device_map = ", ".join(f'"{k}" = "{v}"' for k, v in SPLIT.items())
    placed = f'path = "{directory}", device_map = {{ {device_map} }}, ' \
             f'offload_folder = "{(tmp_path / "offload").as_posix()}"'
    text = whole.read_text(encoding="utf-8")
    assert f'path = "{directory}"' in text
    split = tmp_path / "split.toml"
    split.write_text(text.replace(f'path = "{directory}"', placed), encoding="utf-8")
    results = []
    for spec in (whole, split):
        out = tmp_path / f"out-{spec.stem}"
        assert main(["audit", str(spec), "--out", str(out), "-q"]) in (0, 1)
        results.append(json.loads((out / "findings.json").read_text(encoding="utf-8")))
    assert [r["status"] for r in results[1]["rules"]] == [r["status"] for r in results[0]["rules"]]
    assert {r["status"] for r in results[1]["rules"]} <= {"pass", "fail"}  # every rule ran on the split model
    differ, largest = compare_findings(*results)
    assert differ == [] and largest <= 1e-5, (differ, largest)
