"""The report's front page in words: one paragraph per failing finding that tells the mechanism with its numbers.

A narrator reads one check's evidence (only keys of the check's evidence contract) and returns sentences; a
check without a narrator gets the rule's summary, the finding's message and the measured value against its limit.
Findings of one rule at one component are told together (L201's attribution ratio and flip rate are one story).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FAILING = ("fail", "error")


@dataclass(frozen=True)
class Story:
    """One paragraph of the front page: what failed where, told in plain words, with links to its findings."""

    rule_id: str
    name: str
    where: str
    gates: bool
    text: str
    anchors: tuple[str, ...]


def _pct(value: Any) -> str:
    return f"{100 * float(value):.1f}%" if isinstance(value, (int, float)) else "n/a"


def forbidden_input_story(findings: list[dict]) -> list[str]:
    """L201: how much attribution the region draws, how many predictions it decides, and the what-if edit."""
    by_metric = {f.get("metric"): f for f in findings}
    sentences: list[str] = []
    where = findings[0]["location"]["component"] if findings[0].get("location") else "the region"
    ratio = by_metric.get("attribution_ratio")
    if ratio and isinstance(ratio.get("value"), (int, float)):
        evidence = ratio["evidence"]
        rows = [r for r in evidence.get("per_class") or [] if isinstance(r, dict) and r.get("eligible")]
        worst = max(rows, key=lambda r: r.get("attribution_ratio") or 0, default=None)
        who = f"Class {worst['predicted_class']}" if worst else "The model"
        sentences.append(
            f"{who} depends on {where}: it draws {ratio['value']:.1f}\u00d7 its area's share of the attribution "
            f"({_pct(evidence.get('mask_area_share'))} of the input, limit {ratio.get('threshold'):g}\u00d7; "
            f"{evidence.get('attribution_ratio_pooled', 0):.1f}\u00d7 pooled over all classes).")
    flips = by_metric.get("flip_rate")
    if flips and isinstance(flips.get("value"), (int, float)):
        evidence = flips["evidence"]
        counts = (f" ({evidence['flipped']} of {evidence['samples']})" if isinstance(evidence.get("flipped"), int)
                  and isinstance(evidence.get("samples"), int) else "")
        sentences.append(f"{_pct(flips['value'])} of predictions{counts} change when "
                         f"{evidence.get('intervention', 'it is removed')} (limit {_pct(flips.get('threshold'))}).")
        sentences.extend(_what_if_sentences(evidence.get("what_if")))
    return sentences


def _what_if_sentences(edit: Any) -> list[str]:
    if not isinstance(edit, dict) or not isinstance(edit.get("layers"), list):
        return []
    best = next((row for row in edit["layers"] if row.get("layer") == edit.get("best")), None)
    if best is None:
        return []
    before, after = edit.get("before", {}), best.get("after", {})
    units = " \u2192 ".join(str(u["component"]) for u in (best.get("units") or [])[:3])
    text = [f"Its trace is strongest in {units} ({_pct(best['units'][0].get('share'))} of the direction in the "
            "first)."] if units else []
    cost = ""
    if "accuracy_region_removed" in after and "accuracy_region_removed" in before:
        drop = before["accuracy_region_removed"] - after["accuracy_region_removed"]
        cost = (" at no accuracy cost" if drop <= 0.005 else f" for {_pct(drop)} of accuracy") + (
            f" (accuracy without the region {_pct(before['accuracy_region_removed'])} \u2192 "
            f"{_pct(after['accuracy_region_removed'])})")
    text.append(f"Erasing its direction at {best['layer']} removes the shortcut: the flip rate falls from "
                f"{_pct(before.get('flip_rate'))} to {_pct(after.get('flip_rate'))}{cost}, measured on "
                f"{edit.get('evaluated_samples')} held-out samples (a simulation; `mechaudit edit --erase` writes "
                "it into the weights).")
    return text


def generic_story(findings: list[dict], summary: str) -> list[str]:
    """Any rule: its summary, then each failing finding's message and its value against the limit."""
    sentences = [summary.strip()] if summary.strip() else []
    for finding in findings:
        measured = ""
        if isinstance(finding.get("value"), (int, float)) and isinstance(finding.get("threshold"), (int, float)):
            measured = (f" ({str(finding.get('metric') or 'value').replace('_', ' ')} {finding['value']:.4g}, "
                        f"limit {finding['threshold']:.4g})")
        message = str(finding["message"]).rstrip(".")
        sentences.append(f"{message[:1].upper()}{message[1:]}{measured}.")
    return sentences


NARRATORS: dict[str, Callable[[list[dict]], list[str]]] = {"forbidden_input": forbidden_input_story}


def _told(narrator: Callable[[list[dict]], list[str]], findings: list[dict]) -> list[str]:
    """The narrator's sentences, or none (the generic story then) when the evidence is not the shape it knows."""
    try:
        return narrator(findings)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return []


def stories(views: list[Any], rules: dict[str, Any]) -> list[Story]:
    """One story per (rule, component) with a failing or errored finding, in the order of the findings.

    ``views`` are the report's finding views (``data``, ``where``, ``anchor``, ``gates``, ``check``), ``rules``
    the rule views by id (``name``, ``docs``)."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for view in views:
        if view.data["status"] in FAILING:
            groups.setdefault((view.data["rule_id"], view.where), []).append(view)
    told = []
    for (rule_id, where), members in groups.items():
        rule = rules.get(rule_id)
        narrator = NARRATORS.get(members[0].check or "")
        data = [v.data for v in members]
        errored = any(d["status"] == "error" for d in data)
        sentences = [] if narrator is None or errored else _told(narrator, data)
        if not sentences:
            summary = (rule.docs or {}).get("summary", "") if rule is not None else ""
            sentences = generic_story(data, summary)
        told.append(Story(rule_id, rule.name if rule is not None else "", where, any(v.gates for v in members),
                          " ".join(sentences), tuple(v.anchor for v in members)))
    return sorted(told, key=lambda s: not s.gates)
