"""sample_reports/: every embedded example's bundle is committed, intact, and its findings match a fresh audit.

Regenerate them with ``python scripts/sample_reports.py`` when a rule, a threshold or an example changes.
"""

from __future__ import annotations

import json

import pytest
from conftest import REPO
from report_cases import example_result

from mechaudit.examples import EXAMPLES
from mechaudit.report.json_report import result_to_dict
from mechaudit.verify import verify_bundle

SAMPLES = REPO / "sample_reports"
REGENERATE = "python scripts/sample_reports.py"


def _key(finding: dict) -> tuple:
    """What must not drift: rule, status, location and the measured value (rounded)."""
    value = finding["value"]
    return (finding["rule_id"], finding["status"], (finding["location"] or {}).get("component"), finding["metric"],
            None if value is None else round(value, 4))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_sample_report_matches_a_fresh_audit(name: str) -> None:
    bundle = SAMPLES / name
    for file in ("findings.json", "report.html", "report.pdf", "manifest.json"):
        assert (bundle / file).is_file(), f"{bundle / file} is missing: run {REGENERATE}"
    outcome = verify_bundle(bundle, check_inputs=False)
    assert outcome.ok, outcome.problems
    committed = json.loads((bundle / "findings.json").read_text(encoding="utf-8"))
    fresh = result_to_dict(example_result(name))
    assert committed["verdict"] == fresh["verdict"]
    assert [_key(f) for f in committed["findings"]] == [_key(f) for f in fresh["findings"]], \
        f"sample_reports/{name} is stale: run {REGENERATE}"
    assert committed["metadata"]["command"] == (f"mechaudit audit --example {name} --out sample_reports/{name} "
                                                "--format json,html,pdf -q")
