"""L206 (network dissection): a planted square detector is found and labelled, nothing is found against masks drawn
elsewhere; the semantic dictionary is shared as an artifact and carried in the evidence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.localization_toys import square_detector, square_images

import mechaudit
from mechaudit.loading import AuditData
from mechaudit.techniques import resampled
from mechaudit.techniques.dissection import auroc_scores, iou_counts
from mechaudit.techniques.uncertainty import bootstrap_mean


def _audit(masks: torch.Tensor, images: torch.Tensor, **params):
    model = square_detector()
    labels = model(images).argmax(-1).detach()
    data = AuditData(inputs=images, labels=labels, concepts={"square": (masks.flatten(1).amax(1) > 0).long()},
                     concept_masks={"square": masks[:, 0]})
    data.concepts["bright"] = (images.flatten(1).amax(1) > 0.5).long()  # a per-sample label (AUROC)
    return mechaudit.audit(model, data, select=["L206"], rules={"L206": params})


def test_the_planted_square_detector_is_found_and_labelled() -> None:
    images, masks = square_images()
    (finding,) = _audit(masks, images).findings
    dictionary = {row["component"]: row for row in finding.evidence["semantic_dictionary"]}
    assert dictionary["conv:ch0"]["concept"] == "square" and dictionary["conv:ch0"]["metric"] == "iou"
    assert dictionary["conv:ch0"]["score"] > 0.04
    assert finding.status == "pass" and finding.value == len(dictionary)
    per_concept = {row["concept"]: row for row in finding.evidence["per_concept"]}
    assert per_concept["square"]["best_component"] == "conv:ch0"


def test_masks_drawn_elsewhere_find_no_detector() -> None:
    images, masks = square_images()
    elsewhere = torch.roll(masks, shifts=(6, 6), dims=(2, 3))  # the same squares, displaced off the bright patches
    (finding,) = _audit(elsewhere, images).findings
    assert not [row for row in finding.evidence["semantic_dictionary"] if row["metric"] == "iou"]


def test_iou_and_auroc_scores_of_the_planted_channel() -> None:
    images, masks = square_images()
    maps = square_detector().conv(images).detach()
    intersection, union = iou_counts(maps, {"square": masks[:, 0]})
    iou = intersection.sum(0) / union.sum(0).clamp_min(1)
    assert int(iou[:, 0].argmax()) == 0 and float(iou[0, 0]) > 0.04
    scores, names, _ = auroc_scores(maps.mean((2, 3)), {"bright": (masks.flatten(1).amax(1) > 0).long()})
    assert names == ["bright"] and float(scores[0, 0]) > 0.9


def test_the_semantic_dictionary_is_a_shared_artifact() -> None:
    from mechaudit.checks.dissection import dissection_dictionary
    from mechaudit.engine import prepare
    from mechaudit.examples import example_spec
    from mechaudit.rulebook import load_rulebook
    from mechaudit.spec import load_spec

    context, _ = prepare(load_spec(example_spec("digits")))
    context.rules = tuple(load_rulebook("default").select(("L206",)))
    from mechaudit.checks.dissection import DISSECTION

    entries = dissection_dictionary(context)
    shared = context.shared(DISSECTION, context.rules[0].params)  # computed on first use, then kept
    assert context.shared(DISSECTION, context.rules[0].params) is shared and entries == dissection_dictionary(context)
    labels = {row["component"]: row["concept"] for row in entries}
    assert labels["features.0:ch0"] == "watermark" and labels["features.2:ch8"] == "loop"


def test_scores_carry_intervals_and_a_detector_at_its_threshold_is_uncertain() -> None:
    images, masks = square_images()
    (control,) = _audit(masks, images).findings
    square = next(row for row in control.evidence["semantic_dictionary"] if row["component"] == "conv:ch0")
    assert square["interval"][0] <= square["score"] <= square["interval"][1] and square["uncertain"] is False
    assert control.interval["low"] <= control.value <= control.interval["high"]
    assert control.interval["method"].startswith("range of the per-score 95% intervals")
    uncertain = control.evidence["uncertain_detections"]  # e.g. an AUROC for `bright` near 0.9
    assert ("conv:ch0", "square") not in {(row["component"], row["concept"]) for row in uncertain}
    thresholds = {"iou": 0.04, "auroc": 0.9}
    assert all(row["interval"][0] <= thresholds[row["metric"]] < row["interval"][1] for row in uncertain)
    (planted,) = _audit(masks, images, min_iou=square["score"]).findings  # the threshold at the IoU itself
    assert not [row for row in planted.evidence["semantic_dictionary"] if row["concept"] == "square"]
    near = [row for row in planted.evidence["uncertain_detections"] if row["component"] == "conv:ch0"
            and row["concept"] == "square"]
    assert near and near[0]["uncertain"] is True and near[0]["interval"] == square["interval"]
    assert "[uncertain: " in planted.message


def test_auroc_scores_match_sklearn_and_delong_intervals_cover_them() -> None:
    from sklearn.metrics import roc_auc_score

    generator = torch.Generator().manual_seed(0)
    positives = (torch.rand(40, generator=generator) > 0.5).numpy()
    activations = torch.randn(40, 3, generator=generator) + torch.from_numpy(positives)[:, None].float()
    activations[:10, 2] = 0.0  # ties, as after a ReLU
    scores, names, intervals = auroc_scores(activations, {"c": torch.from_numpy(positives).long()})
    expected = [roc_auc_score(positives, activations[:, unit].numpy()) for unit in range(3)]
    assert names == ["c"] and np.allclose(scores[:, 0].numpy(), expected, atol=1e-6)
    for unit in range(3):
        interval = intervals[(unit, 0)]
        assert interval.low < expected[unit] < interval.high and interval.method.startswith("DeLong")


def test_delong_standard_error_matches_the_bootstrap() -> None:
    from mechaudit.techniques.dissection import delong

    rng = np.random.default_rng(1)
    positives = rng.random(300) < 0.3
    activations = torch.tensor(rng.normal(size=(300, 2)) + positives[:, None])
    _, error = delong(activations, positives)
    for unit in range(2):
        column = activations[:, unit].numpy()
        resamples = []
        for _ in range(250):
            index = rng.integers(0, 300, 300)
            resamples.append(_auroc(positives[index], column[index]))
        assert abs(np.std(resamples) / error[unit] - 1) < 0.15


def _auroc(positives: np.ndarray, values: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(positives, values)


def test_a_rare_concept_value_gets_intervals_for_every_unit_without_resampling() -> None:
    positives = np.zeros(512, dtype=bool)
    positives[:5] = True  # 5 positives of 512: a bootstrap of each AUROC would be needed for every unit
    activations = torch.randn(512, 5000, generator=torch.Generator().manual_seed(0))
    _, _, intervals = auroc_scores(activations, {"c": torch.from_numpy(positives).long()})
    assert len(intervals) == 5000 and all(interval is not None for interval in intervals.values())
    assert "(5 positive)" in intervals[(0, 0)].method


def test_the_detector_count_range_holds_the_count_when_many_scores_sit_below_the_threshold() -> None:
    """50 units at AUROC ~0.85-0.9, none above 0.9: a bootstrap of the count of scores above 0.9 gave 1.5-9, without
    the count (0); the range of the per-score intervals holds it."""
    from mechaudit.checks.dissection import DissectionParams, _Resampled

    rng = np.random.default_rng(0)
    positives = rng.random(512) < 0.5
    activations = torch.tensor(rng.normal(size=(512, 50)) + 1.65 * positives[:, None])
    boot = _Resampled(512, seed=0)
    found = boot.auroc([f"u{i}" for i in range(50)], activations, {"c": torch.from_numpy(positives).long()},
                       DissectionParams().min_auroc)
    count = len({d.component for d in found})
    assert count == 0 and boot.near_misses
    span = boot.detectors_range(found)
    assert span.low <= count <= span.high and span.high == len({d.component for d in boot.near_misses})
    assert span.method.startswith("range")


def test_joint_resamples_give_the_intervals_of_the_one_statistic_bootstrap() -> None:
    values = np.random.default_rng(0).normal(size=(30, 2))
    weights = resampled.counts(resampled.draws(30, seed=3), 30)
    joint = resampled.intervals(resampled.ratio_of_sums(values, np.ones(30), weights), 30)
    for column in range(2):
        alone = bootstrap_mean(values[:, column], seed=3)
        assert joint[column].method == alone.method
        assert (joint[column].low, joint[column].high) == pytest.approx((alone.low, alone.high))


def test_non_finite_resamples_are_counted_and_too_many_give_no_interval() -> None:
    values = np.random.default_rng(0).normal(size=(500, 2))
    values[:10, 0] = np.nan  # 2% of the resamples without a value: kept, and said
    values[:40, 1] = np.inf  # 8%: the interval would describe only the defined resamples
    kept, dropped = resampled.intervals(values, 30)
    assert kept is not None and "(10 without a finite value left out)" in kept.method
    assert dropped is None
