"""``findings.json``: the machine-readable result. Its schema is ``mechaudit/schemas/findings.schema.json``; its text
is laid out by :mod:`mechaudit.report.json_text` (objects indented, lists of numbers on one line)."""

from __future__ import annotations

from typing import Any

from ..findings import AuditResult, to_jsonable
from .json_text import dumps

SCHEMA_VERSION = "1.0"


def result_to_dict(result: AuditResult) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "verdict": "fail" if result.gate_failed else "pass",
        "fail_on": result.fail_on,
        "complete": result.complete,
        "counts": result.counts(),
        "metadata": to_jsonable(result.metadata),
        "rules": [{"id": r.rule_id, "status": r.status, "seconds": round(r.seconds, 4), "reason": r.reason}
                  for r in result.rules],
        "findings": [f.to_dict() for f in result.findings],
        # optional: only when a waiver file was applied / a baseline was given
        **({"waivers": to_jsonable(result.waivers)} if result.waivers is not None else {}),
        **({"baseline": to_jsonable(result.baseline)} if result.baseline is not None else {}),
    }


def render_json(result: AuditResult) -> str:
    return dumps(result_to_dict(result)) + "\n"
