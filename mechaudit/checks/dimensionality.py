"""D104: representation dimensionality per layer (PCA spectrum, effective rank); collapsed layers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch

from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, forwards, unit_products
from ..findings import Location, Measurement
from ..techniques.dimensionality import spectrum_of_covariance
from ..techniques.layer_map import layer_map
from ..techniques.read_vectors import (
    BOOTSTRAP_GROUPS,
    MAX_INPUT_WIDTH,
    PASS_BYTES,
    LayerCovariances,
    bootstrap_plan,
    describe_tensor,
    read_and_input_covariances,
)
from ..techniques.uncertainty import Interval, bootstrap_within
from .dead_units import FOLLOWING
from .decomposition_common import pooled_activations
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="A layer's representation has collapsed onto fewer directions than it reads.",
    what="""For every hidden layer, the PCA spectrum of what the next layer reads from it: the layer's output after the
rectifying nonlinearity that follows it (ReLU, GELU, ...; none for residual streams and attention heads), at each
position (a convolution's channels at each spatial cell, a token model's units at each token; attention heads: their
concatenated outputs at each token), accumulated as a covariance matrix over `samples` audit samples. A convolution
followed by a BatchNorm and then a ReLU is measured on its own output, before the BatchNorm and with no rectifier.
The effective rank of that spectrum is compared with the effective rank of what the layer itself reads (its input at
each position; a 1-D or 2-D convolution's input patches), capped by its number of live units: the *collapse* is `1 -
log(effective rank) / log(reference)`, 0 when the layer keeps (or adds) as many directions as it reads, 1 when it
keeps one, 0.5 when it keeps the square root of them; the finding fails when it exceeds `max_collapse`. A layer
whose input is not read is compared with its live units, and `reference` in the evidence says why: no tensor
argument, an input wider than 4,096 dimensions (no covariance of that size is built: a Linear reading a flattened
512x7x7 map would need 5 GB), or a 3-D convolution (its patches are not unfolded). All layers are recorded in one
pass over the samples (several when their covariances exceed 2 GiB together). The evidence also gives the components
that hold 90% and 99% of the variance.
""",
    why="""
A collapsed layer carries far fewer independent directions than it receives: capacity is wasted, and
decompositions of it (units, dictionary features) describe a handful of directions many times over. Collapse
also follows from over-regularisation or a bottleneck that was not intended.
""",
    how="""Effective rank as in Roy and Vetterli (2007): the exponential of the entropy of the normalised PCA spectrum.
Measured on what the next layer reads and per position, because pooling and pre-activations hide the structure: the
spatial mean of a convolution's pre-activation is an affine function of the input's spatial mean, rank one for a
one-channel input whatever its filters (a 32-channel first conv layer on 1-channel images read that way had
effective rank 1.0 of 32; per position after its ReLU it has 9.4, collapse 0.0). And against the layer's input
rather than its width, because the audit data bounds the directions any layer can show: 64 templated sentences give
MiniLM's residual stream an effective rank of 17 to 38 per token (of 384), its attention heads 30 and its GELU
neurons 20 to 37 (of 1536), about as many as the layers read (13 to 26): collapse 0.0 to 0.02 on `minilm`
(previously, on token means against the width: 0.96 to 0.99, every layer "collapsed"). Measured: a planted rank-one
layer behind a full-rank one, and a conv layer whose 32 filters are positive multiples of one filter, have collapse
1.0 (a healthy layer beside them: 0.10 and 0.0; `tests/test_decomposition.py`); on `digits` and `digits-control`
the collapse is 0.27 (`features.0`), 0.26 and 0.28 (`features.2`), 0.34 and 0.36 (`classifier.0`, which narrows the
flattened 256-value map to a few class directions). `max_collapse = 0.7` lies between them: a layer fails when it
keeps fewer than reference^0.3 directions (2.2 to 2.7 against MiniLM's input references of 13 to 26; 2.5 of 20).
Reference range of a healthy layer, measured on these examples and MiniLM: 0 to 0.4.

The collapse carries a 95% bootstrap interval over the audit samples, drawn in 16 groups (sample i in group i
mod 16; fewer groups when there are fewer samples): the covariances are accumulated per group in the same pass,
and each resample draws 16 groups with replacement, for output and input alike, and recomputes both spectra. A
sample's vectors stay in its group whatever the layout: a sequence-first module (`batch_first` False, such as
torch's `nn.MultiheadAttention` or `nn.LSTM` by default) reads its input as (tokens, samples, width), and that
input is grouped along its samples axis (grouped by rows, its groups held tokens of many samples: on a planted
attention layer whose samples differ by a heavy-tailed offset, the interval was 0.620 to 0.811 where its
batch-first twin's is 0.600 to 0.810; now both read the latter, `tests/test_decomposition_intervals.py`). Each
resample costs two eigendecompositions: 200 resamples (percentile interval) up to widths of about 170, fewer
above (normal interval: the collapse +- 1.96 standard deviations of the resamples, since 20 resamples cannot place
a 2.5% tail), never under 20 (MiniLM's 384-wide layers and its 1,536-wide MLP get 20); a layer where 20 would
exceed 2 x 10^11 operations (output and input about 1,700 wide or more, e.g. a 3,072-wide MLP) has no interval,
nor has one whose 16 (down to 8) covariances would exceed 1 GiB, and such a layer is recorded in one group (one
covariance each for output and input, no more memory than without the bootstrap). Measured: a rank-three layer of
16 units on 64 samples has collapse 0.68, interval 0.59 to 0.71 (uncertain against 0.7); the healthy layer before
it 0.09 (0.07 to 0.12).
""",
    fix="""
Check for an unintended bottleneck or an over-strong weight decay; a layer that really needs few dimensions can
be narrowed. A collapse that only the audit data explains (few, very similar samples) goes away with more varied
audit data.
""",
    references=(
        "Roy, Vetterli (2007). The effective rank: A measure of effective dimensionality. EUSIPCO.",
        "Jing, Vincent, LeCun, Tian (2022). Understanding Dimensional Collapse in Contrastive "
        "Self-supervised Learning. ICLR.",
    ),
)
RULE = RuleDefinition("D104", "representation-dimensionality", "warning", DOCS, opt_in=True)


@dataclass(frozen=True)
class DimensionalityParams:
    max_collapse: float = param(0.7, low=0.0, high=1.0, doc="flag a layer whose collapse (1 - log effective rank "
                                                            "of its output / log effective rank of its input, "
                                                            "capped by its live units) exceeds this: it keeps few "
                                                            "of the directions it reads")
    samples: int = param(2048, low=4, doc="samples read (seeded subset)")
    max_components: int = param(64, low=1, doc="spectrum values listed in the evidence")
    map_points: int = param(300, low=0, doc="samples drawn in the 2-D map of each layer (PCA and t-SNE); 0: none")


class DimensionalityEvidence(TypedDict, total=False):
    """The evidence of D104's findings (each finding holds some of these keys)."""

    components_90: int
    components_99: int
    effective_rank: float
    effective_rank_share: float
    explained_variance: list
    input_effective_rank: float | None
    layer_map: dict
    live_units: int
    measured_on: str
    pooling: str
    reference: str
    reference_rank: float
    samples: int
    units: int
    vectors: int


def _cost(sizes: Sizes, params: DimensionalityParams) -> Cost:
    """One forward pass of ``samples`` samples per group of layers whose float64 covariances (output and input,
    ``width²`` each; the input's width estimated from the layer before, 3x3 patches for a conv, capped at
    ``MAX_INPUT_WIDTH``; kept per group of samples for the bootstrap) fit in ``PASS_BYTES``, the products that
    accumulate them and the bootstrap's eigendecompositions."""
    n = sizes.n(params.samples)
    passes, held, peak, products, before = 0, PASS_BYTES + 1, 0.0, 0.0, sizes.input_values
    for layer in sizes.hidden:
        width = min(MAX_INPUT_WIDTH, before * (9 if layer.kind == "conv" else 1))
        plan = bootstrap_plan(layer.units, width, n)
        size = 8.0 * (layer.units ** 2 + width ** 2) * plan.groups  # covariances kept per group of samples
        products += float(layer.units ** 3 + width ** 3) * plan.resamples  # the bootstrap's eigendecompositions
        if held + size > PASS_BYTES:
            passes, held = passes + 1, 0.0
        held += size
        peak = max(peak, held)
        products += 2.0 * n * (layer.values / max(layer.units, 1)) * width ** 2
        before = layer.units
    scan = forwards(sizes, n, max(passes, 1))
    return scan + Cost(flops=unit_products(sizes, n) + products, peak_bytes=scan.peak_bytes + peak)


COST = RuleCost(_cost, reduce="samples")


@register("dimensionality", DimensionalityParams, needs=("layers",), rule=RULE,
          evidence=DimensionalityEvidence, cost=COST)
def dimensionality(context: AuditContext, rule) -> list[Measurement]:
    params: DimensionalityParams = rule.params
    indices = context.sample_indices(params.samples)
    following = context.shared(FOLLOWING)
    inputs = context.data.inputs[indices]
    pooled = pooled_activations(context, params.samples)[1] if params.map_points else {}
    findings = []
    recorded = read_and_input_covariances(context.view, list(context.view.hidden_layers), inputs, context.batch_size,
                                          context.device, following, bootstrap=BOOTSTRAP_GROUPS)
    for layer in context.view.hidden_layers:
        read, given = recorded[layer.name].read, recorded[layer.name].given
        result = spectrum_of_covariance(read.covariance)
        reference = spectrum_of_covariance(given.covariance).effective_rank if given is not None else None
        rank, live = result.effective_rank, min(result.live_units, max(read.count - 1, 1))
        ceiling = min(live, reference) if reference is not None else live
        collapse = collapse_of(rank, ceiling)
        interval = _collapse_interval(recorded[layer.name], collapse, context.seed)
        collapsed = collapse > params.max_collapse
        c90, c99 = result.components_for(0.9), result.components_for(0.99)
        not_read = recorded[layer.name].not_read
        against = (f"its input's {reference:.1f}" if reference is not None
                   else f"{live} live units; input not measured: {not_read}")
        message = (f"{layer.name}: effective rank {rank:.1f} of {result.live_units} live units per position (against "
                   f"{against}: collapse {collapse:.2f}); {c90} principal components hold 90% of the variance, "
                   f"{c99} hold 99%" + ("; the layer has collapsed onto a few directions" if collapsed else ""))
        findings.append(Measurement(
            message, location=Location.of_layer(layer.name),
            metric="collapse", value=collapse, threshold=params.max_collapse, interval=interval,
            evidence={"samples": len(indices), "vectors": read.count, "units": layer.size,
                      "live_units": result.live_units, "effective_rank": rank,
                      "effective_rank_share": rank / live if live else 0.0, "input_effective_rank": reference,
                      "reference": "input" if reference is not None else f"live units ({not_read})",
                      "reference_rank": ceiling, "components_90": c90, "components_99": c99,
                      "explained_variance": [round(float(v), 5) for v in result.explained[:params.max_components]],
                      "measured_on": describe_tensor(layer, following.get(layer.name)),
                      "pooling": "none: one vector per sample and position",
                      **({"layer_map": {"layer": layer.name, **_map(context, indices, pooled[layer.name],
                                                                      params.map_points)}}
                         if params.map_points else {})},
        ))
    return findings


def _collapse_interval(recorded: LayerCovariances, collapse: float, seed: int) -> Interval | None:
    """Bootstrap interval of the ``collapse`` over the groups of samples the covariances were kept in: each resample
    draws whole groups with replacement, for the output and input alike, and recomputes both spectra (resamples by
    :func:`~..techniques.read_vectors.bootstrap_plan`; percentile at 200, else normal); None when the layer was
    kept in one group (too wide)."""
    read, given = recorded.read, recorded.given
    groups = len(read.parts)
    if groups < 2 or (given is not None and len(given.parts) != groups):
        return None
    resamples = bootstrap_plan(read.width, given.width if given is not None else 0, groups, groups).resamples
    if not resamples:
        return None

    def statistic(index: np.ndarray) -> float:
        weights = torch.from_numpy(np.bincount(index, minlength=groups)).double()
        result = spectrum_of_covariance(read.resampled(weights))
        count = sum(float(w) * part.count for w, part in zip(weights, read.parts))
        live = min(result.live_units, max(int(count) - 1, 1))
        reference = spectrum_of_covariance(given.resampled(weights)).effective_rank if given is not None else None
        return collapse_of(result.effective_rank, min(live, reference) if reference is not None else live)

    return bootstrap_within(statistic, groups, collapse, over="groups of samples", resamples=resamples, seed=seed,
                            bounds=(0.0, 1.0))


def collapse_of(rank: float, reference: float) -> float:
    """``1 - log(rank) / log(reference)`` in [0, 1]: 0 when a layer keeps as many directions as its reference, 1
    when it keeps one (``rank = reference ** (1 - collapse)``); 0 when the reference holds one direction or none."""
    if reference <= 1.0 + 1e-6:
        return 0.0
    return min(1.0, max(0.0, 1.0 - math.log(max(rank, 1.0)) / math.log(reference)))


def _map(context: AuditContext, indices, values, points: int) -> dict:
    labels = context.data.labels[indices] if context.data.labels is not None else None
    return layer_map(values, labels, list(context.class_names) or None, max_points=points, seed=context.seed)
