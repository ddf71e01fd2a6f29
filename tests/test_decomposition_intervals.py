"""Confidence intervals of the opt-in decomposition rules' gated metrics (D104 collapse, D105 modularity, D106 CKA
and update share, D107 drift): each interval holds its point value, and a planted layer measured near its limit
reads `uncertain` while its control, far from the limit, reads `certain`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.superposition import Passthrough
from test_decomposition import ResidualStack, TwoLayers, _data

import mechaudit
from mechaudit.report import build_bundle
from mechaudit.techniques.cka import cka_interval, gram, linear_cka
from mechaudit.techniques.coactivation import functional_modules as find_modules


def _has_an_interval(finding) -> None:
    assert finding.interval is not None and "bootstrap" in finding.interval["method"]
    assert finding.interval["low"] <= finding.interval["high"]


def _u_centred(k: torch.Tensor) -> torch.Tensor:
    """Szekely and Rizzo's (2014) U-centring of a Gram matrix (zero diagonal), whose inner product over
    ``n (n - 3)`` is the unbiased HSIC: an independent reference for the formula of Song et al. (2012)."""
    n = len(k)
    k = k - torch.diag(k.diagonal())
    u = k - k.sum(1, keepdim=True) / (n - 2) - k.sum(0, keepdim=True) / (n - 2) + k.sum() / ((n - 1) * (n - 2))
    return u - torch.diag(u.diagonal())


def _masked_debiased_cka(k: torch.Tensor, l: torch.Tensor, index: np.ndarray) -> float:  # noqa: E741
    """Debiased CKA of the resampled samples ``index``, the pairs of copies of one sample zeroed like the
    diagonal, by U-centring."""
    same = torch.from_numpy(index[:, None] == index[None, :])
    k, l = k[index][:, index].masked_fill(same, 0), l[index][:, index].masked_fill(same, 0)  # noqa: E741
    uk, ul = _u_centred(k), _u_centred(l)
    return float((uk * ul).sum() / torch.sqrt((uk * uk).sum() * (ul * ul).sum()))


def test_the_cka_bootstrap_equals_debiased_cka_on_a_resample_without_the_copies_pairs(monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 12, generator=g)
    y = x @ torch.randn(12, 6, generator=g) + 2 * torch.randn(120, 6, generator=g)
    index = np.random.default_rng(1).integers(0, 120, 120)
    seen = []

    def one_resample(statistic, n, estimate, **kwargs):
        seen.append((estimate, statistic(index)))
        return None

    from mechaudit.techniques import cka
    monkeypatch.setattr(cka, "bootstrap_basic", one_resample)
    cka_interval(gram(x), gram(y))
    estimate, resampled = seen[0]
    assert estimate == pytest.approx(linear_cka(x, y), abs=1e-9)
    assert estimate == pytest.approx(_masked_debiased_cka(gram(x), gram(y), np.arange(120)), abs=1e-9)
    assert resampled == pytest.approx(_masked_debiased_cka(gram(x), gram(y), index), abs=1e-9)
    # counting the copies' pairs (the duplicated samples as distinct) would read higher: the bias left out
    assert linear_cka(x[index], y[index]) > resampled + 0.01


def _seeded(build):
    torch.manual_seed(0)  # the models' other layers take PyTorch's default initialisation
    return build()


def test_d106_cka_near_its_limit_is_uncertain_and_far_from_it_certain() -> None:
    import json

    g = torch.Generator().manual_seed(1)
    first = torch.randn(16, 16, generator=g)
    rotation = torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    noise = torch.randn(16, 16, generator=g)
    result = mechaudit.audit(TwoLayers(first, rotation + 0.075 * noise, relu=False), _data(60), select=["D106"])
    near = result.findings[0]
    far = mechaudit.audit(TwoLayers(first, rotation + 0.3 * noise, relu=False), _data(60),
                          select=["D106"]).findings[0]
    for finding in (near, far):
        _has_an_interval(finding)
    # a rotation blurred by a little noise: debiased CKA 0.956, basic interval 0.945..0.966 around the 0.95 limit
    assert near.status == "fail" and near.confidence == "uncertain" and "uncertain" in near.message
    assert far.status == "pass" and far.confidence == "certain"
    files = build_bundle(result, ("json", "sarif", "html"))  # every format shows the interval
    written = json.loads(files["findings.json"])["findings"][0]
    assert written["interval"] == near.interval and written["confidence"] == "uncertain"
    properties = json.loads(files["findings.sarif"])["runs"][0]["results"][0]["properties"]
    assert properties["interval"] == near.interval and properties["confidence"] == "uncertain"
    low = f"{near.interval['low']:.3g}"
    assert f"95% interval {low}" in files["report.html"] and "straddles 0.95" in files["report.html"]


def test_d106_update_share_near_its_limit_is_uncertain_and_far_from_it_certain() -> None:
    tokens = torch.randn(60, 6, 8, generator=torch.Generator().manual_seed(7))
    streams = ["blocks.0", "blocks.1", "blocks.2"]
    near = mechaudit.audit(_seeded(lambda: ResidualStack((1.0, 0.34, 1.0))), tokens, select=["D106"],
                           layers=streams).findings[0]
    far = mechaudit.audit(_seeded(lambda: ResidualStack((1.0, 1.0, 1.0))), tokens, select=["D106"],
                          layers=streams).findings[0]
    for finding in (near, far):
        assert finding.metric == "stream_unchanged" and "60 samples" in finding.interval["method"]
        _has_an_interval(finding)
    # the block scaled to 0.34 changes 5.0% of the stream (unchanged 0.950, interval about 0.947..0.952)
    assert near.confidence == "uncertain" and far.confidence == "certain" and far.status == "pass"


def _baseline_bundle(model: torch.nn.Module, inputs: torch.Tensor, where: Path) -> Path:
    result = mechaudit.audit(model, inputs, select=["D107"])
    for name, content in build_bundle(result, ("json",)).items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return where


def test_d107_drift_near_its_limit_is_uncertain_and_an_unchanged_layer_certain(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    first, second, noise = (torch.randn(16, 16, generator=g) for _ in range(3))
    inputs = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    bundle = _baseline_bundle(_seeded(lambda: TwoLayers(first, second, relu=False)), inputs, tmp_path)
    drifted = mechaudit.audit(_seeded(lambda: TwoLayers(first, second + 1.4 * noise, relu=False)), inputs,
                              select=["D107"], baseline=bundle).findings
    by_layer = {f.location.component: f for f in drifted}
    for finding in drifted:
        _has_an_interval(finding)
    # the second layer's weights moved by 1.4x noise: drift 0.175, basic interval about 0.14..0.24 around the 0.2 limit
    assert by_layer["b"].status == "pass" and by_layer["b"].confidence == "uncertain"
    assert by_layer["a"].value == 0.0 and by_layer["a"].confidence == "certain"


def test_d104_collapse_near_its_limit_is_uncertain_and_far_from_it_certain() -> None:
    g = torch.Generator().manual_seed(0)
    full = torch.randn(16, 16, generator=g)
    u, v = torch.randn(16, 3, generator=g), torch.randn(3, 16, generator=g)
    few = u @ torch.diag(torch.tensor([1.0, 0.3, 0.3])) @ v  # three directions, two of them weak
    rank_one = torch.randn(16, 1, generator=g) @ torch.randn(1, 16, generator=g)
    fast = {"D104": {"map_points": 0}}
    near = mechaudit.audit(TwoLayers(full, few), _data(64), select=["D104"], rules=fast).findings
    far = mechaudit.audit(TwoLayers(full, rank_one), _data(64), select=["D104"], rules=fast).findings
    for finding in near + far:
        assert "16 groups of samples" in finding.interval["method"]
        _has_an_interval(finding)
    # collapse 0.68 of the three-direction layer, interval about 0.59..0.71 around the 0.7 limit
    assert near[1].status == "pass" and near[1].confidence == "uncertain" and "uncertain" in near[1].message
    assert near[0].confidence == "certain" and near[0].status == "pass"  # the full-rank layer before it
    assert far[1].status == "fail" and far[1].confidence == "certain"


class Attend(torch.nn.Module):
    """Token embedding, torch's attention (batch first or sequence first) whose values read three directions (two
    weak), and a readout: the same function in either layout."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed, self.head = torch.nn.Linear(8, 16), torch.nn.Linear(16, 3)
        self.attn = torch.nn.MultiheadAttention(16, 4, batch_first=batch_first)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=g))
            self.attn.in_proj_weight[32:] = (torch.randn(16, 3, generator=g) @ torch.diag(torch.tensor([1.0, .3, .3]))
                                             @ torch.randn(3, 16, generator=g))
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.batch_first else self.embed(x).transpose(0, 1)
        out = self.attn(h, h, h, need_weights=False)[0]
        return self.head((out if self.batch_first else out.transpose(0, 1)).mean(1))


