"""The reviewer report as data: what the HTML and PDF templates show, built once per result and shared.

Everything comes from the result itself (``findings.json``'s content, with the rules' documentation recorded in
``metadata.rulebook.rules``), so a report can be rendered without the rulebook file. A few evidence keys are
hooks that every report understands (``docs/report-evidence.md``): ``circuit`` and ``semantic_dictionary`` fill
section 7, ``caveats`` adds to the limitations.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..findings import FAMILIES, AuditResult
from .figures import DRAWERS, Figure, circuit_figure, slug
from .json_report import result_to_dict
from .story import Story, stories

CIRCUIT, DICTIONARY, CAVEATS, TRACEBACK = "circuit", "semantic_dictionary", "caveats", "traceback"
#: The evidence of a finding that rests on attributions: the sanity verdict on its method (``status`` passed /
#: failed / not checked, the ``rule`` that checked it, a ``note``), see :mod:`mechaudit.checks.attribution_common`.
SANITY = "attribution_sanity"
HOOKS = {CIRCUIT: dict, DICTIONARY: list, CAVEATS: list}  # evidence with sections of its own, by shape
HEADER_CHARS = 60


@dataclass
class FindingView:
    """One finding as the report shows it: its data, the figures drawn from its evidence, its caveats."""

    index: int
    data: dict[str, Any]
    family: str
    check: str | None
    gates: bool
    figures: list[Figure] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return f"finding-{self.index + 1}"

    @property
    def prefix(self) -> str:
        """The start of this finding's figure file names: ``03-L201-input-watermark``."""
        return f"{self.index + 1:02d}-{slug(self.data['rule_id'])}-{slug(self.where)}"

    @property
    def where(self) -> str:
        return self.data["location"]["component"] if self.data.get("location") else "model"

    @property
    def excess(self) -> float | None:
        """``value / threshold`` when both are known and the threshold is positive."""
        value, threshold = self.data.get("value"), self.data.get("threshold")
        if value is None or not threshold or threshold <= 0:
            return None
        return value / threshold

    @property
    def interval(self) -> tuple[float, float] | None:
        """A 95% interval for the value: the finding's ``interval`` (or ``evidence.interval``) if the rule gives one,
        else a Wilson score interval for a rate over samples (a metric named ``*_rate`` with an integer
        ``evidence.samples``)."""
        evidence, value = self.data["evidence"], self.data.get("value")
        if self.data.get("interval"):
            return float(self.data["interval"]["low"]), float(self.data["interval"]["high"])
        given = evidence.get("interval")
        if isinstance(given, list) and len(given) == 2 and all(isinstance(v, (int, float)) for v in given):
            return float(given[0]), float(given[1])
        samples = evidence.get("samples")
        if value is None or not str(self.data.get("metric")).endswith("_rate") or not isinstance(samples, int) \
                or samples <= 0 or not 0 <= value <= 1:
            return None
        return wilson_interval(value, samples)

    @property
    def attribution_based(self) -> bool:
        return isinstance(self.data["evidence"].get(SANITY), dict)

    @property
    def evidence(self) -> dict[str, Any]:
        """The evidence left for the generic tables: hooks (of their documented shape) have their own sections, and
        keys a figure draws in full (its ``sources``) are in the figure (and in ``findings.json``)."""
        drawn = {key for figure in self.figures for key in figure.sources}
        return {k: v for k, v in self.data["evidence"].items()
                if not is_hook(k, v) and k != TRACEBACK and k not in drawn}

    @property
    def in_circuit_section(self) -> bool:
        return any(is_hook(k, v) for k, v in self.data["evidence"].items() if k in (CIRCUIT, DICTIONARY))


