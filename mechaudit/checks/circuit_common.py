"""What the circuit rules (R3xx) share: the declared behaviour as tensors, and the edge scores, computed once."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .. import deadline
from ..context import Artifact, AuditContext
from ..findings import Measurement
from ..techniques.circuits import (
    Behaviour,
    CircuitScores,
    at_position,
    cosine_similarity,
    edge_attribution,
    logit_difference,
    logits_at,
    negative_loss,
    target_logit,
)
from ..techniques.node_ablation import ReadSite, behaviour_under_ablation, read_sites, reader_input_means
from ..techniques.output_reduction import describe as describe_reduction
from ..techniques.output_reduction import reduced_output, reduction_targets
from ..techniques.uncertainty import Presence, behaviour_presence

_LOG = logging.getLogger(__name__)


@dataclass
class CircuitProblem:
    """The behaviour to explain: inputs, per-sample targets, the metric, and the reference (pairs) if any."""

    inputs: torch.Tensor
    targets: torch.Tensor
    behaviour: Behaviour
    reference: torch.Tensor | None
    description: str
    labels: torch.Tensor | None = None


def class_index(context: AuditContext, name: str) -> int:
    if name in context.class_names:
        return context.class_names.index(name)
    if name.isdigit() and int(name) < context.outputs.shape[-1]:
        return int(name)
    raise ValueError(f"behaviour names class '{name}', which is neither a class name nor an index")


def circuit_problem(context: AuditContext, samples: int, use_pairs: bool = True) -> CircuitProblem:
    """Build (once per audit) the tensors for the spec's ``[behaviour]``: on the declared pairs' clean inputs
    (reference: their corrupted twins) when there are pairs and ``use_pairs``, else on the audit inputs; for a
    next-token model, the behaviour reads the logits at the declared token position."""
    paired = use_pairs and context.data.pairs is not None
    return context.shared(CIRCUIT_PROBLEM, _resolved(context, samples, paired), paired)


def _resolved(context: AuditContext, samples: int, paired: bool) -> int:
    """How many samples :func:`_build_problem` takes for ``samples``: the artifacts' key, so that rules asking for
    different counts that resolve alike (``samples`` above the data or ``--max-samples``) share them, as the cost
    model charges them once (:func:`mechaudit.cost.edge_scores` keys on the same count)."""
    if paired:
        return min(samples, context.data.pairs[0].shape[0])
    return len(context.sample_indices(samples))


def _problem(context: AuditContext, samples: int, paired: bool) -> CircuitProblem:
    problem = _build_problem(context, samples, paired)
    if context.task == "next-token":
        position = context.behaviour.position
        problem.behaviour = at_position(problem.behaviour, position)
        problem.description += f" at token position {position}"
    return problem


CIRCUIT_PROBLEM: Artifact[CircuitProblem] = Artifact("circuit_problem", _problem)


def _build_problem(context: AuditContext, samples: int, use_pairs: bool) -> CircuitProblem:
    spec = context.behaviour
    assert spec is not None
    data = context.data
    if data.pairs is not None and use_pairs:
        clean, corrupted = data.pairs
        keep = torch.arange(clean.shape[0])[:min(samples, clean.shape[0])]
        inputs, reference, labels = clean[keep], corrupted[keep], None
        if data.labels is not None and clean.shape == data.inputs.shape and torch.equal(clean, data.inputs):
            labels = data.labels[keep]  # the clean prompts are the audit inputs: the labels are theirs
    else:
        keep = context.sample_indices(samples)
        inputs, reference = data.inputs[keep], None
        labels = data.labels[keep] if data.labels is not None else None
    target = class_index(context, spec.target) if spec.target is not None else None
    if spec.samples == "target":
        if labels is None:
            raise ValueError("behaviour samples = 'target' needs labels (and no pairs)")
        chosen = labels == target
        if not chosen.any():
            raise ValueError(f"no audit sample is labelled '{spec.target}'")
        inputs, labels = inputs[chosen], labels[chosen]
        reference = reference[chosen] if reference is not None else None
    if spec.kind == "similarity":
        if reference is None:
            raise ValueError("behaviour kind 'similarity' needs prompt pairs ([data.pairs])")
        from ..activations import model_outputs

        partner = model_outputs(context.model, reference, context.batch_size, context.device)
        return CircuitProblem(inputs, partner, cosine_similarity, reference,
                              "cosine similarity of each prompt to its pair", labels)
    if spec.kind == "output":
        return CircuitProblem(inputs, reduction_targets(context.output, inputs.shape[0]), reduced_output, reference,
                              f"regression output: {describe_reduction(context.output)}", labels)
    predicted = _predict(context, inputs)
    n = inputs.shape[0]
    if spec.kind == "predicted_logit":
        return CircuitProblem(inputs, predicted, target_logit, reference, "logit of the predicted class", labels)
    if spec.kind == "label_logit":
        if labels is None:
            raise ValueError("behaviour kind 'label_logit' needs labels (with pairs: the clean prompts must be the "
                             "audit inputs)")
        what = "correct next token" if context.task == "next-token" else "labelled class"
        return CircuitProblem(inputs, labels, target_logit, reference, f"logit of the {what}", labels)
    if spec.kind == "class_logit":
        return CircuitProblem(inputs, torch.full((n,), target), target_logit, reference,
                              f"logit of class '{context.class_name(target)}'", labels)
    if spec.kind == "logit_diff":
        first = torch.full((n,), target) if target is not None else predicted
        if spec.contrast is not None:
            second = torch.full((n,), class_index(context, spec.contrast))
        elif reference is not None:
            second = _predict(context, reference)
        else:
            second = _runner_up(context, inputs, first)
        return CircuitProblem(inputs, torch.stack([first, second], 1), logit_difference, reference,
                              "logit difference between the target and the contrast class", labels)
    if labels is None:
        raise ValueError("behaviour kind 'loss' needs labels")
    return CircuitProblem(inputs, labels, negative_loss, reference, "negative cross-entropy loss", labels)


def _predict(context: AuditContext, inputs: torch.Tensor) -> torch.Tensor:
    from ..activations import model_outputs

    outputs = model_outputs(context.model, inputs, context.batch_size, context.device)
    return logits_at(outputs, context.behaviour.position).argmax(-1)


def _runner_up(context: AuditContext, inputs: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    from ..activations import model_outputs

    outputs = logits_at(model_outputs(context.model, inputs, context.batch_size, context.device),
                        context.behaviour.position).clone()
    outputs[torch.arange(len(first)), first] = float("-inf")
    return outputs.argmax(-1)


#: The share of a rule's time budget that computing the circuit scores may take when they are not the rule's own
#: result (R302-R304 read them, then run their exact checks: ablations, the pathway's patches), so that the exact
#: checks keep the rest; the scores keep 15% of that share in reserve (:data:`mechaudit.deadline.RESERVE`), so they
#: stop at about 43% of the rule's budget. R301, whose result they are, gives them all of it.
SCORING_SHARE = 0.5


def circuit_scores(context: AuditContext, samples: int, use_pairs: bool = True,
                   share: float = SCORING_SHARE) -> CircuitScores:
    """Edge attribution patching scores for the declared behaviour (shared by R301-R304): on :func:`circuit_problem`,
    against the pairs' corrupted inputs, or the mean over the inputs when there are no pairs (or not ``use_pairs``).
    Computed (once per audit) within ``share`` of the calling rule's time budget. What the time budget of the rule
    that computed them cut (fewer samples, wide pairs unscored) is recorded on the calling rule's budget too
    (:func:`mechaudit.deadline.record`, naming that rule), so that its findings say so."""
    paired = use_pairs and context.data.pairs is not None
    budget = deadline.current()
    with deadline.within(share * budget.seconds if budget is not None else 0):
        scores = context.shared(CIRCUIT_SCORES, _resolved(context, samples, paired), paired)
    deadline.record(scores.cuts, "circuit scores")
    return scores


def _scores(context: AuditContext, samples: int, paired: bool) -> CircuitScores:
    problem = circuit_problem(context, samples, paired)
    return edge_attribution(context.view, problem.inputs, problem.targets, problem.behaviour,
                            reference=problem.reference, masks=context.data.masks,
                            batch_size=context.batch_size, device=context.device)


CIRCUIT_SCORES: Artifact[CircuitScores] = Artifact("circuit_scores", _scores)


def carries_behaviour(span: float, m_model: torch.Tensor) -> bool:
    """Whether ablating every audited unit changes the behaviour (mean change ``span``) beyond rounding."""
    return span > 1e-6 * max(1.0, float(m_model.abs().mean()))


def not_carried(rule, problem: CircuitProblem, span: float, metric: str, threshold: float | None) -> Measurement:
    """A pass: no audited unit carries the behaviour (ablating them all leaves it as it is, every attribution is
    0), so there is no circuit to draw, to be unfaithful or to lose; e.g. a control model without the mechanism."""
    return Measurement(f"the {problem.description} does not depend on the audited units (mean change when all are "
                   f"ablated: {span:.2g}): no circuit among the audited layers carries it", metric=metric, value=0.0,
                   threshold=threshold, evidence={"behaviour_change_when_all_ablated": span, "carried": False})


def presence(context: AuditContext, problem: CircuitProblem, m_model: torch.Tensor) -> Presence | None:
    """Is the declared behaviour there (:func:`~mechaudit.techniques.uncertainty.behaviour_presence`)? With pairs,
    the gap is the behaviour on the clean inputs minus on their corrupted twins. None without pairs (or for a
    similarity behaviour, whose reference is the partner itself): the reference is then the ablated model, whose
    signed gap is about 0 by construction under mean ablation, and :func:`carries_behaviour` judges instead."""
    if problem.reference is None or problem.behaviour is cosine_similarity:
        return None
    corrupted = behaviour_under_ablation(context.view, problem.reference, problem.targets, problem.behaviour, [], {},
                                         context.batch_size, context.device)
    return behaviour_presence(m_model, corrupted)


@dataclass
class References:
    """What R302 and R304 both start from: the behaviour of the intact model, of the model with every hidden unit
    mean-ablated, and whether the behaviour is there at all (:func:`presence`)."""

    intact: torch.Tensor
    all_ablated: torch.Tensor
    presence: Presence | None


def references(context: AuditContext, samples: int) -> References:
    """The :class:`References` of :func:`circuit_problem` (``samples``), computed once per audit."""
    return context.shared(REFERENCES, samples)


def _references(context: AuditContext, samples: int) -> References:
    problem = circuit_problem(context, samples)

    sites = ablation_sites(context, samples)

    def run(ablate: list[str]) -> torch.Tensor:
        return behaviour_under_ablation(context.view, problem.inputs, problem.targets, problem.behaviour, ablate,
                                        mean_values(context), context.batch_size, context.device, sites)

    intact = run([])
    return References(intact, run(hidden_nodes(context)), presence(context, problem, intact))


REFERENCES: Artifact[References] = Artifact("circuit_references", _references)


def absent_in(found: Presence, problem: CircuitProblem) -> Measurement:
    """:func:`behaviour_absent` for a circuit rule's problem."""
    against = ("clean minus corrupted inputs of the declared pairs" if problem.reference is not None
               and problem.behaviour is not cosine_similarity else "intact minus every audited unit ablated")
    return behaviour_absent(found, problem.description, against)