def test_d104_groups_a_sequence_first_layer_by_sample_as_its_batch_first_twin() -> None:
    """A sequence-first attention reads (tokens, samples, width): grouped by rows, its input's groups held tokens of
    many samples, and its interval read 0.620..0.811 where the batch-first twin's reads 0.600..0.810 (collapse
    0.70; samples whose tokens share a heavy-tailed offset: the groups differ, and mixing them narrowed the
    interval). Before, neither had an interval: torch attention's width was not known before reading."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(64, 1, 8, generator=g) * torch.exp(1.5 * torch.randn(64, 1, 1, generator=g))
         + 0.3 * torch.randn(64, 12, 8, generator=g))
    fast = {"D104": {"map_points": 0}}
    first, second = (mechaudit.audit(Attend(layout), x, select=["D104"], rules=fast).findings for layout in (True, False))
    heads = [{f.location.component: f for f in findings}["attn"] for findings in (first, second)]
    assert heads[0].value == pytest.approx(heads[1].value, abs=1e-6) and heads[0].value > 0.6
    from mechaudit.model_view import ModelView
    from mechaudit.techniques.read_vectors import read_and_input_covariances

    model = Attend(False)
    view = ModelView.discover(model, x[:2])
    recorded = read_and_input_covariances(view, view.hidden_layers, x, 32, torch.device("cpu"), bootstrap=16)
    assert recorded["attn"].given.count == 64 * 12  # read once per forward pass (not again when its heads are)
    for finding in heads:
        assert "16 groups of samples" in finding.interval["method"]  # torch attention's width: its embed_dim
    assert heads[1].interval["low"] == pytest.approx(heads[0].interval["low"], abs=1e-6)
    assert heads[1].interval["high"] == pytest.approx(heads[0].interval["high"], abs=1e-6)


def test_modularity_by_matrices_equals_networkx() -> None:
    import networkx as nx

    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 3, generator=g).repeat_interleave(4, 1) + torch.randn(200, 12, generator=g)
    found = find_modules(x, 0.3, 8)
    expected = nx.community.modularity(found.graph, [set(c) for c in found.modules], weight="weight")
    assert len(found.modules) == 3 and found.modularity == pytest.approx(expected, abs=1e-12)


def _groups(noise: float) -> torch.Tensor:
    """Two groups of six units, each sharing a source, under independent noise ``noise`` times its size."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(300, 2, generator=g).repeat_interleave(6, 1) + noise * torch.randn(300, 12, generator=g)


