"""Evidence contracts: each check declares the keys its findings' evidence may hold (a ``TypedDict`` registered with
it); the report's templates and drawers are registered under the check's name and read only those keys. This keeps
checks, templates and figures from drifting apart."""

import re
from pathlib import Path

import pytest
from jinja2 import ChainableUndefined
from report_cases import example_result

from mechaudit.checks import CHECKS, rule_definitions
from mechaudit.examples import EXAMPLES
from mechaudit.report.document import build_document
from mechaudit.report.figures import DRAWERS
from mechaudit.report.html_report import environment, render_html

TEMPLATES = Path(__file__).resolve().parents[1] / "templates" / "findings"
#: Keys every report understands, whatever the check (docs/report-evidence.md), and the engine's traceback.
REPORT_KEYS = {"samples", "method", "interval", "caveats", "traceback", "circuit", "semantic_dictionary",
               "attribution_sanity"}
#: Keys the engine adds to any rule's findings: its traceback, the out-of-memory retry, the plan's reduction
#: (``budget_reduction``) or refusal (``budget``) (mechaudit/cost.py), and exact checks the time budget cut
#: (``time_budget_cut``, mechaudit/deadline.py).
ENGINE_KEYS = {"traceback", "out_of_memory_retry", "budget_reduction", "budget", "time_budget_cut"}


def test_every_rule_declares_its_evidence() -> None:
    for rule_id, (check, _) in rule_definitions().items():
        assert check.evidence is not None and check.evidence_keys, f"{rule_id} ({check.name}) declares no evidence"


def test_templates_and_drawers_are_registered_under_a_check_and_read_only_its_keys() -> None:
    assert set(DRAWERS) <= set(CHECKS), f"drawers for no check: {set(DRAWERS) - set(CHECKS)}"
    for template in TEMPLATES.glob("*.html.j2"):
        name = template.name.removesuffix(".html.j2")
        if name == "generic":
            continue
        assert name in CHECKS, f"templates/findings/{template.name} is named after no registered check"
        read = set(re.findall(r"\be\.(\w+)", template.read_text(encoding="utf-8")))
        unknown = read - CHECKS[name].evidence_keys - REPORT_KEYS
        assert not unknown, f"templates/findings/{template.name} reads evidence keys {sorted(unknown)} that " \
                            f"{CHECKS[name].evidence.__name__} does not declare"


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_every_finding_of_the_examples_keeps_to_its_contract_and_renders(name: str, monkeypatch) -> None:
    result = example_result(name)
    checks = {rule_id: check for rule_id, (check, _) in rule_definitions().items()}
    for finding in result.findings:
        check = checks[finding.rule_id]
        undeclared = set(finding.evidence) - check.evidence_keys - ENGINE_KEYS
        assert not undeclared, f"{finding.rule_id} evidence keys {sorted(undeclared)} are not in " \
                               f"{check.evidence.__name__}"
    read: list[tuple[int, str]] = []

    class Recording(ChainableUndefined):
        """Records each key a template looks up in a dict that lacks it."""

        def __init__(self, hint=None, obj=None, name=None, exc=None, **kwargs) -> None:
            super().__init__(hint, obj, name, **({"exc": exc} if exc else {}), **kwargs)
            if isinstance(obj, dict) and isinstance(name, str):
                read.append((id(obj), name))

    monkeypatch.setattr(environment(), "undefined", Recording)
    document = build_document(result)
    html = render_html(result)
    cards = {id(view.data["evidence"]): view for view in document.findings}
    for evidence_id, key in read:
        view = cards.get(evidence_id)
        if view is not None and view.check in CHECKS:
            assert key in CHECKS[view.check].evidence_keys | REPORT_KEYS, \
                f"the report reads '{key}' from {view.check}'s evidence, which its contract does not declare"
    for view in document.findings:
        assert view.anchor in html


class _ReadRecorder(dict):
    """Evidence that records every key a drawer reads (``get`` or ``[]``), present or not."""

    def __init__(self, evidence: dict) -> None:
        super().__init__(evidence)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def undeclared_figure_inputs(check: str, finding: dict) -> set[str]:
    """The evidence keys the figures of ``check`` read from ``finding`` (or name as their sources) that the check's
    evidence contract does not declare."""
    evidence = _ReadRecorder(finding["evidence"])
    figures = DRAWERS[check]({**finding, "evidence": evidence}, "00-test")
    used = evidence.read | {key for figure in figures for key in figure.sources}
    return used - CHECKS[check].evidence_keys - REPORT_KEYS


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_every_figure_reads_only_declared_evidence(name: str) -> None:
    """Each drawer, run on every finding of the examples, reads only keys its check's contract declares: a figure
    input that no check records fails here."""
    document = build_document(example_result(name))
    drawn = 0
    for view in document.findings:
        if view.check in DRAWERS and view.data["status"] not in ("error", "skipped"):
            assert not undeclared_figure_inputs(view.check, view.data), \
                f"{view.data['rule_id']}'s figures read {sorted(undeclared_figure_inputs(view.check, view.data))}, " \
                f"which {CHECKS[view.check].evidence.__name__} does not declare"
            drawn += len(view.figures)
    assert drawn or name not in ("digits", "induction"), f"the {name} example draws no figure"


def test_a_figure_reading_an_undeclared_key_is_caught(monkeypatch) -> None:
    """The check above can fail: a drawer that reads a key no check declares (e.g. attention weights a check
    never records) is reported."""
    from mechaudit.report.figures import Figure

    def drawer(finding: dict, prefix: str) -> list:
        finding["evidence"].get("attention_weights_of_every_head")
        return [Figure(f"{prefix}-x.svg", "x", "x", "<svg/>", sources=("made_up_key",))]

    monkeypatch.setitem(DRAWERS, "dead_units", drawer)
    finding = {"rule_id": "D101", "evidence": {"dead_units": []}, "location": None, "status": "pass"}
    assert undeclared_figure_inputs("dead_units", finding) == {"attention_weights_of_every_head", "made_up_key"}