def behaviour_absent(found: Presence, description: str, against: str, evidence: dict | None = None) -> Measurement:
    """The one finding of a rule whose metric divides by a behaviour that is not there (its gap within sampling
    noise): it fails, and no ratio is computed. ``against`` names what the gap compares with."""
    return Measurement(
        f"the declared behaviour ({description}) is absent or too weak to measure: {against}, "
        f"{found.describe()}; no fraction of it is reported",
        metric="behaviour_absent", value=1.0, threshold=0.0,
        evidence={**(evidence or {}), "presence": found.to_dict(), "gap_against": against, "carried": False})


MLP_NEURON_SITE = """\
A transformer MLP neuron (GPT-2's `h.0.mlp.c_fc:u300`, a Hugging Face Conv1D; BERT's
`intermediate.dense:u7`) means its GELU output at every token, as the down projection (`c_proj`,
`output.dense`) reads it, with its mean per token over the audit data: at the next audited layer's input when
that is the projection; else (the MiniLM example and `benchmarks/gpt2_small.py` audit `intermediate.dense` /
`c_fc` alone) at the input of its reader, the first Linear or Conv1D run after it whose input has its width and
depends on its output (samples first), found on one batch and checked numerically like the next layer (unit-wise,
nothing else reaches that input, the neurons' only path to the output); its mean input there costs one more pass
over the audit data. Where no reader passes these checks (or a step with it fails: a warning is logged), the
Linear output before the GELU.
"""
"""What a transformer MLP neuron's address means in R301-R304 (shared by their docs)."""


