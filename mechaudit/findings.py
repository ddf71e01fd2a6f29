"""Findings and the audit result: plain data, serialised by the report writers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .addresses import parse_address

SEVERITIES: tuple[str, ...] = ("info", "warning", "error")
STATUSES: tuple[str, ...] = ("pass", "fail", "error", "skipped")
FAMILIES = {"D": "decomposition", "L": "localization", "R": "recomposition"}


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Location:
    """Where a finding applies: a layer (module path), optionally one unit of it.

    ``component`` is the address a user types: ``features.3`` for a layer, ``features.3:ch17`` for a unit,
    ``input:watermark`` for a declared input region.
    """

    component: str
    layer: str | None = None
    unit: str | None = None

    @classmethod
    def of_layer(cls, layer: str) -> "Location":
        return cls(component=layer, layer=layer)

    @classmethod
    def of_unit(cls, layer: str, unit: str) -> "Location":
        return cls(component=f"{layer}:{unit}", layer=layer, unit=unit)

    @classmethod
    def of_address(cls, text: str) -> "Location":
        """The location an address names (:func:`~mechaudit.addresses.parse_address`; ``ValueError`` if none)."""
        address = parse_address(text)
        if address.is_input:
            return cls(component=str(address))
        return cls.of_layer(address.layer) if address.unit is None else cls.of_unit(address.layer, address.unit)


@dataclass
class Finding:
    """One verdict of one rule, at one location."""

    rule_id: str
    severity: str
    status: str
    message: str
    location: Location | None = None
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    #: The waiver that matched this finding (see :mod:`mechaudit.waivers`): ``{id, rule, component, justification,
    #: approver, expires, state}``; ``state`` is ``active`` (the finding is waived) or ``expired`` (it is not).
    waiver: dict[str, Any] | None = None
    #: The metric's confidence interval ``{low, high, method, level}`` (see :mod:`mechaudit.techniques.uncertainty`),
    #: or None where the rule gives none.
    interval: dict[str, Any] | None = None
    #: ``certain`` or ``uncertain`` (the interval straddles the threshold: the verdict could go either way) for a
    #: judged metric with an interval; None otherwise. How an uncertain verdict gates is the rulebook's ``uncertain``.
    confidence: str | None = None

    @property
    def failing(self) -> bool:
        return self.status in ("fail", "error")

    @property
    def waived(self) -> bool:
        """True when an active, unexpired waiver covers this finding: it keeps its status but does not gate."""
        return self.waiver is not None and self.waiver.get("state") == "active"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.waiver is None:
            del data["waiver"]  # optional in findings.json: only written when a waiver matched
        for optional in ("interval", "confidence"):  # only written where the rule measured an interval
            if data[optional] is None:
                del data[optional]
        data["value"] = to_jsonable(_finite_or_none(self.value))
        data["threshold"] = to_jsonable(_finite_or_none(self.threshold))
        data["evidence"] = to_jsonable(self.evidence)
        return data


@dataclass
class Measurement:
    """What a check measured at one location. The engine turns it into a :class:`Finding` of the rule, by one rule:
    the finding fails when ``value > threshold`` (lower is better: a check whose metric improves upward reports
    its complement, e.g. ``instability = 1 - seed agreement``). A measurement without a threshold, or one the check
    could not judge (``judged=False``, e.g. too few units to say), passes: it describes."""

    message: str
    location: Location | None = None
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    judged: bool = True
    #: The value's confidence interval (:class:`mechaudit.techniques.uncertainty.Interval`), or None.
    interval: Any = None

    @property
    def failed(self) -> bool:
        return (self.judged and self.value is not None and self.threshold is not None
                and float(self.value) > float(self.threshold))

    @property
    def confidence(self) -> str | None:
        """``uncertain`` when the interval straddles the threshold, ``certain`` when it lies on one side, None when
        there is no judged threshold or no interval."""
        if self.interval is None or not self.judged or self.threshold is None or self.value is None:
            return None
        return "uncertain" if self.interval.straddles(float(self.threshold)) else "certain"

    def finding(self, rule_id: str, severity: str, uncertain: str = "point") -> Finding:
        """The rule's finding. ``uncertain`` is the rulebook's gate for a verdict whose interval straddles the
        threshold: ``point`` judges the point estimate (the finding is flagged uncertain), ``fail`` fails it."""
        status = "fail" if self.failed else "pass"
        message = self.message
        if self.confidence == "uncertain":
            low, high = self.interval.low, self.interval.high
            message += (f" [uncertain: the {self.interval.level:.0%} interval {low:.3g}..{high:.3g} straddles "
                        f"{self.threshold:g}")
            if uncertain == "fail" and status == "pass":
                status, message = "fail", message + "; this rulebook fails an uncertain pass"
            message += "]"
        return Finding(rule_id, severity, status, message, self.location, self.metric, self.value, self.threshold,
                       self.evidence, interval=self.interval.to_dict() if self.interval is not None else None,
                       confidence=self.confidence)


@dataclass
class RuleRun:
    """How one rule went: its findings and the time it took."""

    rule_id: str
    status: str
    seconds: float
    findings: list[Finding]
    reason: str | None = None


@dataclass
class AuditResult:
    """Everything an audit produced, plus what is needed to reproduce and verify it."""

    findings: list[Finding]
    rules: list[RuleRun]
    metadata: dict[str, Any]
    fail_on: str = "error"
    #: The waiver file applied (:func:`mechaudit.waivers.apply_waivers`): ``{file, sha256, entries}``, or None.
    waivers: dict[str, Any] | None = None
    #: The comparison with a baseline result (:func:`mechaudit.diff.diff_results`), or None.
    baseline: dict[str, Any] | None = None
    #: Binary files rules produced for the output directory (relative path -> bytes), e.g. the dictionaries of D103.
    attachments: dict[str, bytes] = field(default_factory=dict)
    #: The project the audit's input paths are keyed relative to (the spec's, else the working directory's); not
    #: written to findings.json. None for a result built by hand: :meth:`save` then takes the working directory's.
    project_root: Path | None = None

    @property
    def gate_failed(self) -> bool:
        """True when a finding at or above ``fail_on`` failed, or a rule errored (unless ``fail_on`` is never).

        A finding covered by an active waiver never fails the gate."""
        return any(self.fails_gate(f) for f in self.findings)

    def fails_gate(self, finding: Finding) -> bool:
        """Whether this one finding makes the gate fail (see :attr:`gate_failed`)."""
        if self.fail_on == "never" or finding.waived:
            return False
        return finding.status == "error" or (
            finding.status == "fail" and severity_rank(finding.severity) >= severity_rank(self.fail_on))

    @property
    def complete(self) -> bool:
        return not any(r.status == "error" for r in self.rules)

    def counts(self) -> dict[str, int]:
        counts = {status: 0 for status in STATUSES}
        for finding in self.findings:
            counts[finding.status] += 1
        return counts

    def save(self, out: str | Path, formats: tuple[str, ...] = ("json",), *, sarif_keep_waived: bool = False,
             pdf_variant: str | None = None) -> Path:
        """Write the bundle (``formats`` of json, html, pdf, sarif, junit, github; manifest.json and the in-toto
        statement always) into directory ``out``, atomically, exactly as ``mechaudit audit --out`` does."""
        from .output import write_bundle
        from .report import FORMATS, ReportSettings, build_bundle, check_formats
        from .spec import project_root

        unknown = [name for name in formats if name not in FORMATS]
        if unknown:
            raise ValueError(f"unknown format {unknown[0]!r} (available: {', '.join(FORMATS)})")
        check_formats(tuple(formats))
        out = Path(out)
        settings = ReportSettings(sarif_keep_waived=sarif_keep_waived, pdf_variant=pdf_variant, bundle_dir=out,
                                  project_root=self.project_root or project_root(Path.cwd()))
        write_bundle(out, build_bundle(self, tuple(formats), settings))
        return out

    def to_sarif(self, *, keep_waived: bool = False) -> str:
        """The SARIF 2.1.0 log of this result (what ``--format sarif`` writes to ``findings.sarif``)."""
        from .report.sarif import render_sarif

        return render_sarif(self, keep_waived=keep_waived)

    def to_json(self) -> str:
        """``findings.json``'s content."""
        from .report.json_report import render_json

        return render_json(self)


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def to_jsonable(value: Any) -> Any:
    """Convert numpy / torch scalars and arrays, tuples and dataclasses into JSON-ready values."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return to_jsonable(value.tolist())
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, Location):
        return asdict(value)
    return value
