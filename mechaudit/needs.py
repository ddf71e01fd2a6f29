"""What a check can need from the model and data: one table, each need with its provider and its skip reason.

A check declares its needs when it registers (:func:`mechaudit.checks.registry.register`); the engine skips a rule
whose need is not provided, with the need's reason (see :func:`missing_need`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import AuditContext


@dataclass(frozen=True)
class Need:
    """A capability: whether an audit provides it, and why a rule needing it is skipped when it does not."""

    name: str
    provided: Callable[["AuditContext"], bool]
    reason: str


NEEDS: dict[str, Need] = {need.name: need for need in (
    Need("labels", lambda c: c.data.labels is not None and (
        c.task != "classification" or c.data.labels.unique().numel() > 1),
        "the spec declares no labels, or they hold a single class"),
    Need("masks", lambda c: bool(c.data.masks), "the spec declares no input masks ([data.masks])"),
    Need("concepts", lambda c: bool(c.data.concepts), "the spec declares no concept labels ([data.concepts])"),
    Need("protected", lambda c: bool(c.data.protected),
         "the spec declares no protected attributes ([data.protected])"),
    Need("pairs", lambda c: c.data.pairs is not None, "the spec declares no counterfactual pairs ([data.pairs])"),
    Need("spatial", lambda c: c.data.is_spatial, "the inputs are not spatial (N, C, H[, W])"),
    Need("layers", lambda c: bool(c.view.hidden_layers),
         "the model has no auditable hidden layers (Linear or Conv modules)"),
    Need("classification", lambda c: c.task == "classification", "the task is not classification"),
    Need("behaviour", lambda c: c.behaviour is not None,
         "the spec declares no [behaviour] for circuit rules to explain"),
    Need("patch_metric", lambda c: c.task == "classification" or c.behaviour is not None,
         "the task is not classification and the spec declares no [behaviour] to patch for"),
    Need("logits", lambda c: c.task in ("classification", "next-token") or (
        c.behaviour is not None and c.behaviour.kind in ("similarity", "output")),
        "the task is regression: the behaviour is read from logits (classification or next-token), or is a "
        "similarity of embeddings, or a regression output ([behaviour] kind = \"output\")"),
    Need("predictions", lambda c: c.task != "regression",
         "the task is regression: the rule counts changed class predictions"),
    Need("cues", lambda c: c.data.cues is not None, "the spec declares no cue pairs ([data.cues])"),
    Need("regions", lambda c: bool(c.data.masks) or bool(c.data.protected_columns),
         "the spec declares no input masks ([data.masks]) nor protected attributes that are input columns "
         "([data.protected] naming a CSV input column)"),
    Need("real_inputs", lambda c: c.data.inputs.is_floating_point(),
         "the inputs are token ids (integers): input attribution needs real-valued inputs"),
    Need("attributes", lambda c: bool(c.data.concepts) or bool(c.data.protected),
         "the spec declares no concept labels ([data.concepts]) nor protected attributes ([data.protected])"),
    Need("layer_pairs", lambda c: len(c.view.hidden_layers) >= 2,
         "the model has fewer than two audited hidden layers to compare"),
)}


def missing_need(needs: tuple[str, ...], context: "AuditContext") -> str | None:
    """The skip reason of the first of ``needs`` the audit does not provide, or None when it provides all."""
    missing = next((need for need in needs if not NEEDS[need].provided(context)), None)
    if missing is None:
        return None
    left_out = context.view.skipped if missing in ("layers", "layer_pairs") else {}
    return NEEDS[missing].reason + "".join(f"; left out: {name} ({why})" for name, why in list(left_out.items())[:2])