@dataclass
class RuleView:
    """One selected rule: how it ran, its documentation and parameters (when recorded), its findings."""

    id: str
    status: str
    seconds: float
    reason: str | None
    declared: dict[str, Any] | None
    findings: list[FindingView]

    @property
    def family(self) -> str:
        return FAMILIES.get(self.id[0], "other")

    @property
    def name(self) -> str:
        return self.declared["name"] if self.declared else ""

    @property
    def check(self) -> str | None:
        return self.declared["check"] if self.declared else None

    @property
    def severity(self) -> str:
        if self.declared:
            return self.declared["severity"]
        return self.findings[0].data["severity"] if self.findings else "info"

    @property
    def docs(self) -> dict[str, Any] | None:
        return self.declared.get("docs") if self.declared else None


@dataclass(frozen=True)
class Sanity:
    """Whether the attributions that findings rest on were checked for sanity, in words (from their evidence)."""

    checked: bool
    passed: bool
    text: str


@dataclass
class Document:
    """Everything the templates read."""

    result: dict[str, Any]
    rules: list[RuleView]
    findings: list[FindingView]
    sanity: Sanity
    notes: list[str]  # problems met while drawing the report (a figure that could not be drawn)
    circuits: list[tuple[FindingView, dict, Figure | None]]
    dictionaries: list[tuple[FindingView, list]]
    figures: list[Figure]
    stories: list[Story] = field(default_factory=list)

    @property
    def meta(self) -> dict[str, Any]:
        return self.result["metadata"]

    @property
    def families(self) -> dict[str, list[RuleView]]:
        """The rules of each family, every family present (an empty one says so in the report)."""
        return {name: [r for r in self.rules if r.family == name] for name in FAMILIES.values()}

    def failing_at(self, layer: str) -> list[FindingView]:
        """The findings located in ``layer`` (or one of its units) that failed or errored."""
        return [f for f in self.findings
                if f.data["status"] in ("fail", "error") and (f.data.get("location") or {}).get("layer") == layer]

    @property
    def passed(self) -> list[tuple[RuleView, FindingView | None]]:
        """The rules that ran and passed, each with its finding closest to its limit (None when none has one)."""
        rows = []
        for rule in self.rules:
            if rule.status == "pass" and all(f.data["status"] == "pass" for f in rule.findings):
                measured = [f for f in rule.findings if f.excess is not None]
                rows.append((rule, max(measured, key=lambda f: f.excess or 0) if measured else None))
        return rows

    @property
    def front_circuit(self) -> tuple[FindingView, dict, Figure] | None:
        """The circuit the front page shows: the first drawn one, preferring a failing finding's."""
        drawn = [c for c in self.circuits if c[2] is not None]
        drawn.sort(key=lambda c: c[0].data["status"] not in ("fail", "error"))
        return drawn[0] if drawn else None

    @property
    def skipped(self) -> list[RuleView]:
        return [r for r in self.rules if r.status == "skipped"]

    @property
    def errored(self) -> list[RuleView]:
        return [r for r in self.rules if r.status == "error"]

    @property
    def weights_digest(self) -> str:
        """The SHA-256 of the (first) model file; empty when the model was built by code alone."""
        digests = [d for _, d in sorted(self.meta["model"]["sha256"].items())]
        return digests[0] if digests else ""

    @property
    def header_title(self) -> str:
        name = str(self.meta["model"]["name"])
        return name if len(name) <= HEADER_CHARS else name[:HEADER_CHARS - 1] + "\u2026"


_cache: tuple[str, Document] | None = None  # (digest of the result's JSON, its document)


def is_hook(key: str, value: Any) -> bool:
    return key in HOOKS and isinstance(value, HOOKS[key])


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``rate`` observed on ``n`` trials."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def build_document(result: AuditResult) -> Document:
    """The report's data for ``result``; built once per content and shared by the HTML, the PDF and ``figures/``
    (a result changed in between, e.g. by a waiver, gets a new document)."""
    global _cache
    data = result_to_dict(result)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    if _cache is None or _cache[0] != digest:
        _cache = (digest, _build(result, data))
    return _cache[1]


def figure_files(result: AuditResult) -> dict[str, str]:
    """The evidence figures as files of the bundle: ``figures/<name>.svg``."""
    return {f"figures/{figure.name}": figure.svg for figure in build_document(result).figures}


