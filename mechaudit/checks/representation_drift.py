"""D107: representation drift since a baseline audit, by debiased linear CKA and RSA on stored fingerprints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, forwards
from ..findings import Location, Measurement
from ..techniques.cka import cka_interval
from ..techniques.fingerprints import (
    Fingerprints,
    centred_gram,
    compare,
    deserialise,
    inputs_digest,
    serialise,
)
from .decomposition_common import pooled_activations
from .registry import RuleDefinition, RuleDocs, param, register

FILE = "fingerprints/representations.safetensors"

DOCS = RuleDocs(
    summary="A layer represents the audit data differently from the baseline model's layer.",
    what="""
Every audit that runs this rule stores a fingerprint of each hidden layer in its bundle
(`fingerprints/representations.safetensors`, listed in the manifest): the centred Gram matrix of the layer's
per-sample activations (mean over positions) on a seeded subset of at most `samples` audit samples. With
`--baseline OLD` (a bundle audited with this rule), each layer is compared with its counterpart in OLD, matched
by name, or, for a layer OLD lacks, by the highest CKA among OLD's unmatched layers. A finding per layer reports
linear CKA and RSA; it fails when the drift, 1 - CKA, exceeds `max_drift`. Without a baseline the rule only
records the fingerprints.
""",
    why="""
The findings of a previous audit were reviewed against the mechanism the model had then. When a retrain changes
what a layer computes, those reviews (the circuit, the critical units, the explanation of a behaviour) no longer
describe the model, even if every metric still passes: the layer must be reviewed again. A fine-tune that keeps
the mechanism keeps its representations, so this separates the two without the old model.
""",
    how="""
Linear centred kernel alignment (Kornblith, Norouzi, Lee, Hinton 2019) from the two Gram matrices, debiased: its
HSIC terms are the unbiased estimator of Song et al. (2012) (Nguyen, Raghu, Kornblith 2021; Davari et al. 2023),
`HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`: 1 for the same representation up to rotation and scale, whatever the
widths, and near 0 for unrelated ones even where units outnumber the samples (the plug-in estimator reads two
independent 1,024-wide Gaussian representations on 256 samples as CKA 0.80, drift 0.2; debiased, 0.00:
`benchmarks/cka_bias.py`). It can read slightly below 0 (drift slightly above 1) for unrelated layers and is
reported as it is: clipping would restore an upward bias. RSA (Kriegeskorte, Mur, Bandettini 2008): the Spearman
correlation (scipy) of the two squared-Euclidean dissimilarity matrices, read from the Gram matrices; it is reported
beside CKA and does not judge. The samples are the audit's seeded subset: their SHA-256 is stored, and a baseline
taken on other samples is refused (an error). Threshold, from measurement on a trained MLP with two hidden layers
(`tests/fixtures/drift_models.py`, 256 samples): the same weights give CKA 1.000; a fine-tune (100 further steps at
learning rate 1e-4) keeps both layers at 0.9999; a retrain that changes the second layer's function
(re-initialised and trained, with the head, to read other features of the input; the first layer kept) drops that
layer to CKA 0.36 (biased: 0.37; RSA 0.42) while the first stays at 1.000; an independent retrain of the whole
model on the same task from another seed gives 0.86 and 0.86 (biased 0.87 and 0.86; RSA 0.80 and 0.85). The
limit, drift 0.2 (CKA 0.8), separates a changed function from a fine-tune with a wide margin and lets a same-task
retrain pass, though with less room: its units are new where its function is not. The debiased estimator moved no
verdict here nor on the examples (`digits` against `digits-control`, `induction` against `induction-control`:
drifts moved by at most 0.011), so the limit stays. Fingerprints pool over positions (the mean), so a change only
in spatial or token layout is not seen.

