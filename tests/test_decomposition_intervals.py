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
from mechaudit.techniques.coactivation import coactivation_graph, correlation, modularity


def _holds_its_value(finding) -> None:
    assert finding.interval is not None and "bootstrap" in finding.interval["method"]
    assert finding.interval["low"] <= finding.value <= finding.interval["high"]


def test_the_cka_bootstrap_equals_recomputing_cka_on_a_resample_and_is_centred_on_the_estimate(monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 12, generator=g)
    y = x @ torch.randn(12, 6, generator=g) + 2 * torch.randn(120, 6, generator=g)
    index = np.random.default_rng(1).integers(0, 120, 120)
    seen = []

    def one_resample(statistic, n, estimate, **kwargs):
        seen.append(statistic(index))
        return None

    from mechaudit.techniques import cka
    monkeypatch.setattr(cka, "bootstrap_centred", one_resample)
    cka_interval(gram(x), gram(y))
    assert seen[0] == pytest.approx(linear_cka(x[index], y[index]), abs=1e-9)  # duplicates included
    monkeypatch.undo()
    interval = cka_interval(gram(x), gram(y))
    assert interval.low < linear_cka(x, y) < interval.high


def _seeded(build):
    torch.manual_seed(0)  # the models' other layers take PyTorch's default initialisation
    return build()


def test_d106_cka_near_its_limit_is_uncertain_and_far_from_it_certain() -> None:
    import json

    g = torch.Generator().manual_seed(1)
    first = torch.randn(16, 16, generator=g)
    rotation = torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    noise = torch.randn(16, 16, generator=g)
    result = mechaudit.audit(TwoLayers(first, rotation + 0.08 * noise, relu=False), _data(60), select=["D106"])
    near = result.findings[0]
    far = mechaudit.audit(TwoLayers(first, rotation + 0.3 * noise, relu=False), _data(60),
                          select=["D106"]).findings[0]
    for finding in (near, far):
        _holds_its_value(finding)
    # a rotation blurred by a little noise: CKA 0.956, interval about 0.946..0.966 around the 0.95 limit
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
        _holds_its_value(finding)
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
        _holds_its_value(finding)
    # the second layer's weights moved by 1.4x noise: drift 0.175, interval about 0.13..0.23 around the 0.2 limit
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
        _holds_its_value(finding)
    # collapse 0.68 of the three-direction layer, interval about 0.59..0.71 around the 0.7 limit
    assert near[1].status == "pass" and near[1].confidence == "uncertain" and "uncertain" in near[1].message
    assert near[0].confidence == "certain" and near[0].status == "pass"  # the full-rank layer before it
    assert far[1].status == "fail" and far[1].confidence == "certain"


def test_modularity_by_matrices_equals_networkx() -> None:
    import networkx as nx

    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 3, generator=g).repeat_interleave(4, 1) + torch.randn(200, 12, generator=g)
    r = correlation(x)
    clusters = [[0, 1, 2, 3, 5], [4, 6, 7], [8, 9, 10, 11]]
    graph = coactivation_graph(r, list(range(12)), 0.3)
    expected = nx.community.modularity(graph, [set(c) for c in clusters], weight="weight")
    assert modularity(r, 0.3, clusters) == pytest.approx(expected, abs=1e-12)


def _groups(noise: float) -> torch.Tensor:
    """Two groups of six units, each sharing a source, under independent noise ``noise`` times its size."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(300, 2, generator=g).repeat_interleave(6, 1) + noise * torch.randn(300, 12, generator=g)


def test_d105_modularity_near_the_correlation_floor_is_uncertain_and_clear_groups_certain() -> None:
    near = mechaudit.audit(Passthrough(12), _groups(1.6), select=["D105"]).findings[0]
    clear = mechaudit.audit(Passthrough(12), _groups(1.2), select=["D105"]).findings[0]
    for finding in (near, clear):
        assert finding.metric == "unstructured" and "300 samples" in finding.interval["method"]
        _holds_its_value(finding)
    # modularity 0.28 (passes), but some resamples find no module at all: 1 - modularity 0.45..1.0 straddles 0.9
    assert near.status == "pass" and near.confidence == "uncertain"
    assert clear.status == "pass" and clear.confidence == "certain" and clear.interval["high"] < 0.9
