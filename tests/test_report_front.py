"""The report's front page (the mechanism told in words, from the evidence) and portable bundles (no absolute
path of the machine that made them)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from report_cases import example_result, require_binary

from mechaudit.portable import portable_command, relative_keys, relative_to_root
from mechaudit.report import build_bundle, render_html
from mechaudit.report.document import build_document
from mechaudit.report.story import generic_story


def test_the_shortcut_is_told_with_its_numbers_from_the_evidence() -> None:
    result = example_result("digits")
    doc = build_document(result)
    [story] = [s for s in doc.stories if s.rule_id == "L201"]
    ratio, flips = (next(f for f in result.findings if f.rule_id == "L201" and f.metric == m)
                    for m in ("attribution_ratio", "flip_rate"))
    edit = flips.evidence["what_if"]
    best = next(row for row in edit["layers"] if row["layer"] == edit["best"])
    assert story.gates and story.where == "input:watermark"
    assert f"{ratio.value:.1f}\u00d7" in story.text and f"{100 * flips.value:.1f}%" in story.text
    assert best["units"][0]["component"] in story.text and f"at {edit['best']}" in story.text
    assert f"{100 * best['after']['flip_rate']:.1f}%" in story.text
    html = render_html(result)
    front = html[html.index('id="summary"'):html.index('id="findings"')]
    assert story.text.split(":")[0] in front and "Checked and passed" in front
    passed = {rule.id for rule, _ in doc.passed}
    assert passed and all(r.status == "pass" for r in result.rules if r.rule_id in passed)
    assert "L201" not in passed


def test_a_rule_without_a_narrator_is_told_by_its_summary_and_message() -> None:
    finding = {"message": "12 of 32 units are dead", "metric": "dead_fraction", "value": 0.375, "threshold": 0.25}
    text = " ".join(generic_story([finding], "A layer has many dead units."))
    assert text == "A layer has many dead units. 12 of 32 units are dead (dead fraction 0.375, limit 0.25)."


def test_the_what_if_edit_is_a_chart_and_a_table_not_json() -> None:
    html = render_html(example_result("digits"))
    assert "What if the region&#39;s direction were erased" in html or "What if the region's direction" in html
    assert 'class="data what-if"' in html
    assert '"after": {' not in html and "&#34;after&#34;" not in html  # no raw JSON of the edit


def test_paths_are_relative_to_the_project_root(tmp_path: Path) -> None:
    root = tmp_path / "project"
    assert relative_to_root(str(root / "data" / "x.npz"), root) == "data/x.npz"
    assert relative_to_root("/elsewhere/x.npz", root) == "/elsewhere/x.npz"  # outside: stays absolute
    assert relative_to_root("<inputs>", root) == "<inputs>"
    assert relative_keys({str(root / "w.safetensors"): "ab"}, root) == {"w.safetensors": "ab"}
    assert portable_command(["audit", str(root / "s.toml"), f"--out={root / 'o'}", "--out", "/x y"], root) == \
        "audit s.toml --out=o --out '/x y'"


def test_an_example_bundle_carries_no_absolute_path_of_the_machine(tmp_path: Path) -> None:
    pytest.importorskip("weasyprint", reason="WeasyPrint is not installed (pip install -e .[pdf])")
    files = build_bundle(example_result("digits"), ("json", "html", "pdf"))
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(files["report.pdf"])
    pdf_text = subprocess.run([require_binary("pdftotext"), str(pdf), "-"], check=True, capture_output=True,
                              text=True).stdout
    machine = [str(Path(__file__).resolve().parents[1]), str(Path.home()), str(Path.cwd().resolve())]
    for name, text in (("findings.json", files["findings.json"]), ("report.html", files["report.html"]),
                       ("report.pdf", pdf_text)):
        for path in machine:
            assert path not in text, (name, path)
    meta = json.loads(files["findings.json"])["metadata"]
    for group in ("model", "data"):
        assert all(not re.match(r"^(/|[A-Za-z]:\\\\)", key) for key in meta[group]["sha256"]), meta[group]


def test_heatmaps_show_where_the_model_looks_with_the_region_outlined() -> None:
    result = example_result("digits")
    ratio = next(f for f in result.findings if f.rule_id == "L201" and f.metric == "attribution_ratio")
    maps = ratio.evidence["attribution_maps"]
    assert len(maps["mean_per_class"]) == len(maps["classes"]) and maps["samples"]
    assert tuple(maps["mask"].shape) == (8, 8) and float(maps["mask"].sum()) > 0  # pooled no finer than the input
    # class 7 (the planted shortcut) puts a larger share of its mean map inside the mask than the pooled classes
    seven = maps["mean_per_class"][maps["classes"].index("7")]
    share = lambda m: float((m * maps["mask"]).sum() / m.sum())  # noqa: E731
    assert share(seven) > 2 * sum(share(m) for m in maps["mean_per_class"]) / len(maps["mean_per_class"])
    figure = next(f for f in build_document(result).figures if f.name.endswith("-heatmaps.svg"))
    assert "<image" not in figure.svg and "outline" in figure.caption  # vector cells: nothing for the PDF to fetch
    assert "mean_per_class" not in render_html(result)  # drawn, never dumped as JSON


def test_the_circuit_reads_from_the_inputs_to_the_behaviour_with_widths_by_score() -> None:
    from mechaudit.report.figures import circuit_figure

    circuit = {"nodes": [{"id": "a:h0", "layer": "a"}, {"id": "b:h1", "layer": "b"}, {"id": "b:h2", "layer": "b"}],
               "edges": [{"source": "a:h0", "target": "b:h1", "score": 2.0},
                         {"source": "a:h0", "target": "b:h2", "score": -0.5}],
               "behaviour": "logit of 7"}
    figure = circuit_figure(circuit, ["a", "b"], "01-R301-model")
    assert ">inputs<" in figure.svg and ">logit of 7<" in figure.svg  # the ends, as text (svg.fonttype none)
    widths = sorted(float(w) for w in re.findall(r"stroke-width: ([\d.]+)", figure.svg))
    assert widths[-1] > 2 * widths[0]  # the strongest edge is drawn widest
    assert "widest: 2" in figure.caption


def test_evidence_of_an_unknown_shape_gets_the_generic_story() -> None:
    from types import SimpleNamespace

    from mechaudit.report.story import stories

    data = {"rule_id": "L201", "status": "fail", "metric": "flip_rate", "value": 0.5, "threshold": None,
            "message": "half flip", "evidence": {"flipped": "many", "what_if": {"layers": [{"layer": 3}]}}}
    view = SimpleNamespace(data=data, where="input:x", anchor="finding-1", gates=True, check="forbidden_input")
    rule = SimpleNamespace(name="forbidden-input-reliance", docs={"summary": "Relies on a region."})
    [story] = stories([view], {"L201": rule})
    assert story.text == "50.0% of predictions change when it is removed (limit n/a)."  # what is there, no None
    data.update(metric="attribution_ratio", value=2.0, threshold="three")  # a shape the narrator cannot tell
    [story] = stories([view], {"L201": rule})
    assert story.text == "Relies on a region. Half flip."
