"""D106: layer redundancy: linear CKA between consecutive audited layers; for two readings of a residual stream,
the share of the stream that the update between them carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, forwards
from ..findings import Location, Measurement
from ..model_view import Layer
from ..techniques.cka import cka_interval, cka_matrix, gram
from ..techniques.stream_updates import StreamUpdate, stream_updates
from .decomposition_common import pooled_activations
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="Two consecutive layers represent the data almost identically.",
    what="""
Debiased linear CKA between the per-sample activations (mean over positions) of every pair of hidden layers; the
matrix is the evidence. A finding per consecutive pair fails when their CKA exceeds `max_cka`. Two consecutive
readings of a residual stream (layers of kind `stream` of the same width, e.g. `encoder.layer.1` and
`encoder.layer.2`) are similar by construction, the second being the first plus the block's update; for them the
finding judges the update instead: per token, the variance of `stream_after - stream_before` over the variance of
`stream_after` (the *update share*), and fails when the stream is left unchanged, one minus the update share above
`1 - min_update_share`. A stream reading after another kind of layer (a sublayer inside the block, such as its MLP)
is reported and not judged: the stream carries the block's input past that sublayer.
""",
    why="""
A layer that repeats the previous one adds depth without adding computation: it can often be pruned, and a
reviewer reading the model should not count it as a separate step. In residual networks it also shows blocks
whose updates are negligible.
""",
    how="""
Linear centered kernel alignment (Kornblith et al. 2019), debiased: its HSIC terms are the unbiased estimator of
Song et al. (2012), as Nguyen, Raghu and Kornblith (2021) and Davari et al. (2023) use it. The plug-in (biased) CKA
reads high where units outnumber samples: two independent Gaussian representations 1,024 wide read 0.94 on 64
samples and 0.80 on 256; debiased, 0.02 and 0.00 (identical and rotated representations: 1 by either;
`benchmarks/cka_bias.py`). Debiased CKA can be slightly negative for unrelated layers; it is reported as it is
(clipping at 0 would restore an upward bias), and only its interval is clipped to [0, 1]. For residual streams the
update's share of the stream, per token, as the block influence of Men et al. (2024) and the angular distance of
Gromov et al. (2024) measure it. On MiniLM (`minilm`, 64 sentences, 24 tokens each) consecutive stream readings have
CKA 0.93 to 0.99 per token (0.96 to 0.97 on token means, debiased or not, where the rule proposed pruning a block),
while each block's update carries 23% to 52% of the stream's variance (`encoder.layer.0` to `.5`): unchanged share
0.48 to 0.77, and every block passes. A planted block whose update is scaled down to 1% has update share below 0.001
and fails; its unscaled twin passes (`tests/test_decomposition.py`). `min_update_share = 0.05`: a block that changes
less than 5% of the stream's variance. Reference range of a healthy transformer block: update share 0.2 to 0.5.

Each judged value carries a 95% bootstrap interval over the audit samples (seeded). The update share: percentile
bootstrap, 200 resamples of the samples, each sample's tokens kept together (per-sample sums are kept in the one
pass). CKA: basic bootstrap (`2 x CKA - quantiles`; 200 resamples up to 1,024 samples; fewer above, 100 at the most
samples, 2,048, with the bias-corrected normal interval), computed from the two layers' sample x sample Gram
matrices without recomputing activations; a resample leaves out the pairs of copies of one sample, as the unbiased
HSIC leaves out the diagonal, so the resamples centre on the estimate (counting those pairs would bias each resample
upward). Two related 20-dimensional Gaussian representations on 128 samples: population CKA 0.50, mean debiased
CKA 0.50 (biased: 0.56); the interval held 0.50 in 97 of 100 draws. Where units far outnumber samples the interval
is conservative (256 units on 64 samples: the resamples' spread 1.7 times the estimate's). The verdict compares the
measured value with `max_cka`.

Other layers: a planted layer that rotates its input has CKA 1.00 with it; one that reads a single unit of sixteen
has 0.35. On `digits` the two conv layers (`features.0`, `features.2`) have CKA 0.985 (0.967 in `digits-control`),
above the 0.95 limit: the second conv layer's channels, averaged over positions, are nearly a linear re-mixing of
the first's; `classifier.0` against `features.2`: 0.11 (biased: 0.12). The change to the debiased estimator moved
no verdict: on `digits`, `digits-control`, `induction` and `induction-control` the values moved by at most 0.011;
on MiniLM's full spec (`--example minilm --select D106`) by up to 0.06, far below the limit (`encoder.layer.5`'s
attention against the MLP before it: 0.25 biased, 0.19 debiased), and by at most 0.006 near it (a stream reading
against the MLP inside its block: 0.976 and 0.945 biased, 0.974 and 0.939 debiased; not judged).
These representations have few effective dimensions, where the bias is small, so `max_cka = 0.95` stays.
""",
    fix="""
