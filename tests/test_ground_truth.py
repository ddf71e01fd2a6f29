"""The ground-truth benchmark's reduced subset (``benchmarks/ground_truth``): planted models and control twins, audited
through ``mechaudit.audit`` and scored against a truth computed from each model itself.

The subset: the planted MLP path, the induction heads, the protected-column leak at strengths 0 (control) and 6,
and D102 on the toy model of superposition. Thresholds come from the measured table (docs/ground_truth.md). The
families left out here (D103, the image shortcut, modular addition, tracr) run in
``python benchmarks/ground_truth/run.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.ground_truth import heads, mlp_path, protected_leak, superposition  # noqa: E402


def _by_metric(rows) -> dict:
    return {(row.rule, row.metric): row for row in rows}


@pytest.mark.slow  # a few small audits
def test_circuit_discovery_recovers_the_planted_mlp_path_and_r302_fails_the_distributed_control() -> None:
    rows = _by_metric(mlp_path.rows(quick=True))
    assert rows["R301", "node AUROC"].value == pytest.approx(1.0)
    assert rows["R301", "edge AUROC"].value == pytest.approx(1.0)
    faithful = rows["R302", "circuit = true path (Jaccard)"]
    assert faithful.value == pytest.approx(1.0)
    assert (faithful.planted.status, faithful.control.status) == ("pass", "fail")


@pytest.mark.slow  # two audits of the induction transformer and its control
def test_patching_and_ablation_find_the_true_heads_and_the_control_has_no_behaviour() -> None:
    rows = _by_metric(heads.rows(quick=True))
    patching, ablation = rows["L207", "head AUROC (recovered fraction)"], rows["L202", "head AUROC (ablation drop)"]
    assert patching.value == pytest.approx(1.0) and ablation.value == pytest.approx(1.0)
    assert patching.planted.status == "pass" and patching.control.status == "fail"  # behaviour absent
    assert ablation.planted.status == "fail" and ablation.control.status == "pass"
    assert all(row.planted.agrees and row.control.agrees for row in rows.values())


@pytest.mark.slow  # trains two tabular MLPs
def test_the_protected_column_flip_rate_matches_the_truth_and_the_control_passes() -> None:
    rows = protected_leak.rows(quick=True)
    (l201,) = [row for row in rows if row.rule == "L201"]
    assert l201.value <= 0.05                           # |L201's flip rate - the exact counterfactual flip rate|
    assert (l201.planted.status, l201.control.status) == ("fail", "pass")
    for rule in ("R303", "L205"):                       # flip rate 0.94 at strength 6
        (row,) = [row for row in rows if row.rule == rule]
        assert (row.planted.status, row.control.status) == ("fail", "pass"), rule


@pytest.mark.slow  # trains two toy models of superposition
def test_polysemanticity_per_unit_agrees_with_the_weights() -> None:
    (row,) = superposition.polysemantic_rows(quick=True, seed=0)
    assert row.value >= 0.8
    assert row.planted.status == "fail" and row.control.status == "pass"
    assert row.planted.agrees and row.control.agrees


@pytest.mark.parametrize(("argv", "message"), [
    (["--family", "mlp-path"], "invalid choice: 'mlp-path'"),
    (["--quick", "--markdown", "table.md"], "without --quick"),
])
def test_the_runner_refuses_an_unknown_family_and_a_quick_table(argv: list[str], message: str, capsys) -> None:
    from benchmarks.ground_truth.run import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