def test_d105_modularity_near_the_correlation_floor_is_uncertain_and_clear_groups_certain() -> None:
    near = mechaudit.audit(Passthrough(12), _groups(1.6), select=["D105"]).findings[0]
    clear = mechaudit.audit(Passthrough(12), _groups(1.2), select=["D105"]).findings[0]
    for finding in (near, clear):
        assert finding.metric == "unstructured" and "300 samples" in finding.interval["method"]
        _has_an_interval(finding)
    # modularity 0.28 (passes), but some resamples find no module at all: 1 - modularity 0.45..1.0 straddles 0.9
    assert near.status == "pass" and near.confidence == "uncertain"
    assert clear.status == "pass" and clear.confidence == "certain" and clear.interval["high"] < 0.9


def test_a_layer_too_wide_for_an_interval_is_kept_in_one_group() -> None:
    from torch import nn

    from mechaudit.model_view import ModelView
    from mechaudit.techniques.read_vectors import bootstrap_groups, bootstrap_plan

    model = nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768), nn.Linear(768, 768), nn.Linear(768, 2))
    view = ModelView.discover(model, torch.randn(2, 768))
    groups = {layer.name: bootstrap_groups(view, layer, 2048, groups=16) for layer in view.hidden_layers}
    # 20 resamples of two eigendecompositions (3,072 and 768 wide) exceed the budget: no interval, so one group
    assert bootstrap_plan(3072, 768, 2048) == (1, 0) and groups["0"] == groups["2"] == 1
    assert bootstrap_plan(768, 768, 2048) == (16, 20) and groups["3"] == 16


