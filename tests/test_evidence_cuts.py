"""Cut evidence tables keep what the finding judged: the row naming its component, the row of its judged class
(tables of its metric ordered from that row outwards) and, in the circuit section, the input nodes."""

from __future__ import annotations

import re

from report_cases import example_result

from mechaudit.report.evidence import evidence_blocks, strongest_first
from mechaudit.report.html_report import render_report

FINDING = {"location": {"component": "layer.2:u9"}, "metric": "ratio", "value": 6.0}
PER_CLASS = [{"predicted_class": str(c), "ratio": 6.0 if c == 7 else float(c % 3)} for c in range(10)]
COMPONENTS = [{"component": f"layer.2:u{u}", "effect": 1.0 / (u + 1)} for u in range(10)]


def _rows(evidence: dict, key: str, finding: dict | None) -> list[list]:
    return next(b.rows for b in evidence_blocks(evidence, max_rows=3, finding=finding) if b.key == key)


def test_a_cut_keeps_the_judged_class_first_and_the_named_component() -> None:
    assert [row[0] for row in _rows({"per_class": PER_CLASS}, "per_class", FINDING)][0] == "7"
    assert [row[0] for row in _rows({"components": COMPONENTS}, "components", FINDING)] == [
        "layer.2:u0", "layer.2:u1", "layer.2:u9"]  # kept in place of the third, in the order written
    curve = [{"size": size, "ratio": 2.0 + size} for size in range(5)]  # not per class: its order is kept
    assert [row[0] for row in _rows({"curve": curve}, "curve", FINDING)] == [0, 1, 4]
    # control: with nothing judged, rows are cut in the order written
    assert [row[0] for row in _rows({"per_class": PER_CLASS}, "per_class", None)] == ["0", "1", "2"]
    assert [row[0] for row in _rows({"components": COMPONENTS}, "components", None)][-1] == "layer.2:u2"


def test_input_nodes_come_first_in_a_circuit() -> None:
    nodes = [{"id": "a", "layer": "x", "score": 3.0}, {"id": "input:r", "layer": "input", "score": 0.0},
             {"id": "b", "layer": "x", "score": -5.0}]
    assert [n["id"] for n in strongest_first(nodes)] == ["input:r", "b", "a"]


def test_digits_pdf_tables_keep_the_watermark_node_and_class_7() -> None:
    html = render_report(example_result("digits"), "pdf")
    circuit = html[html.index('id="circuit"'):]
    nodes = circuit[circuit.index(">nodes<"):circuit.index("</table>", circuit.index(">nodes<"))]
    assert "<td>input:watermark</td>" in nodes
    l201 = next(card for card in html.split("<article")[1:] if "L201" in card and ">per class<" in card)
    table = l201[l201.index(">per class<"):]
    first_row = re.search(r"<tbody>\s*<tr><td>([^<]*)</td>", table)
    assert first_row and first_row[1] == "7", "the judged class (7) opens the cut per-class table"