def hidden_nodes(context: AuditContext) -> list[str]:
    """The candidate circuit nodes: every unit of every hidden audited layer."""
    return [layer.address(u) for layer in context.view.hidden_layers for u in range(layer.size)]


def mean_values(context: AuditContext) -> dict[str, torch.Tensor]:
    """Per layer, the mean output per unit and position: the values mean ablation writes."""
    return {name: stats.mean_map.float() for name, stats in context.unit_stats.items()}


def ablation_sites(context: AuditContext, samples: int) -> dict[str, ReadSite]:
    """Where R302 and R304 ablate each hidden layer's units: for a layer whose node scores (:func:`circuit_scores`)
    read the next audited layer's input split by unit, that input (after the unit's nonlinearity, pooling,
    flattening), written with its mean over the audit data; the other layers (whose next layer's input does not
    split by unit: heads, residual streams, a skip connection) are ablated at their output (:func:`mean_values`)."""
    return context.shared(ABLATION_SITES, samples)


def _ablation_sites(context: AuditContext, samples: int) -> dict[str, ReadSite]:
    hidden = {layer.name for layer in context.view.hidden_layers}
    read_by = {name: reader for name, reader in circuit_scores(context, samples).read_by.items() if name in hidden}
    means = {name: stats.input_mean for name, stats in context.unit_stats.items()}
    unaudited = sorted(set(read_by.values()) - set(means))  # readers the audit does not cover: one more pass
    if unaudited:
        try:
            means.update(reader_input_means(context.view, unaudited, context.data.inputs, context.batch_size,
                                            context.device))
        except Exception as error:  # noqa: BLE001 - optional: without their means, the layers ablate their output
            _LOG.warning("R302/R304: %s dropped (MLP neurons ablated at their layer's output): %s",
                         ", ".join(unaudited), error)
    return read_sites(context.view, read_by, means)


ABLATION_SITES: Artifact[dict[str, ReadSite]] = Artifact("ablation_sites", _ablation_sites)


def semantic_labels(context: AuditContext) -> dict[str, str]:
    """Labels from network dissection (the semantic dictionary, computed on first use with the dissection rule's
    parameters when that rule is part of the audit, whatever the rule order)."""
    from .dissection import dissection_dictionary

    entries = dissection_dictionary(context)
    labels = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and "component" in entry and "concept" in entry:
            labels.setdefault(entry["component"], str(entry["concept"]))
    return labels