def test_a_covariance_merged_into_one_group_merges_its_partner(monkeypatch) -> None:
    from mechaudit.techniques import read_vectors
    from mechaudit.techniques.read_vectors import GroupedCovariance, LayerCovariances

    monkeypatch.setattr(read_vectors, "GROUP_BYTES", 100_000)  # 16 groups of 16 + 16 wide; not of 40 + 16 wide
    g = torch.Generator().manual_seed(0)
    given, read = torch.randn(32, 16, generator=g), torch.randn(32, 40, generator=g)
    record = LayerCovariances(GroupedCovariance(16), GroupedCovariance(16))
    record.given.add(given, 0, 32)
    assert len(record.given.parts) == 16  # the output's width is not known yet
    record.read.add(read, 0, 32)
    assert len(record.read.parts) == len(record.given.parts) == 1
    assert torch.allclose(record.given.covariance, torch.cov(given.double().T))
    assert torch.allclose(record.read.covariance, torch.cov(read.double().T))


def test_the_cka_interval_covers_the_population_cka() -> None:
    """Monte-Carlo coverage against a known truth: y = x A + noise with Gaussian x, whose population CKA is
    ``||A||² / (sqrt(d) ||A'A + I||)`` (0.50 here). Debiased CKA at 128 samples averages 0.50 (biased: 0.56); the
    resamples, the copies' pairs left out, centre on the estimate (mean shift under 0.001) and the interval held the
    population value in 97 of 100 datasets (benchmarks/cka_bias.py)."""
    d, n, datasets = 20, 128, 100
    rng = np.random.default_rng(1)
    a = rng.normal(size=(d, d)) * 0.3
    population = float((a ** 2).sum() / (np.sqrt(d) * np.linalg.norm(a.T @ a + np.eye(d))))
    covered = 0
    for seed in range(datasets):
        x = torch.from_numpy(rng.normal(size=(n, d)))
        y = x @ torch.from_numpy(a) + torch.from_numpy(rng.normal(size=(n, d)))
        interval = cka_interval(gram(x), gram(y), seed=seed)
        covered += interval.low <= population <= interval.high
    assert 0.88 <= covered / datasets <= 0.99


@pytest.mark.slow
def test_the_grouped_collapse_interval_covers_the_collapse_expected_at_its_samples(monkeypatch) -> None:
    """Monte-Carlo coverage of D104's interval over 16 groups of samples, with the 20 resamples (normal interval)
    that a layer wider than about 170 units gets: the truth is the collapse expected at these 64 samples (its mean
    over 400 other draws; effective rank from a sample covariance is biased, so not the population collapse)."""
    from mechaudit.checks import dimensionality
    from mechaudit.techniques import read_vectors
    from mechaudit.techniques.dimensionality import spectrum_of_covariance
    from mechaudit.techniques.read_vectors import GroupedCovariance, LayerCovariances

    monkeypatch.setattr(read_vectors, "RESAMPLE_OPERATIONS", 1.0)  # the fewest resamples: 20
    rng = np.random.default_rng(2)
    mixing = rng.normal(size=(16, 3)) @ np.diag([1.0, 0.3, 0.3]) @ rng.normal(size=(3, 16))

    def draw(n: int = 64) -> LayerCovariances:
        x = rng.normal(size=(n, 16))
        record = LayerCovariances(GroupedCovariance(16), GroupedCovariance(16))
        record.given.add(torch.from_numpy(x), 0, n)
        record.read.add(torch.from_numpy(x @ mixing + 0.05 * rng.normal(size=(n, 16))), 0, n)
        return record

    def collapse(record: LayerCovariances) -> float:
        read = spectrum_of_covariance(record.read.covariance)
        live = min(read.live_units, record.read.count - 1)
        return dimensionality.collapse_of(read.effective_rank,
                                          min(live, spectrum_of_covariance(record.given.covariance).effective_rank))

    expected = float(np.mean([collapse(draw()) for _ in range(400)]))
    covered = 0
    for seed in range(100):
        record = draw()
        interval = dimensionality._collapse_interval(record, collapse(record), seed)
        assert "normal bootstrap" in interval.method and "20 resamples" in interval.method
        covered += interval.low <= expected <= interval.high
    assert 0.88 <= covered / 100 <= 0.99
