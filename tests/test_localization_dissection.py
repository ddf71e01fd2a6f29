"""L206 (network dissection): a planted square detector is found and labelled, nothing is found against masks drawn
elsewhere; the semantic dictionary is shared as an artifact and carried in the evidence."""

from __future__ import annotations

import torch
from fixtures.localization_toys import square_detector, square_images

import mechaudit
from mechaudit.loading import AuditData
from mechaudit.techniques.dissection import auroc_scores, iou_scores


def _audit(masks: torch.Tensor, images: torch.Tensor):
    model = square_detector()
    labels = model(images).argmax(-1).detach()
    data = AuditData(inputs=images, labels=labels, concepts={"square": (masks.flatten(1).amax(1) > 0).long()},
                     concept_masks={"square": masks[:, 0]})
    data.concepts["bright"] = (images.flatten(1).amax(1) > 0.5).long()  # a per-sample label (AUROC)
    return mechaudit.audit(model, data, select=["L206"])


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
    iou = iou_scores(maps, {"square": masks[:, 0]})
    assert int(iou[:, 0].argmax()) == 0 and float(iou[0, 0]) > 0.04
    scores, names = auroc_scores(maps.mean((2, 3)), {"bright": (masks.flatten(1).amax(1) > 0).long()})
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