The drift carries a 95% basic-bootstrap interval over the fingerprinted samples (`2 x CKA - quantiles`; 200
resamples up to 1,024 samples, fewer above with the bias-corrected normal interval; seeded), computed from the two
stored Gram matrices (no activation is recomputed, and the baseline model is not needed): each resample draws the
samples with replacement for both layers alike, and leaves out the pairs of copies of one sample as the unbiased
HSIC leaves out the diagonal, so the resamples centre on the estimate; it is an interval of the population drift,
clipped to [0, 1]. Two related 20-dimensional Gaussian representations on 128 samples: the interval held the
population CKA in 97 of 100 draws; it is conservative where units far outnumber samples (the resamples' spread 1.7
times the estimate's at 256 units and 64 samples). Measured on `tests/fixtures/drift_models.py` (256 samples): the
changed layer's drift 0.64 has the interval 0.60 to 0.69; the fine-tune's lies within 0.0001 of 0.
""",
    fix="""
Re-review the drifting layers: rerun the localization and recomposition rules and compare their findings with
the baseline's (`mechaudit diff`). If the change was intended, record it (a waiver naming the release); if not,
find which training change moved the layer.
""",
    references=(
        "Kornblith, Norouzi, Lee, Hinton (2019). Similarity of Neural Network Representations Revisited. ICML.",
        "Song, Smola, Gretton, Bedo, Borgwardt (2012). Feature Selection via Dependence Maximization. JMLR 13.",
        "Nguyen, Raghu, Kornblith (2021). Do Wide and Deep Networks Learn the Same Things? ICLR.",
        "Davari, Horoi, Natik, Lajoie, Wolf, Belilovsky (2023). Reliability of CKA as a Similarity Measure in Deep "
        "Learning. ICLR.",
        "Kriegeskorte, Mur, Bandettini (2008). Representational similarity analysis - connecting the branches of "
        "systems neuroscience. Frontiers in Systems Neuroscience 2:4.",
    ),
)
RULE = RuleDefinition("D107", "representation-drift", "warning", DOCS, opt_in=True)


@dataclass(frozen=True)
class RepresentationDriftParams:
    max_drift: float = param(0.2, low=0.0, high=1.0, doc="fail a layer whose 1 - linear CKA with its baseline "
                                                         "counterpart exceeds this")
    samples: int = param(256, low=4, high=2048, doc="samples fingerprinted (seeded subset; Gram matrices of this "
                                                    "size are stored per layer)")


class RepresentationDriftEvidence(TypedDict, total=False):
    """The evidence of D107's findings (each finding holds some of these keys)."""

    baseline_layer: str
    by_layer: list
    cka: float
    file: str
    layers: list
    matched_by: str
    pooling: str
    rsa: float
    samples: int
    unmatched_baseline_layers: list


def _cost(sizes: Sizes, params: RepresentationDriftParams) -> Cost:
    """Activations of ``samples`` samples (one forward pass) and their fingerprints (Gram matrices)."""
    n = sizes.n(params.samples)
    return forwards(sizes, n) + Cost(flops=sum(2.0 * n * n * layer.values for layer in sizes.layers))


COST = RuleCost(_cost, reduce="samples")


@register("representation_drift", RepresentationDriftParams, needs=("layers",), rule=RULE,
          evidence=RepresentationDriftEvidence, cost=COST)
def representation_drift(context: AuditContext, rule) -> list[Measurement]:
    params: RepresentationDriftParams = rule.params
    indices, activations = pooled_activations(context, params.samples)
    current = Fingerprints({layer.name: centred_gram(activations[layer.name]) for layer in context.view.hidden_layers},
                           inputs_digest(context.data.inputs[indices]))
    raw = serialise(current)
    context.attachments[FILE] = raw
    current = deserialise(raw, FILE)  # judged as stored, so the same model compares exactly
    common = {"samples": current.samples, "file": FILE, "pooling": "mean over positions"}
    baseline_file = _baseline_file(context.baseline)
    if baseline_file is None or not baseline_file.is_file():
        why = ("no --baseline to compare with" if context.baseline is None else
               f"the baseline holds no {FILE} (audit it with D107 selected to compare representations)")
        return [Measurement(f"representation fingerprints of {len(current.grams)} layers recorded on "
                            f"{current.samples} samples; {why}", judged=False,
                            evidence={**common, "layers": list(current.grams)})]
    baseline = deserialise(baseline_file.read_bytes(), str(baseline_file))
    try:
        rows = {row["layer"]: row for row in compare(current, baseline)}
    except ValueError as exc:
        raise ValueError(f"{baseline_file}: {exc}") from None
    unmatched = [name for name in baseline.grams if name not in {row["baseline_layer"] for row in rows.values()}]
    findings = []
    for name in current.grams:
        if name not in rows:
            findings.append(Measurement(f"{name} has no counterpart in the baseline (more layers than it has)",
                                        location=Location.of_layer(name), judged=False, evidence=common))
            continue
        row = rows[name]
        drift = 1.0 - row["cka"]
        label = "" if row["baseline_layer"] == name else f" (matched to {row['baseline_layer']} by {row['matched_by']})"
        verdict = ("; the mechanism changed: re-review this layer's findings" if drift > params.max_drift else "")
        cka = cka_interval(current.grams[name], baseline.grams[row["baseline_layer"]], seed=context.seed)
        findings.append(Measurement(
            f"{name} has linear CKA {row['cka']:.3f} and RSA {row['rsa']:.3f} with the baseline{label}{verdict}",
            location=Location.of_layer(name), metric="drift", value=drift, threshold=params.max_drift,
            interval=None if cka is None else cka.complement(),
            evidence={**common, "cka": row["cka"], "rsa": row["rsa"], "baseline_layer": row["baseline_layer"],
                      "matched_by": row["matched_by"], "unmatched_baseline_layers": unmatched},
        ))
    table = [{key: row[key] for key in ("layer", "baseline_layer", "cka", "rsa")} for row in rows.values()]
    first = next((f for f in findings if f.value is not None), None)
    if first is not None:  # the layer-by-layer figure, drawn once
        first.evidence["by_layer"] = table
    return findings


def _baseline_file(baseline: Path | None) -> Path | None:
    """Where the baseline bundle keeps its fingerprints (``baseline`` is the bundle or its findings.json)."""
    if baseline is None:
        return None
    return (baseline if baseline.is_dir() else baseline.parent) / FILE


def bundle_drift(old: Path, new: Path) -> list[dict] | None:
    """``mechaudit diff``: the layer-by-layer comparison of two bundles' fingerprints (see
    :func:`~mechaudit.techniques.fingerprints.compare`), or None when either holds none."""
    files = [_baseline_file(path) for path in (old, new)]
    if not all(file is not None and file.is_file() for file in files):
        return None
    baseline, current = (deserialise(file.read_bytes(), str(file)) for file in files)
    return compare(current, baseline)
