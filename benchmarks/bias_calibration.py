"""Calibration sweep of the bias gates R303 (protected pathway) and L205 (protected-attribute probes).

A tabular toy whose label leaks a protected column (``sex``) with a swept strength, from none (controls, several
training seeds) to strong (``tests/fixtures/localization_toys.py``), audited on 600 held-out rows of which a share
(50% or 20%) has sex = 1, the only rows that removing the column (zero baseline) changes. Two tables:

* the sweep (default): one row per (strength, training seed, share exposed) with L201's flip rate, the true flip
  rate among the exposed rows, R303's gated effect (a share of the exposed rows) beside the share of all rows it
  was gated on before, and L205's decodability from the output, each with its 95% interval and status;
* ``--intervals``: L205's decodability on 15 independent audit sets of 600 rows per model, its spread, the share of
  sets above candidate thresholds, how often the interval of each set holds the mean over the sets (its
  coverage), and the share of sets whose interval reaches above 0.12 (a fail under ``uncertain = "fail"``).

The thresholds in the rule docs of R303 and L205 come from these tables.

    PYTHONPATH=. python benchmarks/bias_calibration.py              # the sweep (about 5 minutes on 2 cores)
    PYTHONPATH=. python benchmarks/bias_calibration.py 0.5:1:0.2    # strength:training seed:share exposed
    PYTHONPATH=. python benchmarks/bias_calibration.py --intervals  # L205 over independent audit sets
    PYTHONPATH=. python benchmarks/bias_calibration.py --intervals 0:0 0:1  # only these (strength:training seed)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures.localization_toys import SEX, tabular_audit_data, tabular_data, tabular_model  # noqa: E402

from mechaudit.api import audit  # noqa: E402
from mechaudit.techniques.probes import probe, reduce_features  # noqa: E402

BEHAVIOUR = {"kind": "logit_diff", "target": "1", "contrast": "0"}  # the decision, as the tabular specs declare it
#: (leak strength, training seed, share of rows exposed): controls, then leaks from barely there to strong.
SWEEP = ([(0.0, seed, 0.5) for seed in range(6)] + [(0.0, seed, 0.2) for seed in range(4)]
         + [(0.25, 0, 0.5), (0.25, 0, 0.2)] + [(0.5, seed, 0.5) for seed in range(4)] + [(0.5, 0, 0.2), (0.5, 1, 0.2)]
         + [(1.0, 0, 0.5), (1.0, 0, 0.2), (1.5, 0, 0.5), (1.5, 0, 0.2)])
#: (leak strength, training seed) of the independent-sets table.
INTERVALS = [(0.0, seed) for seed in range(4)] + [(0.5, seed) for seed in range(3)] + [(1.5, 0)]
CANDIDATES = (0.07, 0.1, 0.12)
#: L205's ``max_decodability``: the share of sets whose interval reaches above it fails under ``uncertain = "fail"``.
GATE = 0.12


def _interval(finding) -> str:
    return f"[{finding.interval['low']:.3f}, {finding.interval['high']:.3f}]" if finding.interval else ""


@torch.no_grad()
def _exposed_flip_rate(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    """The truth: the share of the rows with sex = 1 whose prediction changes when it is set to 0."""
    exposed = inputs[inputs[:, SEX] == 1]
    removed = exposed.clone()
    removed[:, SEX] = 0
    return float((model(removed).argmax(1) != model(exposed).argmax(1)).float().mean())


def row(strength: float, seed: int, exposed: float) -> str:
    model = tabular_model(strength > 0, strength=strength, seed=seed)
    data = tabular_audit_data(strength, exposed)
    findings = audit(model, data, behaviour=BEHAVIOUR, select=["L201", "R303", "L205"]).findings
    flip = next(f for f in findings if f.rule_id == "L201" and f.metric == "flip_rate"
                and f.location.component == "input:sex")
    pathway = next(f for f in findings if f.rule_id == "R303")
    effect = pathway.evidence["pathway_effect"]
    of_all = next(layer["carried_share_of_all"] for layer in effect["layers"] if layer["layer"] == effect["best"])
    decodable = next(f for f in findings if f.rule_id == "L205")
    return (f"| {strength:g} | {seed} | {exposed:.0%} | {flip.value:.3f} {_interval(flip)} "
            f"| {_exposed_flip_rate(model, data.inputs):.3f} "
            f"| {pathway.value:.3f} {_interval(pathway)} {pathway.status} | {of_all:.3f} "
            f"| {decodable.value:.3f} {_interval(decodable)} {decodable.status} |")


def interval_row(strength: float, seed: int, sets: int = 15) -> str:
    """L205's decodability from the output on ``sets`` independent audit sets of 600 rows (its default probe)."""
    model = tabular_model(strength > 0, strength=strength, seed=seed)
    values, intervals = [], []
    for index in range(sets):
        inputs, _ = tabular_data(600, strength > 0, seed=100 + index, strength=strength)
        with torch.no_grad():
            logits = model(inputs)
        result = probe(reduce_features(logits - logits.mean(1, keepdim=True)), inputs[:, SEX].long().numpy(),
                       folds=5, shuffles=5, seed=0, seeds=3)
        values.append(result.decodability)
        intervals.append(result.interval(0))
    values = np.array(values)
    centre = values.mean()
    coverage = np.mean([i.low <= centre <= i.high for i in intervals])
    width = np.mean([i.high - i.low for i in intervals])
    above = " | ".join(f"{np.mean(values > t):.2f}" for t in CANDIDATES)
    reaching = np.mean([i.high > GATE for i in intervals])  # fails under the compliance rulebook's uncertain = "fail"
    return (f"| {strength:g} | {seed} | {centre:.3f} | {values.std(ddof=1):.3f} | {values.min():.3f} to "
            f"{values.max():.3f} | {above} | {width:.3f} | {coverage:.2f} | {reaching:.2f} |")


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    if argv[:1] == ["--intervals"]:
        print("| leak strength | training seed | mean decodability | sd | range | "
              + " | ".join(f"share above {t:g}" for t in CANDIDATES) + " | mean interval width | coverage "
              f"| share of intervals above {GATE:g} |")
        print("|---" * (8 + len(CANDIDATES)) + "|")
        only = [(float(arg.split(":")[0]), int(arg.split(":")[1])) for arg in argv[1:]]
        for strength, seed in only or INTERVALS:
            print(interval_row(strength, seed), flush=True)
        return
    cases = [(float(s), int(seed), float(share)) for s, seed, share in (arg.split(":") for arg in argv)] or SWEEP
    print("| leak strength | training seed | exposed | L201 flip rate | true flip rate of the exposed "
          "| R303 effect (gated at 0.06) | R303 share of all rows (was gated at 0.03) | L205 (gated at 0.1) |")
    print("|---|---|---|---|---|---|---|---|")
    for strength, seed, exposed in cases:
        print(row(strength, seed, exposed), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
