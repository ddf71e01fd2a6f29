"""Text data: JSONL records tokenized with a local tokenizer, offline; bad files give one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_project

from mechaudit.errors import InputError
from mechaudit.loading.text import jsonl_arrays, read_jsonl
from mechaudit.spec import load_spec


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    good = json.dumps({"text": "a", "label": 1})
    assert read_jsonl(_write(tmp_path / "ok.jsonl", [good, "", good])) == [{"text": "a", "label": 1}] * 2
    with pytest.raises(InputError, match=r"bad.jsonl:2.*not valid JSON"):
        read_jsonl(_write(tmp_path / "bad.jsonl", [good, "{oops"]))
    with pytest.raises(InputError, match="JSON object"):
        read_jsonl(_write(tmp_path / "list.jsonl", ["[1, 2]"]))


class _Tokenizer:
    """Whitespace tokenizer with the Hugging Face call signature (ids 1.., pad 0)."""

    def __call__(self, texts, padding, truncation, max_length):
        ids = [[len(word) for word in text.split()] for text in texts]
        return {"input_ids": [row + [0] * (max_length - len(row)) for row in ids]}


def test_jsonl_arrays_tokenize_text_fields_and_keep_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [json.dumps({"text": "ab c", "pair": "d", "label": 1, "note": "x"}),
                                        json.dumps({"text": "abc", "pair": "ee f", "label": 0, "note": "y"})])
    arrays = jsonl_arrays(path, _Tokenizer(), ("text", "pair"), max_length=4)
    assert arrays["text"].tolist() == [[2, 1, 0, 0], [3, 0, 0, 0]]
    assert arrays["pair"].tolist() == [[1, 0, 0, 0], [2, 1, 0, 0]]
    assert arrays["label"].tolist() == [1, 0] and "note" not in arrays
    with pytest.raises(InputError, match="more than max_length = 1"):
        jsonl_arrays(path, _Tokenizer(), ("text",), max_length=1)
    with pytest.raises(InputError, match="no text field 'missing'"):
        jsonl_arrays(path, _Tokenizer(), ("missing",), max_length=4)


def test_jsonl_data_needs_a_tokenizer(tmp_path: Path) -> None:
    project = write_project(tmp_path)
    _write(project.dir / "prompts.jsonl", [json.dumps({"text": "a"})])
    spec = project.spec.read_text().replace('file = "data.npz"', 'file = "prompts.jsonl"\ninputs = "text"')
    project.spec.write_text(spec)
    with pytest.raises(InputError, match="needs 'tokenizer'"):
        load_spec(project.spec)
    project.spec.write_text(spec.replace('inputs = "text"', 'inputs = "text"\ntokenizer = { subdir = "x" }'))
    with pytest.raises(InputError, match="package"):
        load_spec(project.spec)
