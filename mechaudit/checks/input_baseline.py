"""The ``baseline`` parameters shared by every rule that intervenes on inputs (L201, L204, R303): what a removed
input region is replaced by (:mod:`..techniques.baselines`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..context import AuditContext
from ..techniques.baselines import BASELINES, Baseline
from .registry import param


@dataclass(frozen=True)
class BaselineParams:
    baseline: str = param("zero", choices=BASELINES,
                          doc="what a removed input region (or an attribution's reference) is replaced by: zero, "
                              "constant (baseline_value), mean (of the audit data, per feature or channel), blur "
                              "(blur_sigma), sample (another audit sample)")
    baseline_value: float = param(0.0, doc="the value of baseline = constant (e.g. the normalised value of grey)")
    blur_sigma: float = param(2.0, low=0.0, doc="Gaussian blur width in input cells, for baseline = blur")


def input_baseline(context: AuditContext, params: BaselineParams) -> Baseline:
    """The baseline a rule's parameters choose, over the audit inputs."""
    return Baseline(params.baseline, params.baseline_value, params.blur_sigma, context.data.inputs, context.seed)
