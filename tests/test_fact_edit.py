"""``mechaudit edit --rome`` on the embedded `facts` example: the fact is rewritten where causal tracing points
(efficacy and generalisation measured from the written weights), the other subjects keep theirs (specificity), the
same edit at the last block (the control) does not take; bad [edit] declarations are one-line errors (exit 2)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mechaudit.examples import example_spec
from mechaudit.examples.facts.model import build

SPEC = example_spec("facts")
PROMPT, PARAPHRASES, NEW, TRUE = [1, 8, 9, 2, 7], [[3, 8, 9, 4, 7], [5, 8, 9, 6, 7]], 59, 58


def _predictions(weights: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The written model's predictions on the example's 72 prompts, and those prompts."""
    model = build()
    model.load_state_dict(load_file(str(weights)))
    prompts = torch.from_numpy(np.load(SPEC.parent / "audit_data.npz")["inputs"])
    with torch.no_grad():
        return model(prompts)[:, -1].argmax(-1), prompts


@pytest.mark.slow  # causal tracing and a 200-step v* optimisation: seconds on a loaded machine
def test_rome_edit_rewrites_the_fact_and_keeps_the_others(cli, tmp_path: Path) -> None:
    out = tmp_path / "edited.safetensors"
    result = cli("edit", "--example", "facts", "--rome", "--out", out)
    assert result.code == 0, result.err
    assert "at blocks.0.mlp.2" in result.out and "efficacy (1 prompt): new above true 0% -> 100%" in result.out
    predicted, prompts = _predictions(out)
    labels = torch.from_numpy(np.load(SPEC.parent / "audit_data.npz")["labels"])
    edited_subject = (prompts[:, 1] == 8)
    assert predicted[edited_subject].tolist() == [NEW, NEW, NEW]  # efficacy and both paraphrases
    assert bool((predicted[~edited_subject] == labels[~edited_subject]).all())  # specificity: 69 of 69 kept
    with safe_open(str(out), "pt") as handle:
        metadata = handle.metadata()
    assert "SIMULATION" in metadata["mechaudit_edit"] and "ROME" in metadata["edit"]
    fact = json.loads(metadata["facts"])[0]
    assert fact["layer"] == "blocks.0.mlp.2" and fact["target_true"] == TRUE
    assert fact["before"]["efficacy"]["new_above_true"] == 0.0 and fact["after"]["efficacy"]["new_above_true"] == 1.0
    assert fact["after"]["generalisation"]["predicts_new"] == 1.0
    assert fact["after"]["specificity"] == {"prompts": 69, "p_new": pytest.approx(0.0, abs=0.01),
                                            "kept_above_new": 1.0, "unchanged": 1.0}
    page = out.with_suffix(".html").read_text(encoding="utf-8")
    assert len(re.findall(r"<svg", page)) == 2 and "Causal trace of [1, 8, 9, 2, 7]" in page
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.slow
def test_the_same_edit_where_the_trace_shows_nothing_does_not_take(cli, tmp_path: Path) -> None:
    out = tmp_path / "control.safetensors"
    result = cli("edit", "--example", "facts", "--rome", "--layer", "blocks.2.mlp.2", "--prompt", "1,8,9,2,7",
                 "--subject", "8,9", "--target-new", str(NEW), "--paraphrase", "3,8,9,4,7", "--out", out)
    assert result.code == 0, result.err
    predicted, prompts = _predictions(out)
    assert NEW not in predicted[prompts[:, 1] == 8].tolist()  # the fact is not rewritten at the last block


def _spec_with(tmp_path: Path, edit: str) -> Path:
    """The example's spec with its [edit] replaced by ``edit``, and its files, copied into ``tmp_path``."""
    for name in ("facts.safetensors", "audit_data.npz"):
        shutil.copy(SPEC.parent / name, tmp_path / name)
    text = SPEC.read_text(encoding="utf-8")
    spec = tmp_path / "facts.toml"
    spec.write_text(text[:text.index("[[edit.facts]]")] + edit, encoding="utf-8")
    return spec


