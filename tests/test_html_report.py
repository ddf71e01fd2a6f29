"""The HTML report: every section, every finding, escaping, self-containment, generic rendering, size."""

from __future__ import annotations

import re
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

from conftest import REPO
from report_cases import (
    HOSTILE_LONG,
    HOSTILE_QUOTES,
    HOSTILE_SCRIPT,
    audit_project,
    example_result,
    hostile_project,
)

from mechaudit.findings import AuditResult, Finding, Location, RuleRun
from mechaudit.report import build_bundle, render_html
from mechaudit.report.document import build_document
from mechaudit.report.json_report import result_to_dict

SECTIONS = ("identity", "summary", "scope", "architecture", "method", "findings", "circuit", "limitations",
            "appendix")
SCRIPT = (REPO / "templates" / "report.js").read_text(encoding="utf-8")


class Tags(HTMLParser):
    """Every start tag and attribute of a page, as a browser's tokenizer sees them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_digits_report_has_every_section_finding_and_rule_doc() -> None:
    result = example_result("digits")
    html = render_html(result)
    for section in SECTIONS:
        assert f'<section id="{section}"' in html
    assert "Verdict: FAIL" in html
    data = result_to_dict(result)
    for i, finding in enumerate(data["findings"], start=1):
        card = html[html.index(f'id="finding-{i}"'):]
        assert f'<code class="rule-id">{finding["rule_id"]}</code>' in card[:600]
    for rule in data["metadata"]["rulebook"]["rules"].values():  # the rulebook's own text, as `explain` shows it
        first_line = rule["docs"]["why"].splitlines()[0].replace("'", "&#39;")
        assert first_line.split("`")[0] in html
    assert "checked: L203 passed" in html
    assert "Not part of this audit: no rule produced a circuit" not in html  # the spec declares a behaviour
    inline = re.findall(r"<figure class=\"evidence-figure\" id=\"([^\"]+)\"", html)
    files = [f for f in build_bundle(result, ("html",)) if f.startswith("figures/")]
    assert inline and len({i.removesuffix("-front") for i in inline}) == len(files)  # the front repeats the circuit
    assert len(html.encode()) < 5 * 2**20


def test_report_is_self_contained() -> None:
    html = render_html(example_result("digits"))
    tags = Tags(html).tags
    assert [t for t, _ in tags].count("script") == 1 and f"<script>{SCRIPT}</script>" in html
    assert not [t for t, _ in tags if t in ("img", "link", "iframe", "object", "embed", "base")]
    for tag, attrs in tags:
        assert "src" not in attrs, tag
        assert all(not name.startswith("on") for name in attrs), (tag, attrs)
        for name in ("href", "xlink:href"):  # links within the page, or a figure's raster inline (SVG <image>)
            assert not attrs.get(name) or attrs[name].startswith("#") or (
                tag == "image" and attrs[name].startswith("data:image/png;base64,")), attrs
    assert not re.findall(r"url\((?!#)", html) and "@import" not in html and "@font-face" not in html
    csp = unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1))
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    assert '<form id="filters" class="filters" hidden' in html  # the page reads fully without the script


def test_hostile_strings_are_escaped_everywhere(tmp_path: Path) -> None:
    result = audit_project(hostile_project(tmp_path / "p"))
    html = render_html(result)
    tags = Tags(html).tags
    assert [t for t, _ in tags].count("script") == 1 and f"<script>{SCRIPT}</script>" in html
    assert not {t for t, _ in tags} & {"b", "img"}
    assert HOSTILE_SCRIPT not in html and HOSTILE_QUOTES not in html
    escaped = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"
    for where in ("scope", "architecture", "findings"):
        section = html[html.index(f'<section id="{where}"'):]
        assert escaped in section[:section.index("</section>")], where
    assert "q&#39;uo&#34;te&amp;amp;&lt;b&gt;" in html  # model name and a layer name
    assert HOSTILE_LONG in html  # non-ASCII kept as text, not mangled
    svg = "".join(re.findall(r"<svg.*?</svg>", html, flags=re.DOTALL))
    assert "&lt;script&gt;" in svg and "<script" not in svg  # figure labels are escaped by matplotlib too
    long_header = build_document(result).header_title
    assert len(long_header) <= 60  # the PDF's running header is cut, the body wraps (overflow-wrap)


def _unknown_kinds_result() -> AuditResult:
    """Findings of rules this version of the report has never seen, with every evidence shape and hook."""
    circuit = {"nodes": [{"id": "input:watermark", "layer": "input", "depth": 0},
                         {"id": "fc1:u3", "layer": "fc1", "depth": 1, "label": "loop"},
                         {"id": "fc2:u1", "layer": "fc2", "depth": 2}],
               "edges": [{"source": "input:watermark", "target": "fc1:u3", "score": 0.8},
                         {"source": "fc1:u3", "target": "fc2:u1", "score": -0.3}],
               "behaviour": "logit of class 7", "left_out_edges": 5}
    findings = [
        Finding("R399", "warning", "fail", "a brand-new recomposition rule", Location.of_unit("fc1", "u3"),
                metric="novelty_rate", value=0.4, threshold=0.1,
                evidence={"samples": 50, "table": [{"a": 1, "b": "x"}, {"a": 2.5, "c": [1, 2]}],
                          "nested": {"k": 1, "deep": {"z": [1]}}, "many": list(range(100)),
                          "circuit": circuit, "semantic_dictionary": [{"component": "fc1:u3", "concept": "loop",
                                                                       "score": 0.9}],
                          "caveats": ["measured on a synthetic probe set"]}),
        Finding("D199", "info", "error", "check 'x' failed: ValueError: boom", evidence={"traceback": "Trace <x>"}),
        Finding("L299", "error", "skipped", "skipped: the spec declares no concept labels ([data.concepts])"),
        Finding("L298", "warning", "pass", "an attribution-based rule under a new id",
                evidence={"attribution_sanity": {"status": "passed", "method": "saliency", "rule": "L903"}}),
    ]
    rules = [RuleRun(f.rule_id, f.status, 0.1, [f], reason="no concepts" if f.status == "skipped" else None)
             for f in findings]
    meta = result_to_dict(example_result("digits"))["metadata"]
    meta = {**meta, "rulebook": {"name": "custom", "sha256": "0" * 64}}  # no recorded rule docs
    return AuditResult(findings, rules, meta, fail_on="warning")


def test_any_finding_renders_generically_with_its_hooks() -> None:
    html = render_html(_unknown_kinds_result())
    for rule_id in ("R399", "D199", "L299", "L298"):
        assert f"mechaudit explain {rule_id}" in html
    assert "<th>a</th><th>b</th><th>c</th>" in html  # a list of dicts is a table
    assert "and 68 more (in findings.json)" in html  # long lists are cut, saying so
    assert "Trace &lt;x&gt;" in html and "Verdict: FAIL" in html
    circuit = html[html.index('<section id="circuit"'):html.index('<section id="limitations"')]
    assert "logit of class 7" in circuit and "<svg" in circuit and "loop" in circuit
    assert "Not part of this audit" not in circuit
    limits = html[html.index('<section id="limitations"'):]
    assert "measured on a synthetic probe set" in limits and "no concepts" in limits
    assert "checked: L903 passed" in html  # read from the evidence: the report knows no rule id
    assert "95% interval" in html  # a *_rate metric over samples gets a Wilson interval


def test_pdf_without_weasyprint_is_one_clean_line(cli, project, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "weasyprint", None)  # import weasyprint -> ImportError
    result = cli("audit", project.spec, "--out", project.out(), "--format", "json,pdf")
    assert result.code == 2 and len(result.error_lines) == 1
    assert "pip install 'mechaudit[pdf]'" in result.err and not project.out().exists()


def _luminance(colour: str) -> float:
    hexes = colour.lstrip("#")
    hexes = "".join(c * 2 for c in hexes) if len(hexes) == 3 else hexes
    channels = [int(hexes[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(first: str, second: str) -> float:
    high, low = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_text_colours_meet_wcag_aa_contrast() -> None:
    """Every text colour of the stylesheets against its rule's background, else against white and the table
    heads it also sits on: at least 4.5:1 (WCAG 2 AA, what axe-core's color-contrast rule checks)."""
    assert round(_contrast("#888", "#fff"), 2) == 3.54 and round(_contrast("#000", "#fff"), 1) == 21.0
    low = []
    for sheet in ("report.css", "print.css"):
        css = (REPO / "templates" / sheet).read_text(encoding="utf-8")
        for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
            colour = re.search(r"(?<![-\w])color:\s*(#[0-9a-fA-F]{3,6})\b", body)
            if colour is None:
                continue
            own = re.search(r"background(?:-color)?:\s*(#[0-9a-fA-F]{3,6})\b", body)
            grounds = [own.group(1)] if own else ["#ffffff", "#f0f1f4"]
            worst = min(_contrast(colour.group(1), ground) for ground in grounds)
            if worst < 4.5:
                low.append(f"{sheet} {selector.strip()}: {colour.group(1)} {worst:.2f}:1")
    assert not low, low