Try removing or narrowing the redundant layer and compare accuracy; in a residual network, look for blocks whose
update is near zero.
""",
    references=(
        "Kornblith, Norouzi, Lee, Hinton (2019). Similarity of Neural Network Representations Revisited. ICML.",
        "Song, Smola, Gretton, Bedo, Borgwardt (2012). Feature Selection via Dependence Maximization. JMLR 13.",
        "Nguyen, Raghu, Kornblith (2021). Do Wide and Deep Networks Learn the Same Things? ICLR.",
        "Davari, Horoi, Natik, Lajoie, Wolf, Belilovsky (2023). Reliability of CKA as a Similarity Measure in Deep "
        "Learning. ICLR.",
        "Men et al. (2024). ShortGPT: Layers in Large Language Models are More Redundant Than You Expect. "
        "arXiv:2403.03853",
        "Gromov, Tirumala, Shapourian, Glorioso, Roberts (2024). The Unreasonable Ineffectiveness of the Deeper "
        "Layers. arXiv:2403.17887",
    ),
)
RULE = RuleDefinition("D106", "layer-redundancy", "warning", DOCS, opt_in=True)


@dataclass(frozen=True)
class LayerRedundancyParams:
    max_cka: float = param(0.95, low=0.0, high=1.0, doc="flag consecutive layers whose linear CKA exceeds this")
    min_update_share: float = param(0.05, low=0.0, high=1.0, doc="residual streams: flag a block whose update "
                                                                 "carries a smaller share of the stream's variance "
                                                                 "(per token)")
    samples: int = param(2048, low=4, high=2048, doc="samples read (seeded subset; CKA's bootstrap holds five "
                                                     "samples x samples float64 matrices: 168 MB at 2,048)")


class LayerRedundancyEvidence(TypedDict, total=False):
    """The evidence of D106's findings (each finding holds some of these keys)."""

    cka: list
    layers: list
    pooling: str
    previous_layer: str
    samples: int
    stream_variance: float
    update_share: float
    update_variance: float
    vectors: int


def _cost(sizes: Sizes, params: LayerRedundancyParams) -> Cost:
    """Activations of ``samples`` samples (one forward pass) and linear CKA of every pair of layers (Gram
    matrices: samples² x values per layer)."""
    n = sizes.n(params.samples)
    return forwards(sizes, n) + Cost(flops=sum(2.0 * n * n * layer.values for layer in sizes.layers))


COST = RuleCost(_cost, reduce="samples")


@register("layer_redundancy", LayerRedundancyParams, needs=("layers", "layer_pairs"), rule=RULE,
          evidence=LayerRedundancyEvidence, cost=COST)
def layer_redundancy(context: AuditContext, rule) -> list[Measurement]:
    params: LayerRedundancyParams = rule.params
    layers = context.view.hidden_layers
    indices, activations = pooled_activations(context, params.samples)
    names, matrix = cka_matrix({layer.name: activations[layer.name] for layer in layers})
    evidence = {"samples": len(indices), "layers": names, "cka": [[round(v, 4) for v in row] for row in matrix],
                "pooling": "mean over positions"}
    by_name = {layer.name: layer for layer in layers}
    stream_pairs = [(by_name[a], by_name[b]) for a, b in zip(names, names[1:]) if _same_stream(by_name[a], by_name[b])]
    updates = {(u.before, u.after): u for u in stream_updates(
        context.view, stream_pairs, context.data.inputs[indices], context.batch_size, context.device)} \
        if stream_pairs else {}
    findings = []
    grams: dict = {}
    for i in range(len(names) - 1):
        if (names[i], names[i + 1]) in updates:
            findings.append(_update_finding(updates[(names[i], names[i + 1])], params, evidence, context.seed))
            continue
        value = matrix[i][i + 1]
        redundant = value > params.max_cka
        into_stream = by_name[names[i + 1]].kind == "stream" and by_name[names[i]].kind != "stream"
        interval = None
        if not into_stream:  # Gram matrices of the two layers, each built once (a layer is in two pairs)
            grams = {name: grams[name] if name in grams else gram(activations[name]) for name in names[i:i + 2]}
            interval = cka_interval(grams[names[i]], grams[names[i + 1]], seed=context.seed)
        findings.append(Measurement(
            f"{names[i]} and {names[i + 1]} have linear CKA {value:.2f}"
            + (f"; not judged: {names[i + 1]} is a residual stream, which carries its input past {names[i]} (audit "
               "two readings of the stream to judge the block by its update)" if into_stream else
               "; the second adds little to the first: a candidate for pruning or a sign of a skipped update"
               if redundant else ""),
            judged=not into_stream,
            location=Location.of_layer(names[i + 1]), metric="cka_with_previous", value=value,
            threshold=params.max_cka, interval=interval, evidence={**evidence, "previous_layer": names[i]},
        ))
    return findings


def _same_stream(first: Layer, second: Layer) -> bool:
    """Two readings of one residual stream: both of kind ``stream`` and of the same width."""
    return first.kind == second.kind == "stream" and first.size == second.size


def _update_finding(update: StreamUpdate, params: LayerRedundancyParams, evidence: dict, seed: int) -> Measurement:
    share = update.share
    interval = update.share_interval(seed)
    redundant = 1 - share > 1 - params.min_update_share
    return Measurement(
        f"the update between {update.before} and {update.after} carries {share:.1%} of the stream's variance per "
        f"token (linear CKA of the two readings' token means: {_cka(evidence, update):.2f}, high by construction)"
        + ("; the block barely changes the stream: a candidate for pruning" if redundant else ""),
        location=Location.of_layer(update.after), metric="stream_unchanged", value=1 - share,
        threshold=1 - params.min_update_share,
        interval=None if interval is None else interval.complement(),
        evidence={**evidence, "previous_layer": update.before, "update_share": share,
                  "update_variance": update.update_variance, "stream_variance": update.stream_variance,
                  "vectors": update.vectors, "pooling": "none: one vector per sample and token"})


def _cka(evidence: dict, update: StreamUpdate) -> float:
    names = evidence["layers"]
    return evidence["cka"][names.index(update.before)][names.index(update.after)]
