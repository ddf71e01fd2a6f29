"""What the circuit rules (R3xx) share: the declared behaviour as tensors, and the edge scores, computed once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import AuditContext
from ..techniques.circuits import (Behaviour, CircuitScores, edge_attribution, logit_difference, negative_loss,
                                   target_logit)


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
    if name.isdigit() and int(name) < context.outputs.shape[1]:
        return int(name)
    raise ValueError(f"behaviour names class '{name}', which is neither a class name nor an index")


def circuit_problem(context: AuditContext, samples: int) -> CircuitProblem:
    """Build (once per audit) the tensors for the spec's ``[behaviour]``."""
    return context.artifact(f"circuit_problem:{samples}", lambda: _build_problem(context, samples))


def _build_problem(context: AuditContext, samples: int) -> CircuitProblem:
    spec = context.behaviour
    assert spec is not None
    data = context.data
    if data.pairs is not None:
        clean, corrupted = data.pairs
        keep = torch.arange(clean.shape[0])[:min(samples, clean.shape[0])]
        inputs, reference, labels = clean[keep], corrupted[keep], None
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
    predicted = _predict(context, inputs)
    n = inputs.shape[0]
    if spec.kind == "predicted_logit":
        return CircuitProblem(inputs, predicted, target_logit, reference, "logit of the predicted class", labels)
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

    return model_outputs(context.model, inputs, context.batch_size, context.device).argmax(-1)


def _runner_up(context: AuditContext, inputs: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    from ..activations import model_outputs

    outputs = model_outputs(context.model, inputs, context.batch_size, context.device)
    outputs[torch.arange(len(first)), first] = float("-inf")
    return outputs.argmax(-1)


def circuit_scores(context: AuditContext, samples: int) -> CircuitScores:
    """Edge attribution patching scores for the declared behaviour (shared by R301-R304)."""
    def compute() -> CircuitScores:
        problem = circuit_problem(context, samples)
        return edge_attribution(context.view, problem.inputs, problem.targets, problem.behaviour,
                                reference=problem.reference, masks=context.data.masks,
                                batch_size=context.batch_size, device=context.device)
    return context.artifact(f"circuit_scores:{samples}", compute)


def hidden_nodes(context: AuditContext) -> list[str]:
    """The candidate circuit nodes: every unit of every hidden audited layer."""
    return [layer.address(u) for layer in context.view.hidden_layers for u in range(layer.size)]


def mean_values(context: AuditContext) -> dict[str, torch.Tensor]:
    """Per layer, the mean output per unit and position: the values mean ablation writes."""
    return {name: stats.mean_map.float() for name, stats in context.unit_stats.items()}


def semantic_labels(context: AuditContext) -> dict[str, str]:
    """Labels from network dissection (L206) or dictionary features, when a rule computed them earlier."""
    entries = context.cached("semantic_dictionary") or []
    labels = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and "component" in entry and "concept" in entry:
            labels.setdefault(entry["component"], str(entry["concept"]))
    return labels