@pytest.mark.parametrize(("edit", "message"), [
    ("[[edit.facts]]\nprompt = [1, 8, 9, 2, 7]\nsubject = [8, 9]\ntarget = 59\n", "unknown key 'target'"),
    ("[[edit.facts]]\nprompt = [1, 8, 9, 2, 7]\nsubject = [10, 11]\ntarget_new = 59\n",
     "does not contain the subject's tokens [10, 11]"),
    ("[[edit.facts]]\nprompt = [1, 8, 9, 2, 7]\nsubject = [8, 9]\n", "missing key 'target_new'"),
    ("[[edit.facts]]\nprompt = \"Paris is\"\nsubject = [8, 9]\ntarget_new = 59\n", "must be a non-empty list of token"),
    ("[edit]\nlayers = \"blocks.0\"\n", "unknown key 'layers'"),
    ("[edit]\nembedding = \"blocks.0.mlp.0\"\n[[edit.facts]]\nprompt = [1, 8, 9, 2, 7]\nsubject = [8, 9]\n"
     "target_new = 59\n", "[edit].embedding: 'blocks.0.mlp.0' is a Linear, not a token embedding"),
    ("[edit]\nlayer = \"blocks.0\"\n[[edit.facts]]\nprompt = [1, 8, 9, 2, 7]\nsubject = [8, 9]\ntarget_new = 59\n",
     "[edit].layer blocks.0: is not a block's MLP output projection"),
])
def test_bad_fact_declarations_are_one_line_errors(cli, tmp_path: Path, edit: str, message: str) -> None:
    out = tmp_path / "edited.safetensors"
    result = cli("edit", _spec_with(tmp_path, edit), "--rome", "--out", out)
    assert result.code == 2 and message in result.err and result.err.count("\n") == 1, result.err
    assert not out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (("--rome",), "no facts to edit"),
    (("--rome", "--subject", "8,9"), "needs --prompt, --subject and --target-new (missing --prompt)"),
    (("--target-new", "59"), "--target-new: goes with --rome"),
    (("--rome", "--suppress", "blocks.0.mlp.0:u1"), "does not combine"),
    (("--rome", "--prompt", "1,8,9,2,7", "--subject", "8,9", "--target-new", "999"), "outside the vocabulary"),
    (("--rome", "--prompt", "1,8,9,2,7", "--subject", "8,9", "--target-new", "59", "--layer", "blocks.0"),
     "--layer blocks.0: is not a block's MLP output projection"),
    (("--rome", "--prompt", "1,8,9,2,7,7", "--subject", "8,9", "--target-new", "59"),
     "fact [1, 8, 9, 2, 7, 7]: the model cannot run on the 6-token prompt"),
])
def test_bad_rome_options_are_one_line_errors(cli, tmp_path: Path, args: tuple, message: str) -> None:
    spec = _spec_with(tmp_path, "")
    out = tmp_path / "edited.safetensors"
    result = cli("edit", spec, *args, "--out", out)
    assert result.code == 2 and message in result.err and result.err.count("\n") == 1, result.err
    assert not out.exists()


def test_the_modules_are_found_on_gpt2_and_a_rank_one_edit_of_its_conv1d_is_the_linear_one() -> None:
    transformers = pytest.importorskip("transformers")
    from mechaudit.fact_edit import find_modules
    from mechaudit.spec import EditSpec
    from mechaudit.techniques.rome import RankOneEdit

    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                                     eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    modules = find_modules(model, EditSpec())
    assert modules.embedding[0] == "transformer.wte"
    assert [name for name, _ in modules.projections] == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]
    conv = modules.projections[0][1]
    linear = torch.nn.Linear(conv.nx, conv.nf)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.t())
        linear.bias.copy_(conv.bias)
    edit = RankOneEdit(torch.randn(conv.nf), torch.randn(conv.nx))
    edit.apply(conv)
    edit.apply(linear)
    x = torch.randn(3, conv.nx)
    torch.testing.assert_close(conv(x), linear(x))


def test_rome_needs_a_next_token_model(cli, tmp_path: Path) -> None:
    result = cli("edit", "--example", "digits", "--rome", "--prompt", "1,2", "--subject", "1", "--target-new", "3",
                 "--out", tmp_path / "x.safetensors")
    assert result.code == 2 and "next-token model" in result.err and result.err.count("\n") == 1


def test_weights_are_renamed_into_place_before_their_page_and_the_umask_is_never_zero(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    """A failed rename of the weights leaves no page describing them (nor a temporary file); reading the umask
    never sets a world-writable 0."""
    import os

    from mechaudit import edit_command

    out, umasks, replace = tmp_path / "edited.safetensors", [], os.replace
    real_umask = os.umask

    def failing_replace(source, destination):
        if Path(destination) == out:
            raise OSError("disk full")
        replace(source, destination)

    def recording_umask(mask):
        umasks.append(mask)
        return real_umask(mask)
    monkeypatch.setattr(edit_command.os, "replace", failing_replace)
    monkeypatch.setattr(os, "umask", recording_umask)
    with pytest.raises(OSError, match="disk full"):
        edit_command._write({"w": torch.zeros(2)}, out, "label", extra=(out.with_suffix(".html"), "<p>page</p>"))
    assert list(tmp_path.iterdir()) == [] and umasks and 0 not in umasks
    monkeypatch.setattr(edit_command.os, "replace", replace)
    edit_command._write({"w": torch.zeros(2)}, out, "label", extra=(out.with_suffix(".html"), "<p>page</p>"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.html", "edited.safetensors"]
