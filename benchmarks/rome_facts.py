"""ROME on the embedded fact model: every one of its 24 subjects edited to another attribute (one at a time), with
CounterFact's measures averaged over the subjects, for the edit as shipped and for variants.

    python benchmarks/rome_facts.py [VARIANT INDEX ...]

Prints, per variant: efficacy (share of edited prompts predicting the new attribute), generalisation (share of
the two other phrasings predicting it), specificity (share of the other subjects' prompts whose prediction is
unchanged), and the layers the edits went to.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from mechaudit import fact_edit
from mechaudit.examples.facts.model import ATTR_BASE, ATTRIBUTES, SUBJECTS, TEMPLATES, build, facts, prompt
from mechaudit.spec import EditSpec, FactSpec

HERE = Path(fact_edit.__file__).parent / "examples" / "facts"
VARIANTS = {
    "shipped (layer by the hidden-state trace, norm clamp 4, no penalty)": {},
    "layer by the MLP-output trace": {"locate_by": "mlp"},
    "no norm clamp": {"clamp": 0.0},
    "L2 penalty 1e-3 on v* - W k* (the first version)": {"value_penalty": 1e-3},
    "C from 2048 random token sequences (ROME's many-text estimate) instead of the audit prompts":
        {"key_data": "random"},
    "C from the prompts cut after the subject (positions 0-2)": {"key_data": "subject"},
    "edit at the last block (control)": {"layer": "blocks.2.mlp.2"},
}


def _key_data(kind: str | None, inputs: torch.Tensor) -> torch.Tensor:
    """The token ids whose projection inputs estimate C: the audit prompts, random sequences, or the prompts cut
    after the subject's last token (the subjects' keys and what precedes them)."""
    if kind == "random":
        generator = torch.Generator().manual_seed(0)
        return torch.randint(1, int(inputs.max()) + 1, (2048, inputs.shape[1]), generator=generator)
    if kind == "subject":
        return inputs[:, :3]
    return inputs


def main() -> None:
    torch.set_num_threads(1)
    model = build()
    model.load_state_dict(load_file(str(HERE / "facts.safetensors")))
    inputs = torch.from_numpy(np.load(HERE / "audit_data.npz")["inputs"])
    truth = facts()
    original = fact_edit.rank_one_edit
    chosen = [int(i) for i in sys.argv[1:]] or range(len(VARIANTS))
    for index, (label, variant) in enumerate(VARIANTS.items()):
        if index not in chosen:
            continue
        options = {k: v for k, v in variant.items() if k not in ("layer", "locate_by", "key_data")}
        keys = _key_data(variant.get("key_data"), inputs)
        fact_edit.rank_one_edit = functools.partial(original, **options)
        scores, layers = [], Counter()
        for subject in range(SUBJECTS):
            tokens = prompt(subject, 0)
            fact = FactSpec(tuple(tokens), tuple(tokens[1:3]), ATTR_BASE + (int(truth[subject]) + 1) % ATTRIBUTES,
                            paraphrases=tuple(tuple(prompt(subject, t)) for t in range(1, TEMPLATES)))
            _, records = fact_edit.edit_facts(model, EditSpec((fact,)), keys, inputs, torch.device("cpu"),
                                              variant.get("layer"), locate_by=variant.get("locate_by", "hidden"))
            after = records[0].after
            layers[records[0].layer] += 1
            scores.append((after["efficacy"]["predicts_new"], after["generalisation"]["predicts_new"],
                           after["specificity"]["unchanged"]))
        mean = np.mean(scores, axis=0)
        print(f"{label}: efficacy {mean[0]:.1%}, generalisation {mean[1]:.1%}, specificity {mean[2]:.1%}; "
              f"layers {dict(layers)}", flush=True)
    fact_edit.rank_one_edit = original


if __name__ == "__main__":
    main()
