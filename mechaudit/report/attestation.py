"""``statement.intoto.json``: the bundle as an in-toto Statement v1, for signing tools (cosign, actions/attest).

The statement's ``subject`` lists every file of the bundle (``manifest.json`` included) with its SHA-256;
its predicate (type :data:`PREDICATE_TYPE`) is the audit's outcome: verdict, gate, counts, tool, rulebook and
the inputs as ``manifest.json`` records them. Spec: https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md
"""

from __future__ import annotations

import json
from typing import Any

from ..findings import AuditResult
from .manifest import sha256_bytes

STATEMENT = "statement.intoto.json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://pypi.org/project/mechaudit/#audit-predicate-v1"


def build_statement(result: AuditResult, files: dict[str, str | bytes], manifest: dict[str, Any]) -> str:
    """The statement over ``files`` (the whole bundle but the statement itself)."""
    meta = result.metadata
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": sha256_bytes(content)}}
                    for name, content in sorted(files.items())],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "verdict": "fail" if result.gate_failed else "pass", "failOn": result.fail_on,
            "complete": result.complete, "counts": result.counts(), "tool": meta["tool"],
            "rulebook": {"name": meta["rulebook"]["name"], "sha256": meta["rulebook"]["sha256"]},
            "model": meta["model"]["name"], "inputs": manifest["inputs"],
            **({"startedAt": meta["started_at"]} if meta.get("started_at") else {}),
            **({"finishedAt": meta["finished_at"]} if meta.get("finished_at") else {}),
        },
    }
    return json.dumps(statement, indent=2, ensure_ascii=False) + "\n"
