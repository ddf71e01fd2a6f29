"""How token ids read in reports: the text of each token, from the spec's tokenizer or vocabulary, else its id.

Figures of token-id models (per-token attribution, attention patterns, exemplar contexts) show one string per
token. A spec declares where that string comes from in ``[data]``: ``tokenizer`` (a local Hugging Face tokenizer,
also used to tokenize JSONL text) or ``vocabulary`` (a list of strings, or a text file with one token a line, line
*i* for id *i*). Without either, and for an id the vocabulary does not cover, a token reads ``t17`` (token id 17):
nothing is invented for a model whose vocabulary is synthetic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .files import DEFAULT_MAX_BYTES, check_input_file

#: Decoders' sources, as evidence and captions name them.
SOURCES = ("tokenizer", "vocabulary", "ids")


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


IDS = TokenText()


def from_vocabulary(vocabulary: Sequence[str]) -> TokenText:
    """Token ``i`` reads ``vocabulary[i]``."""
    words = tuple(str(word) for word in vocabulary)
    return TokenText("vocabulary", lambda token: words[token] if token < len(words) else None)


def from_tokenizer(tokenizer) -> TokenText:
    """Each token as a Hugging Face tokenizer decodes it alone (spaces around it dropped); its raw token string
    (``Ċ``, ``[PAD]``) when that decodes to blank space."""
    size = len(tokenizer)

    def lookup(token: int) -> str | None:
        if token >= size:
            return None
        text = tokenizer.decode([token]).strip()
        return text or str(tokenizer.convert_ids_to_tokens(token))
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
