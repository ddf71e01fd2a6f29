"""One row of the ground-truth table, the helpers that read an audit's verdicts, and the table's two renderings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sklearn.metrics import roc_auc_score

from mechaudit.findings import AuditResult

COLUMNS = ("family", "model", "rule", "metric", "value", "control verdict", "truth verdict")


@dataclass(frozen=True)
class Verdict:
    """A rule's status on one model beside the status the truth asks for (``None``: the truth does not decide)."""

    status: str
    expected: str | None

    @property
    def agrees(self) -> bool:
        return self.expected is None or self.status == self.expected

    def __str__(self) -> str:
        if self.expected is None:
            return self.status
        return f"{self.status} (truth: {self.expected}) {'ok' if self.agrees else 'WRONG'}"


@dataclass(frozen=True)
class Row:
    """``value`` compares the rule's measurement with the truth on the planted model; ``control`` and ``planted``
    are the rule's verdicts on the control twin and on the planted model."""

    family: str
    model: str
    rule: str
    metric: str
    value: float | None
    control: Verdict | None
    planted: Verdict | None

    def cells(self) -> tuple[str, ...]:
        value = "n/a" if self.value is None else f"{self.value:.3f}"
        return (self.family, self.model, self.rule, self.metric, value,
                "-" if self.control is None else str(self.control), "-" if self.planted is None else str(self.planted))


def rule_status(result: AuditResult, rule: str) -> str:
    """The rule's verdict: ``fail`` if any of its findings fails, else the first other status (pass, skipped...)."""
    statuses = [finding.status for finding in result.findings if finding.rule_id == rule]
    if not statuses:
        return "absent"
    for status in ("error", "fail"):
        if status in statuses:
            return status
    return statuses[0]


def findings(result: AuditResult, rule: str, metric: str | None = None) -> list:
    return [f for f in result.findings if f.rule_id == rule and (metric is None or f.metric == metric)]


def auroc(truth: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve of ``scores`` against the true set; ``None`` when the truth has one class only."""
    if len(set(truth)) < 2:
        return None
    return float(roc_auc_score(list(truth), list(scores)))


def text_table(rows: Iterable[Row]) -> str:
    cells = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: Iterable[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row.cells()) + " |" for row in rows]
    return "\n".join(lines)
