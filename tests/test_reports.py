import json
from pathlib import Path

import jsonschema
from conftest import REPO, read_findings, write_project

SCHEMA = json.loads((REPO / "mechaudit" / "schemas" / "findings.schema.json").read_text())


def test_findings_json_validates_against_its_schema(cli, tmp_path: Path) -> None:
    project = write_project(tmp_path, factory_args={"dead": 5}, data_table='labels = "labels"')
    assert cli("audit", project.spec, "--out", project.out(), "-q").code == 0
    data = read_findings(project.out())
    jsonschema.validate(data, SCHEMA)
    assert data["counts"]["fail"] >= 2 and data["verdict"] == "pass"
    assert data["metadata"]["components"][0] == {"layer": "fc1", "kind": "linear", "units": 8, "unit_prefix": "u",
                                                 "output": False}


def test_html_escapes_hostile_strings(cli, tmp_path: Path) -> None:
    hostile = '<script>alert("x")</script> \u00e9\u4e2d'
    project = write_project(tmp_path, extra=f'[task]\nclass_names = ["{hostile.replace(chr(34), chr(92) + chr(34))}", "b"]'
                                            f'\n[scope]\nintended_use = "{hostile.replace(chr(34), chr(92) + chr(34))}"')
    text = project.spec.read_text().replace('name = "toy"', 'name = "<img src=x onerror=alert(1)>"')
    project.spec.write_text(text)
    assert cli("audit", project.spec, "--out", project.out(), "--format", "html,json", "-q").code == 0
    html = (project.out() / "report.html").read_text(encoding="utf-8")
    script = (REPO / "templates" / "report.js").read_text(encoding="utf-8")
    assert html.count("<script") == 1 and f"<script>{script}</script>" in html  # only the report's own filter
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert html.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; \u00e9\u4e2d") >= 2  # class name(s) and scope
