"""Per-token attribution that L207 attaches to its findings on models whose inputs are token ids
(:mod:`mechaudit.techniques.token_attribution`; drawn by :mod:`mechaudit.report.token_figures`). It illustrates a
finding and never costs it: one that cannot be made is left out, with a warning."""

from __future__ import annotations

import warnings

import torch

from ..context import AuditContext
from ..techniques.circuits import Behaviour


def token_attribution(context: AuditContext, clean: torch.Tensor, corrupted: torch.Tensor | None,
                      targets: torch.Tensor, behaviour: Behaviour) -> dict:
    """``{"token_attribution": [...]}`` for a few clean prompts against their corrupted twins (or zero embeddings),
    or ``{}`` for inputs that are not token ids or when it cannot be made."""
    from ..techniques.token_attribution import takes_token_ids, token_attributions

    if not takes_token_ids(context.model, clean):
        return {}
    try:
        rows = token_attributions(context.model, clean, targets, behaviour, corrupted, device=context.device,
                                  batch_size=context.batch_size)
        names = context.data.token_text.names
        return {"token_attribution": [{**row.to_evidence(), "tokens": names(row.tokens)} for row in rows]}
    except Exception as exc:  # noqa: BLE001  a picture illustrates a finding; it never costs it
        warnings.warn(f"no token attribution: {type(exc).__name__}: {exc}", stacklevel=2)
        return {}