def _build(result: AuditResult, data: dict[str, Any]) -> Document:
    declared = data["metadata"].get("rulebook", {}).get("rules", {})
    layer_order = [c["layer"] for c in data["metadata"].get("components", [])]
    findings = [_finding_view(i, f, result, declared) for i, f in enumerate(data["findings"])]
    rules = [RuleView(r["id"], r["status"], r["seconds"], r["reason"], declared.get(r["id"]),
                      [f for f in findings if f.data["rule_id"] == r["id"]]) for r in data["rules"]]
    sanity = _sanity([f.data["evidence"][SANITY] for f in findings if f.attribution_based])
    notes: list[str] = []
    circuits, dictionaries = [], []
    for view in findings:
        _draw(view, notes)
        evidence = view.data["evidence"]
        if is_hook(CIRCUIT, evidence.get(CIRCUIT)):
            figure = _guarded(circuit_figure, (evidence[CIRCUIT], layer_order, view.prefix), view, notes)
            circuits.append((view, evidence[CIRCUIT], figure))  # drawn in section 7, not on the finding's card
        if is_hook(DICTIONARY, evidence.get(DICTIONARY)):
            dictionaries.append((view, evidence[DICTIONARY]))
        if view.attribution_based and not sanity.passed:
            view.caveats.append(f"attribution-based ({evidence['method']}); attribution sanity {sanity.text}")
    figures = [figure for view in findings for figure in view.figures] + [fig for _, _, fig in circuits if fig]
    told = stories(findings, {rule.id: rule for rule in rules})
    return Document(data, rules, findings, sanity, notes, circuits, dictionaries, figures, told)


def _finding_view(index: int, data: dict, result: AuditResult, declared: dict) -> FindingView:
    rule = declared.get(data["rule_id"])
    caveats = data["evidence"].get(CAVEATS)
    return FindingView(index, data, FAMILIES.get(data["rule_id"][0], "other"), rule["check"] if rule else None,
                       gates=result.fails_gate(result.findings[index]),
                       caveats=[str(c) for c in caveats] if is_hook(CAVEATS, caveats) else [])


def _draw(view: FindingView, notes: list[str]) -> None:
    """Draw the figures of a finding whose check has a drawer; a drawer that fails costs its figure only."""
    drawer = DRAWERS.get(view.check or "")
    if drawer is not None and view.data["status"] not in ("error", "skipped"):
        view.figures.extend(_guarded(drawer, (view.data, view.prefix), view, notes) or [])


def _guarded(draw: Callable[..., Any], args: tuple, view: FindingView, notes: list[str]) -> Any:
    """``draw(*args)``, or None with a note when it fails."""
    try:
        return draw(*args)
    except Exception as exc:  # noqa: BLE001  a figure is evidence, not the verdict: never lose the report over it
        notes.append(f"{view.data['rule_id']} at {view.where}: a figure could not be drawn "
                     f"({type(exc).__name__}: {exc})")
        return None


def _sanity(verdicts: list[dict]) -> Sanity:
    """The sanity of the attributions, from the ``attribution_sanity`` evidence of the findings that rest on them:
    failed if any method failed, checked if every one passed, else not checked (with the first reason given)."""
    checkers = ", ".join(sorted({str(v["rule"]) for v in verdicts if v.get("rule")})) or "the sanity rule"
    if not verdicts:
        return Sanity(False, False, "not checked (no finding of this audit rests on attributions)")
    if any(v.get("status") == "failed" for v in verdicts):
        return Sanity(True, False, f"FAILED ({checkers}): attribution-based evidence is not reliable")
    if all(v.get("status") == "passed" for v in verdicts):
        return Sanity(True, True, f"checked: {checkers} passed")
    unchecked = next(v for v in verdicts if v.get("status") != "passed")
    return Sanity(False, False, f"not checked ({unchecked.get('note') or 'no reason given'})")
