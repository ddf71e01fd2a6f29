"""How token ids read in reports: the text of each token, from the spec's tokenizer or vocabulary, else its id.

Figures of token-id models (per-token attribution, attention patterns, exemplar contexts) show one string per
token. A spec declares where that string comes from in ``[data]``: ``tokenizer`` (a local Hugging Face tokenizer,
also used to tokenize JSONL text) or ``vocabulary`` (a list of strings, or a text file with one token a line, line
*i* for id *i*). Without either, and for an id the vocabulary does not cover (or that the tokenizer cannot decode),
a token reads ``t17`` (token id 17): nothing is invented for a model whose vocabulary is synthetic.

A tokenizer's token reads as it decodes alone, with a space before it shown as :data:`SPACE` (``·the`` for GPT-2's
``Ġthe`` or SentencePiece's ``▁the``, ``the`` for ``the``), so that two distinct tokens never read the same; a token
that holds only part of a character (byte-level BPE: it decodes to ``\ufffd``) or only white space reads as its raw
token string (``âĢ``, ``Ċ``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import InputError
from .files import DEFAULT_MAX_BYTES, check_input_file

#: Decoders' sources, as evidence and captions name them.
SOURCES = ("tokenizer", "vocabulary", "ids")
#: Marks a token that starts with a space (a word's first token in byte-level BPE and SentencePiece).
SPACE = "\u00b7"
#: The raw-token prefixes that stand for a leading space (GPT-2's byte-level BPE, SentencePiece).
_SPACE_PREFIXES = ("\u0120", "\u2581")


def id_label(token: int) -> str:
    """The label of a token whose text is unknown: ``t`` and its id."""
    return f"t{token}"


@dataclass(frozen=True)
class TokenText:
    """Turns token ids into the strings the figures show (:func:`id_label` where a token has no text)."""

    source: str = "ids"
    lookup: Callable[[int], str | None] | None = None

    def names(self, ids: Iterable[int | float]) -> list[str]:
        """One string per id (floats that store whole ids are read as ids)."""
        names = []
        for value in ids:
            token = int(value)
            text = self.lookup(token) if self.lookup is not None and token >= 0 else None
            names.append(text if text else id_label(token))
        return names

    def per_sample(self, samples: Sequence[Sequence[int | float]]) -> Sequence[list[str]]:
        """The names of each sample's ids, decoded only for the samples read (a figure shows a few)."""
        return _Lazy(self, samples)


@dataclass(frozen=True)
class _Lazy(Sequence):
    """Per sample, its names (:meth:`TokenText.names`), decoded when read."""

    text: TokenText
    samples: Sequence[Sequence[int | float]]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        row = self.samples[index]
        return self.text.names(row.tolist() if hasattr(row, "tolist") else row)


IDS = TokenText()


def from_vocabulary(vocabulary: Sequence[str]) -> TokenText:
    """Token ``i`` reads ``vocabulary[i]``."""
    words = tuple(str(word) for word in vocabulary)
    return TokenText("vocabulary", lambda token: words[token] if token < len(words) else None)


def from_tokenizer(tokenizer) -> TokenText:
    """Each token as a Hugging Face tokenizer decodes it alone (see the module's doc), each id decoded once; an id
    the tokenizer cannot name or decode reads as its id."""
    size = len(tokenizer)

    @lru_cache(maxsize=None)
    def lookup(token: int) -> str | None:
        if token >= size:
            return None
        try:
            raw = tokenizer.convert_ids_to_tokens(token)
            text = str(tokenizer.decode([token])) if raw is not None else None
        except Exception:  # noqa: BLE001  a token's name illustrates a figure; an id reads as well
            return None
        if raw is None or text is None:
            return None
        raw = str(raw)
        if "\ufffd" in text or not text.strip():
            return raw
        space = text[0].isspace() or raw.startswith(_SPACE_PREFIXES)
        return (SPACE if space else "") + text.strip()
    return TokenText("tokenizer", lookup)


def from_tokenizer_loader(load: Callable[[], object]) -> TokenText:
    """:func:`from_tokenizer` of the tokenizer ``load()`` returns, loaded when the first id is named (a report of
    pre-tokenized data needs it only for its figures); one that cannot be loaded (``transformers`` missing, a bad
    directory) leaves every id reading as its id, with one warning, and never fails the audit."""
    loaded: list[Callable[[int], str | None]] = []

    def lookup(token: int) -> str | None:
        if not loaded:
            try:
                loaded.append(from_tokenizer(load()).lookup)
            except Exception as exc:  # noqa: BLE001  a token's name illustrates a figure; an id reads as well
                warnings.warn(f"token ids are shown as ids: the tokenizer cannot be loaded ({type(exc).__name__}: "
                              f"{exc})", stacklevel=2)
                loaded.append(lambda _token: None)
        return loaded[0](token)
    return TokenText("tokenizer", lookup)


def read_vocabulary(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, ...]:
    """The tokens of a vocabulary file, one a line (line *i* is token id *i*); a clear error when unreadable."""
    check_input_file(path, "vocabulary", max_bytes)
    try:
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except UnicodeDecodeError:
        raise InputError(str(path), "is not UTF-8 text") from None
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise InputError(str(path), "holds no tokens")
    return tuple(line.rstrip("\r") for line in lines)
