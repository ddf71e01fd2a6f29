"""findings.json's layout: the same JSON as ``json.dumps``, with lists of numbers on one line (a matrix one row a
line) and short flat objects inline, so that it stays diffable at a fraction of the size."""

from __future__ import annotations

import json
import math

import pytest

from mechaudit.findings import AuditResult, Finding, RuleRun
from mechaudit.report.json_report import render_json
from mechaudit.report.json_text import SHORT, dumps

VALUE = {
    "matrix": [[0.125, -1.5e-07, 3], [4, 5, 6.0], [7, 8, 9]],
    "mixed": [1, "two", None, True, 2.5],
    "records": [{"sample": 3, "label": "7"}, {"sample": 4, "label": "ü ✓", "tile": [[0, 1], [1, 0]]}],
    "long": {f"key_{i}": "x" * 10 for i in range(12)},
    "empty": {"list": [], "dict": {}},
    1: "integer key", 2.5: "float key", None: "null key",
}


def test_the_text_parses_to_what_json_dumps_writes() -> None:
    assert json.loads(dumps(VALUE)) == json.loads(json.dumps(VALUE))
    assert "ü ✓" in dumps(VALUE)  # UTF-8 kept, as findings.json always was


def test_a_matrix_is_one_row_a_line_and_a_short_flat_object_one_line() -> None:
    lines = dumps(VALUE).splitlines()
    assert '    [0.125, -1.5e-07, 3],' in lines and '    [7, 8, 9]' in lines
    assert '  "mixed": [1, "two", null, true, 2.5],' in lines
    assert '    {"sample": 3, "label": "7"},' in lines
    assert '  "long": {' in lines and '    "key_0": "xxxxxxxxxx",' in lines  # too long for one line
    assert all(len(line) <= SHORT + 20 for line in lines)
    assert '  "empty": {"list": [], "dict": {}},' in lines


def test_what_json_refuses_is_refused() -> None:
    with pytest.raises(ValueError):
        dumps({"value": math.nan})
    with pytest.raises(TypeError):
        dumps({(1, 2): "tuple key"})
    with pytest.raises(TypeError):
        dumps({"value": object()})


def test_findings_json_is_written_in_this_layout() -> None:
    finding = Finding("D101", "info", "pass", "ok", evidence={"matrix": [[1.0, 2.0], [3.0, 4.0]]})
    text = render_json(AuditResult([finding], [RuleRun("D101", "pass", 0.0, [finding])], {}))
    assert "          [1.0, 2.0],\n          [3.0, 4.0]\n" in text
    assert json.loads(text)["findings"][0]["evidence"]["matrix"] == [[1.0, 2.0], [3.0, 4.0]]
