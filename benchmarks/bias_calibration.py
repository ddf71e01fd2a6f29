"""Calibration sweep of the bias gates R303 (protected pathway) and L205 (protected-attribute probes).

A tabular toy whose label leaks a protected column (``sex``) with a swept strength, from none (controls, several
training seeds) to strong, each audited with L201, R303 and L205 (``tests/fixtures/localization_toys.py``). Prints
one row per model: L201's counterfactual flip rate, R303's flow share (evidence) and gated pathway effect, L205's
decodability from the output as it was measured before (raw logits, 2 shuffles, one fold split) and as it is gated
now (centred logits, chance-subtracted, seeded splits), with 95% intervals and statuses. The thresholds in the rule
docs of R303 and L205 come from this table.

    PYTHONPATH=. python benchmarks/bias_calibration.py            # the documented sweep (about 2 minutes)
    PYTHONPATH=. python benchmarks/bias_calibration.py 0:0 0.5:1  # strength:seed pairs
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures.localization_toys import write_tabular  # noqa: E402

from mechaudit.engine import prepare, run_audit  # noqa: E402
from mechaudit.spec import load_spec  # noqa: E402
from mechaudit.techniques.probes import as_classes, probe, reduce_features  # noqa: E402

#: (leak strength, training seed): ten controls, then leaks from barely there to strong.
SWEEP = ([(0.0, seed) for seed in range(10)] + [(0.25, 0), (0.25, 1)] + [(0.5, seed) for seed in range(4)]
         + [(0.75, 0), (1.0, 0), (1.5, 0), (2.0, 0), (3.0, 0), (6.0, 0)])


def _interval(finding) -> str:
    return f"[{finding.interval['low']:.3f}, {finding.interval['high']:.3f}]" if finding.interval else ""


def row(directory: Path, strength: float, seed: int) -> str:
    spec = load_spec(write_tabular(directory, strength > 0, strength=strength, seed=seed, pathway=True))
    spec = dataclasses.replace(spec, options=dataclasses.replace(spec.options, select=("L201", "R303", "L205")))
    findings = run_audit(spec).findings
    flip = next(f for f in findings if f.rule_id == "L201" and f.metric == "flip_rate"
                and f.location.component == "input:sex")
    pathway = next(f for f in findings if f.rule_id == "R303")
    decodable = next(f for f in findings if f.rule_id == "L205")
    context, _ = prepare(spec)
    raw = context.outputs.reshape(len(context.data), -1)
    before = probe(reduce_features(raw), as_classes(context.data.protected["sex"]), 5, 2, context.seed).decodability
    return (f"| {strength:g} | {seed} | {flip.value:.3f} {_interval(flip)} "
            f"| {pathway.evidence['protected_flow_share']:.3f} "
            f"| {pathway.value:.3f} {_interval(pathway)} {pathway.status} "
            f"| {before:.3f} {'fail' if before > 0.3 else 'pass'} "
            f"| {decodable.value:.3f} {_interval(decodable)} {decodable.status} |")


def main(argv: list[str]) -> None:
    cases = [(float(s), int(seed)) for s, seed in (arg.split(":") for arg in argv)] or SWEEP
    print("| leak strength | training seed | L201 flip rate | R303 flow share (was gated at 0.3) "
          "| R303 pathway effect (gated at 0.03) | L205 before (gated at 0.3) | L205 now (gated at 0.07) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for strength, seed in cases:
            print(row(Path(scratch) / f"s{strength}_{seed}", strength, seed), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
