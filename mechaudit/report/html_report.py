"""A self-contained HTML report rendered from ``templates/`` with autoescaping."""

from __future__ import annotations

from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..findings import FAMILIES, AuditResult
from ..resources import data_dir
from .json_report import result_to_dict


def environment() -> Environment:
    return Environment(loader=FileSystemLoader(str(data_dir("templates"))),
                       autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)


def render_html(result: AuditResult) -> str:
    data = result_to_dict(result)
    families = {name: [f for f in data["findings"] if f["rule_id"][0] == letter]
                for letter, name in FAMILIES.items()}
    return environment().get_template("report.html.j2").render(result=data, families=families)
