"""Causal tracing and ROME rank-one edits on a tiny transformer trained on synthetic subject -> attribute facts:
the trace locates the association at the subject's last token, and an edit there is effective, generalises to the
other phrasings and leaves the other subjects' facts; the same edit at a layer the trace does not point to fails."""

from __future__ import annotations

import copy

import pytest
import torch
from fixtures.fact_models import ATTR_BASE, ATTRIBUTES, SUBJECTS, TEMPLATES, FactModel, facts, prompt, train

from mechaudit.techniques.rome import causal_trace, rank_one_edit

SUBJECT_LAST = 2  # the position of the subject's last token in every phrasing


@pytest.fixture(scope="module")
def trained():
    return train()


def _edit_scores(model, prompts, subject: int, layer: int) -> tuple[float, float, float]:
    """(efficacy, generalisation, specificity) of editing ``subject``'s fact at ``layer`` (CounterFact's measures:
    the edited phrasing, the other phrasings, the other subjects)."""
    truth = facts()
    new = ATTR_BASE + (int(truth[subject]) + 1) % ATTRIBUTES
    edited = copy.deepcopy(model)
    projection = edited.blocks[layer].mlp[2]
    rank_one_edit(edited, projection, torch.tensor([prompt(subject, 0)]), SUBJECT_LAST, new, prompts).apply(projection)
    with torch.no_grad():
        predicted = edited(prompts)[:, -1].argmax(-1).view(SUBJECTS, TEMPLATES)
    others = torch.arange(SUBJECTS) != subject
    return (float(predicted[subject, 0] == new), float((predicted[subject, 1:] == new).float().mean()),
            float((predicted[others] == (ATTR_BASE + truth[others])[:, None]).float().mean()))


@pytest.mark.slow  # trains the fact model (about 10 s on a loaded machine)
def test_tracing_locates_the_fact_and_an_edit_there_corrects_it(trained) -> None:
    model, prompts, targets = trained
    assert bool((model(prompts)[:, -1].argmax(-1) == targets).all())
    truth = facts()
    trace = causal_trace(model, model.embed, list(model.blocks), torch.tensor([prompt(0, 0)]), [1, 2],
                         ATTR_BASE + int(truth[0]))
    restored, corrupted = trace["restored"], trace["corrupted"]
    assert trace["clean"] > 0.99 and corrupted < trace["clean"] - 0.3
    assert restored[:, -1].min() > 0.8  # the last position carries everything
    assert float(restored[0, SUBJECT_LAST]) > corrupted + 0.05  # the subject's last token, early: the fact
    assert torch.allclose(restored[-1, :-1], torch.full_like(restored[-1, :-1], corrupted))  # too late to matter
    layer = int(restored[:, SUBJECT_LAST].argmax())
    assert layer == 0
    efficacy, generalisation, specificity = _edit_scores(model, prompts, 0, layer)
    assert efficacy == 1.0 and generalisation == 1.0 and specificity >= 0.95
    control = _edit_scores(model, prompts, 0, len(model.blocks) - 1)  # where the trace shows no effect
    assert control[0] == 0.0 and control[1] == 0.0


def test_the_edit_optimises_its_value_only_and_leaves_no_parameter_gradients() -> None:
    """200 steps of backward() would fill every parameter's .grad of the edited copy (a model's worth of memory,
    kept by the returned model); the optimisation takes the gradient of the value alone."""
    torch.manual_seed(0)
    model = FactModel().eval()
    projection = model.blocks[0].mlp[2]
    edit = rank_one_edit(model, projection, torch.tensor([prompt(0, 0)]), SUBJECT_LAST, ATTR_BASE,
                         moment=torch.eye(projection.in_features, dtype=torch.float64), steps=3)
    assert all(parameter.grad is None for parameter in model.parameters())
    assert float(edit.delta.norm()) > 0  # the value did move


def _untrained() -> tuple[FactModel, torch.Tensor]:
    torch.manual_seed(0)
    return FactModel().eval(), torch.tensor([prompt(0, 0)])


def test_the_trace_runs_the_clean_prompt_once() -> None:
    model, tokens = _untrained()
    forwards: list[int] = []
    handle = model.register_forward_pre_hook(lambda _module, _args: forwards.append(1))
    try:
        causal_trace(model, model.embed, list(model.blocks), tokens, [1, 2], ATTR_BASE, runs=2)
    finally:
        handle.remove()
    restorations = len(model.blocks) * tokens.shape[1]
    assert len(forwards) == 1 + 2 * (1 + restorations)  # clean; per noise draw: corrupted, each restoration


def test_a_module_listed_twice_traces_as_once_and_a_foreign_one_is_named() -> None:
    from mechaudit.errors import InputError

    model, tokens = _untrained()
    once = causal_trace(model, model.embed, [model.blocks[1]], tokens, [1, 2], ATTR_BASE, runs=2)["restored"]
    twice = causal_trace(model, model.embed, [model.blocks[1]] * 2, tokens, [1, 2], ATTR_BASE, runs=2)["restored"]
    assert torch.equal(twice, torch.cat([once, once]))
    with pytest.raises(InputError, match="module 1 .* not part of the model"):
        causal_trace(model, model.embed, [model.blocks[0], torch.nn.Linear(2, 2)], tokens, [1, 2], ATTR_BASE)
