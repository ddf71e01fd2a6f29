"""Confidence intervals on gated metrics and the behaviour presence test (issue 24, items 1-2)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

import mechaudit
from mechaudit.cli import main
from mechaudit.errors import InputError
from mechaudit.findings import Measurement
from mechaudit.rulebook import load_rulebook
from mechaudit.techniques.uncertainty import Interval, behaviour_presence, bootstrap_mean

EXAMPLES = ("digits", "digits-control", "induction", "induction-control")


def test_presence_separates_a_behaviour_from_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(256, generator=generator)
    baseline = torch.randn(256, generator=generator)
    assert not behaviour_presence(baseline + noise, baseline).present          # a gap of 0 +- noise: absent
    assert not behaviour_presence(baseline, baseline).present                  # no gap at all: absent
    assert behaviour_presence(baseline + noise + 1.0, baseline).present        # a shift of one noise sd: present
    found = behaviour_presence(baseline + noise + 1.0, baseline)
    assert found.gap == pytest.approx(float(noise.mean()) + 1.0, abs=1e-6)
    assert found.standard_error == pytest.approx(float(noise.std()) / 16, rel=1e-6)


def test_bootstrap_interval_is_seeded_and_covers_the_mean() -> None:
    values = np.random.default_rng(1).random(400) < 0.2
    first, again = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=3)
    assert first == again
    assert first.low < values.mean() < first.high
    assert first.high - first.low == pytest.approx(2 * 1.96 * np.sqrt(0.2 * 0.8 / 400), rel=0.25)
    assert bootstrap_mean(values[:1]) is None


@pytest.mark.parametrize("interval, expected", [(Interval(0.03, 0.07, "test"), "uncertain"),
                                                (Interval(0.01, 0.04, "test"), "certain")])
def test_uncertain_pass_fails_only_where_the_rulebook_says_so(interval: Interval, expected: str) -> None:
    measured = Measurement("4% flip", metric="flip_rate", value=0.04, threshold=0.05, interval=interval)
    point, strict = measured.finding("L201", "error", "point"), measured.finding("L201", "error", "fail")
    assert point.confidence == strict.confidence == expected
    assert point.status == "pass"
    assert strict.status == ("fail" if expected == "uncertain" else "pass")
    assert ("uncertain" in point.message) == (expected == "uncertain")
    assert point.to_dict()["interval"] == {"low": interval.low, "high": interval.high, "method": "test",
                                           "level": 0.95}
    failing = Measurement("9% flip", metric="flip_rate", value=0.09, threshold=0.05, interval=interval)
    assert failing.finding("L201", "error", "fail").status == "fail"          # a fail stays a fail


def test_rulebooks_declare_their_uncertain_gate(tmp_path) -> None:
    compliance = {rule_id: r.uncertain for rule_id, r in load_rulebook("compliance").rules.items()}
    # L205 and R303 gate on their point estimate (their intervals fail 30% to 53% of no-leak controls: their notes)
    assert {u for rule_id, u in compliance.items() if rule_id not in ("L205", "R303")} == {"fail"}
    assert compliance["L205"] == compliance["R303"] == "point"
    assert {r.uncertain for r in load_rulebook("default").rules.values()} == {"point"}
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nuncertain = "maybe"\n')
    with pytest.raises(InputError, match="uncertain"):
        load_rulebook(str(bad))
    bad.write_text('name = "bad"\n[rules.L205]\nuncertain = "maybe"\n')
    with pytest.raises(InputError, match="L205.*uncertain"):
        load_rulebook(str(bad))


def _audit(tmp_path, example: str, *args: str) -> tuple[int, dict]:
    out = tmp_path / f"{example}{'-'.join(args)}"
    code = main(["audit", "--example", example, "--out", str(out), "-q", *args])
    return code, json.loads((out / "findings.json").read_text())


@pytest.mark.slow
def test_intervals_in_every_output_format(tmp_path, capsys) -> None:
    """digits: every gated metric of L201, L202, D101 carries its interval in findings.json (schema-valid), SARIF
    result properties, JUnit, the HTML and PDF reports and the console, where an uncertain pass is listed too."""
    out = tmp_path / "out"
    formats = "json,sarif,junit,html" + (",pdf" if _has("weasyprint") and _has("pypdf") else "")
    code = main(["audit", "--example", "digits", "--out", str(out), "--format", formats])
    assert code == 1
    console = capsys.readouterr().out
    assert "95% interval" in console and "PASS" in console and "[uncertain: the 95% interval" in console
    data = json.loads((out / "findings.json").read_text())
    gated = [f for f in data["findings"] if f["rule_id"] in ("L201", "L202", "D101")]
    assert gated and all(f["interval"]["low"] <= f["value"] <= f["interval"]["high"] for f in gated)
    assert all(f["confidence"] in ("certain", "uncertain") for f in gated)
    uncertain = [f for f in data["findings"] if f.get("confidence") == "uncertain"]
    assert uncertain and all(f["status"] == "pass" and "[uncertain" in f["message"] for f in uncertain)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, json.loads((Path(mechaudit.__file__).parent / "schemas" / "findings.schema.json")
                                         .read_text()))
    sarif = json.loads((out / "findings.sarif").read_text())
    results = sarif["runs"][0]["results"]
    assert results and all("interval" in r["properties"] for r in results if r["ruleId"] == "L201")
    junit = ET.parse(out / "junit.xml").getroot()
    texts = [case.findtext("failure") or case.findtext("system-out") or "" for case in junit.iter("testcase")]
    assert sum("95% interval" in text for text in texts) >= len(gated)
    assert "UNCERTAIN" in "".join(texts)
    html = (out / "report.html").read_text()
    assert "percentile bootstrap" in html and "badge-uncertain" in html
    if "pdf" in formats:
        import pypdf
        text = " ".join(page.extract_text() for page in pypdf.PdfReader(out / "report.pdf").pages)
        assert "percentile bootstrap" in " ".join(text.split()) and "uncertain" in text


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
def test_compliance_fails_an_uncertain_pass_that_default_flags(tmp_path) -> None:
    """digits' classifier.0 has 37.5% dead units (95% interval over its units straddles 0.5): the default rulebook
    passes it, flagged uncertain; the compliance rulebook (uncertain = "fail") fails it."""
    def dead_share(args: tuple[str, ...]) -> dict:
        _, data = _audit(tmp_path, "digits", "--select", "D101", *args)
        (finding,) = [f for f in data["findings"] if f["metric"] == "dead_fraction" and f["value"] > 0.3]
        return finding

    default, compliance = dead_share(()), dead_share(("--rulebook", "compliance"))
    assert default["value"] == compliance["value"] < 0.5
    assert default["confidence"] == compliance["confidence"] == "uncertain"
    assert default["status"] == "pass" and compliance["status"] == "fail"


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES)
def test_statuses_do_not_depend_on_the_seed(example_audit, example: str) -> None:
    """The audits of tests/test_seed_stability.py (run once per session by conftest's ``example_audit``), compared
    finding by finding here."""
    def statuses(seed: int) -> dict:
        _, data = example_audit(example, seed)
        return {(f["rule_id"], (f["location"] or {}).get("component"), f["metric"]): f["status"]
                for f in data["findings"]}

    reference = statuses(0)
    assert statuses(1) == reference
    assert statuses(2) == reference


def _patching_finding(corrupt) -> dict:
    """L207 on a small random classifier whose pairs differ as ``corrupt(clean)`` says."""
    from mechaudit import audit
    from mechaudit.loading import AuditData

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    inputs = torch.randn(128, 6, generator=torch.Generator().manual_seed(1))
    data = AuditData(inputs=inputs, labels=model(inputs).argmax(-1).detach(), pairs=(inputs, corrupt(inputs)))
    result = audit(model, data, select=["L207"])
    (finding,) = [f.to_dict() for f in result.findings]
    return finding


def test_patching_reports_a_behaviour_within_noise_as_absent_never_a_fraction() -> None:
    """Pairs that differ by symmetric noise: the clean-vs-corrupted gap is 0 +- noise, so any 'recovered fraction'
    would divide noise by noise (the 260% of the issue). Control: pairs that remove an input the model reads."""
    noise = torch.Generator().manual_seed(2)
    absent = _patching_finding(lambda x: x + 0.01 * torch.randn(x.shape, generator=noise))
    assert absent["metric"] == "behaviour_absent" and absent["status"] == "fail"
    assert not absent["evidence"]["presence"]["present"] and "components" not in absent["evidence"]
    present = _patching_finding(lambda x: torch.zeros_like(x))
    assert present["metric"] == "top_recovered_fraction" and present["evidence"]["presence"]["present"]
