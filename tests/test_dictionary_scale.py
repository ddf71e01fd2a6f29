"""D103 at scale: bounded activation buffers (in memory or on disk), a bounded training budget, and intervals of
its metrics over training seeds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from fixtures.superposition import Passthrough, planted_dictionary_data

import mechaudit
from mechaudit.techniques.activation_buffer import fill_buffer
from mechaudit.techniques.sae import SAEConfig, tensor_stream, train_dictionary
from mechaudit.techniques.sae_sweep import choose_size, training_cost


def _vectors(n: int = 1000, width: int = 8) -> torch.Tensor:
    return torch.arange(n * width, dtype=torch.float32).reshape(n, width)


def test_a_buffer_keeps_a_bounded_uniform_subset_in_memory_or_on_disk() -> None:
    vectors = _vectors()
    in_memory = fill_buffer(tensor_stream(vectors, 96), 1000, 8, max_values=400 * 8, memory_values=10**9, seed=1)
    with fill_buffer(tensor_stream(vectors, 96), 1000, 8, max_values=400 * 8, memory_values=100, seed=1) as on_disk:
        assert (in_memory.count, on_disk.count) == (400, 400) and on_disk.on_disk and not in_memory.on_disk
        stored = torch.cat(list(on_disk.stream(64)()))
        files = list(Path(on_disk._directory.name).iterdir())
        assert files and files[0].stat().st_size == 400 * 8 * 4
    assert torch.equal(stored, in_memory.as_tensor())                      # the same vectors, the same order
    rows = (stored[:, 0] / 8).long()
    assert len(set(rows.tolist())) == 400 and torch.equal(stored, vectors[rows])  # distinct input vectors
    assert not rows.diff().ge(0).all()                                         # shuffled, not in input order
    assert not files[0].exists()                                                # the disk buffer is removed
    everything = fill_buffer(tensor_stream(vectors, 96), 1000, 8, max_values=10**9, memory_values=10**9)
    assert everything.count == 1000 and everything.describe()["offered"] == 1000


def test_a_buffer_refuses_a_stream_that_does_not_hold_what_was_announced() -> None:
    with pytest.raises(ValueError, match="announced"):
        fill_buffer(tensor_stream(_vectors(10)), 20, 8, max_values=10**6, memory_values=10**6)


def test_a_dictionary_trained_on_a_disk_buffer_equals_one_trained_in_memory() -> None:
    vectors, _ = planted_dictionary_data(dims=8, directions=16, n=600)
    config = SAEConfig(features=16, k=2, steps=30, batch=64)
    memory = fill_buffer(tensor_stream(vectors), 600, 8, 10**6, 10**6)
    with fill_buffer(tensor_stream(vectors), 600, 8, 10**6, 10) as disk:
        on_disk = train_dictionary(disk.stream(), config)
    assert torch.equal(train_dictionary(memory.stream(), config).decoder, on_disk.decoder)


def test_the_sweep_stays_within_its_budget_and_says_so() -> None:
    vectors, _ = planted_dictionary_data(dims=8, directions=16, n=800)
    base = SAEConfig(features=16, k=2, steps=20, batch=64)
    kwargs = dict(fvu_target=0.3, min_agreement=0.8, k_ref=1, ks=(1, 2, 4), expansions=(2, 4, 8))
    free = choose_size(vectors, base, **kwargs)
    one_pair = 2 * training_cost(2 * 8, 8, 64, 20)
    bounded = choose_size(vectors, base, budget=training_cost(2 * 8, 8, 64, 20) + one_pair, **kwargs)
    assert bounded.cost <= training_cost(2 * 8, 8, 64, 20) + one_pair < free.cost
    assert "budget" in bounded.reason and "budget" not in free.reason
    # fewer steps first (down to sweep_steps here), then smaller batches: more candidates fit, fewer than unbounded
    assert bounded.batch == 32 < free.batch == 64 and bounded.steps == free.steps == 20
    assert [p.stage for p in bounded.points][:2] == ["size", "sparsity"] and len(bounded.points) < len(free.points)


def _within(value: float, interval: dict) -> bool:
    return interval["low"] - 1e-6 <= value <= interval["high"] + 1e-6  # the interval's ends are rounded to 1e-6


def test_d103_reports_intervals_over_seeds_and_its_budget() -> None:
    vectors, _ = planted_dictionary_data(dims=8, directions=16, n=600)
    labels = (vectors[:, 0] > vectors[:, 1]).long()
    result = mechaudit.audit(Passthrough(8), vectors, labels=labels, select=["D103"],
                             rules={"D103": {"expansion": 2, "k": 2, "steps": 150, "seeds": 3, "budget_gmac": 0.05}})
    by_metric = {f.metric: f for f in result.findings}
    fvu = by_metric["fvu"]
    assert len(fvu.evidence["fvu_per_seed"]) == 3 and len(fvu.evidence["seed_agreement_per_pair"]) == 3
    assert _within(fvu.value, fvu.interval) and fvu.interval["level"] == 0.5
    assert "3 training seeds" in fvu.interval["method"]
    instability = by_metric["instability"]
    assert _within(instability.value, instability.interval)
    assert by_metric["purity_gap"].interval is not None
    budget = fvu.evidence["budget"]
    assert budget["steps"] == 100 < budget["steps_asked"]          # cut by the budget, down to the floor
    assert budget["narrow_layer_factor"] == 3  # 8 units: steps raised 3 times (at most 48 / 8) before the cut
    assert math.isclose(budget["gmac_budget"], 0.05) and fvu.evidence["buffer"]["storage"] == "memory"


def test_d103_keeps_a_wide_layer_within_a_tiny_budget_and_says_what_it_skipped() -> None:
    """The floors (50 steps per sweep candidate, 100 per kept dictionary) used to apply whatever the budget; a 256-wide
    layer at 2 GMAC cannot pay for them: the sweep is skipped, the kept dictionaries train on fewer, smaller steps,
    and the multiply-adds spent (counted as the rule counts them) stay within the budget."""
    vectors, _ = planted_dictionary_data(dims=256, directions=512, n=300)
    result = mechaudit.audit(Passthrough(256), vectors, select=["D103"], rules={"D103": {"budget_gmac": 2.0}})
    evidence = next(f for f in result.findings if f.metric == "fvu").evidence
    budget, choice = evidence["budget"], evidence["size_choice"]
    assert "sweep skipped" in choice["reason"] and choice["candidates"] == [] and choice["expansion"] == 2
    spent = budget["seeds"] * training_cost(evidence["features"], 256, budget["batch"], budget["steps"])
    assert spent <= 2e9 and math.isclose(budget["gmac_spent"], round(spent / 1e9, 2))
    assert budget["steps"] < 100 and "undertrained" in budget["reduced"]
