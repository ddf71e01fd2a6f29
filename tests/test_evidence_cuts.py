"""Cut evidence tables keep what the finding judged: the row naming its component, the row of its judged class
(tables of its metric ordered from that row outwards) and, in the circuit section, the input nodes."""

from __future__ import annotations

import re

from report_cases import example_result

from mechaudit.findings import AuditResult, Finding, Location, RuleRun
from mechaudit.report.evidence import evidence_blocks, strongest_first
from mechaudit.report.html_report import render_report
from mechaudit.report.json_report import result_to_dict

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


def _values(evidence: dict, key: str, finding: dict | None, max_values: int = 16):
    return next(b for b in evidence_blocks(evidence, max_values=max_values, finding=finding) if b.key == key)


def test_a_cut_list_keeps_the_judged_component_and_value_and_counts_the_rest() -> None:
    names = [f"layer.2:u{u}" for u in range(40)][::-1]  # the judged u9 is item 30, past a cut at 16
    block = _values({"units": names}, "units", FINDING)
    assert "layer.2:u9" in block.value and len(block.value) == 16 and block.more == 24
    assert block.value[:15] == names[:15] and block.gap_before(15) and not block.gap_before(14)
    ratios = [float(i) / 100 for i in range(50)] + [6.0]  # the judged value is the last of 51
    block = _values({"ratios": ratios}, "ratios", FINDING, max_values=32)
    assert block.value[-1] == 6.0 and len(block.value) == 32 and block.more == 19
    # control: nothing judged, or a short list: the first values in order, no gap
    block = _values({"units": names}, "units", None)
    assert block.value == names[:16] and block.more == 24 and not any(map(block.gap_before, range(16)))
    assert _values({"units": names[:5]}, "units", FINDING).value == names[:5]


def test_the_html_and_pdf_show_the_judged_value_past_the_cut_and_the_count_left_out() -> None:
    planted = Finding("R399", "warning", "fail", "a planted finding", Location.of_unit("fc1", "u3"),
                      metric="share", value=0.5, threshold=0.1,
                      evidence={"units": [f"fc1:u{u}" for u in range(100, 140)] + ["fc1:u3"],
                                "shares": [0.01] * 40 + [0.5]})
    meta = {**result_to_dict(example_result("digits"))["metadata"], "rulebook": {"name": "custom", "sha256": "0" * 64}}
    result = AuditResult([planted], [RuleRun("R399", "fail", 0.1, [planted])], meta, fail_on="warning")
    for medium, shown, more in (("html", 32, 9), ("pdf", 16, 25)):
        html = render_report(result, medium)
        for key, judged in (("units", "<code>fc1:u3</code>"), ("shares", "0.5")):
            block = html[html.index(f">{key}<"):]
            block = block[block.index('class="values"'):block.index("</p>", block.index('class="values"'))]
            assert f"&hellip; {judged}" in block, (medium, key)  # kept past the cut, the gap before it marked
            assert block.count(", ") == shown - 1 and f"and {more} more (in findings.json)" in block, (medium, key)


def test_a_cut_list_marks_a_leading_gap_and_keeps_its_first_values_besides_one_judged_copy() -> None:
    block = _values({"units": ["a", "b", "c", "x"]}, "units", {"location": {"component": "x"}}, max_values=1)
    assert (block.value, block.more, block.gap_before(0)) == (["x"], 3, True)  # first values cut: a gap first
    drops = [0.9, 0.8, 0.7, 0.6, 0.5] + [0.0] * 6  # the judged value 0.0 six times, past a cut at 4
    block = _values({"drops": drops}, "drops", {"metric": "drop", "value": 0.0}, max_values=4)
    assert block.value == [0.9, 0.8, 0.7, 0.0] and block.more == 7
    assert [block.gap_before(i) for i in range(4)] == [False, False, False, True]
    # control: the judged value among the first values keeps the list's head, no gap
    block = _values({"drops": [0.0] * 6 + [0.5]}, "drops", {"metric": "drop", "value": 0.0}, max_values=4)
    assert block.value == [0.0] * 4 and not any(map(block.gap_before, range(4)))


def test_only_a_list_of_the_metric_holds_the_judged_value() -> None:
    """A number equal to the finding's value by chance (an index, a flag) is not what the finding judged."""
    finding = {"metric": "share", "value": 15.0}
    assert _values({"index": list(range(21))}, "index", finding, max_values=4).value == [0, 1, 2, 3]
    assert _values({"flags": [True] * 10 + [1]}, "flags", {"metric": "r", "value": 1.0}, 4).value == [True] * 4
    # control: the list of the metric keeps it past the cut
    assert _values({"share": list(range(21))}, "share", finding, max_values=4).value == [0, 1, 2, 15]
