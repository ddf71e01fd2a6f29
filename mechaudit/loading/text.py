"""Text data: JSONL records tokenized with a tokenizer loaded from a local directory (offline).

A JSONL file holds one JSON object per line. The fields named as text (``inputs``, and e.g. ``clean`` /
``corrupted`` for prompt pairs, ``with_cue`` / ``without_cue`` for cue pairs) are tokenized into token ids
(samples, ``max_length``), padded with the tokenizer's pad token; numeric and boolean fields (labels, concepts)
become arrays. The result is the same ``{key: array}`` mapping the other data files give, so the spec names keys
the same way. Pre-tokenized tensors need nothing from here: store the ids in an ``.npz`` or ``.safetensors``
file. Tokenizers load with ``transformers`` (``pip install "mechaudit[hf]"``), from local files only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import DEFAULT_MAX_BYTES, check_input_file


def read_jsonl(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> list[dict]:
    """The records of a JSONL file (blank lines skipped); every malformed line is an :class:`InputError`."""
    check_input_file(path, "JSONL data", max_bytes)
    records = []
    try:
        # split at line feeds only: str.splitlines() also splits at U+2028 / U+2029, which JSON strings may hold raw
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except UnicodeDecodeError:
        raise InputError(str(path), "is not UTF-8 text") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}", f"not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise InputError(f"{path}:{number}", "not valid JSON (nested too deeply)") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number}", "each line must be a JSON object")
        records.append(record)
    if not records:
        raise InputError(str(path), "holds no records")
    return records


def load_tokenizer(directory: Path):
    """A tokenizer from a local directory (``tokenizer.json`` / ``vocab.txt`` ...), never from the network."""
    from .huggingface import require_transformers

    transformers = require_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(str(directory), f"holds no tokenizer that loads offline ({type(exc).__name__})") from None


def tokenize(texts: list[str], tokenizer, max_length: int, where: str = "texts") -> np.ndarray:
    """Token ids (len(texts), max_length), int64, padded with the pad token; a text that does not fit is an error
    (a truncated prompt would move the position the behaviour is read at)."""
    encoded = tokenizer(texts, padding="max_length", truncation=False, max_length=max_length)["input_ids"]
    too_long = [i for i, ids in enumerate(encoded) if len(ids) > max_length]
    if too_long:
        raise InputError(where, f"text {too_long[0]} has {len(encoded[too_long[0]])} tokens, more than "
                                f"max_length = {max_length}")
    return np.asarray(encoded, dtype=np.int64)


def jsonl_arrays(path: Path, tokenizer, text_fields: Iterable[str], max_length: int,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, np.ndarray]:
    """Arrays from a JSONL file: each text field tokenized, each numeric or boolean field as a column."""
    records = read_jsonl(path, max_bytes)
    text_fields = set(text_fields)
    arrays: dict[str, np.ndarray] = {}
    for key in {key for record in records for key in record}:
        missing = next((i for i, record in enumerate(records, start=1) if key not in record), None)
        values = [record.get(key) for record in records]
        if key in text_fields:
            if missing is not None or not all(isinstance(v, str) for v in values):
                raise InputError(f"{path}: field '{key}'", "must be a string in every record")
            arrays[key] = tokenize(values, tokenizer, max_length, f"{path}: field '{key}'")
        elif missing is None and all(isinstance(v, (int, float, bool)) for v in values):
            arrays[key] = np.asarray(values)
    for key in text_fields - set(arrays):
        raise InputError(str(path), f"has no text field '{key}'")
    return arrays
