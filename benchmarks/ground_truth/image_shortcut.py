"""An image shortcut (L201 on a watermark, R303) on the embedded ``digits`` example and its control twin.

``digits`` was trained with a 2x2 watermark on every image of class 7; ``digits-control`` with the watermark on a
random half of every class. Truth, from each model itself: the share of audit images whose prediction changes
when the watermark patch is set to 0 (the intervention L201 documents, on every image), and the model relies on
the watermark when that share is above L201's own threshold.
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from mechaudit.api import audit
from mechaudit.examples import EXAMPLES
from mechaudit.examples.digits.model import build

from .table import Row, Verdict, findings, rule_status

RULES = ("L201", "R303")


def load(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    folder = EXAMPLES[name].spec.parent
    model = build()
    model.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
    with np.load(folder / "audit_data.npz") as arrays:
        data = {key: torch.from_numpy(arrays[key]) for key in ("inputs", "labels", "watermark_mask")}
    return model.eval(), data


@torch.no_grad()
def true_flip_rate(model: torch.nn.Module, inputs: torch.Tensor, mask: torch.Tensor) -> float:
    return float((model(inputs * (1 - mask)).argmax(1) != model(inputs).argmax(1)).float().mean())


def measure(name: str, seed: int = 0) -> dict:
    model, data = load(name)
    result = audit(model, data["inputs"], labels=data["labels"], masks={"watermark": data["watermark_mask"]},
                   behaviour={"kind": "class_logit", "target": "7"}, select=list(RULES), seed=seed)
    (l201,) = findings(result, "L201", "flip_rate")
    truth = true_flip_rate(model, data["inputs"], data["watermark_mask"])
    threshold = l201.threshold if l201.threshold is not None else 0.05
    return {"truth": truth, "used": truth > threshold, "flip_rate": l201.value,
            "statuses": {rule: rule_status(result, rule) for rule in RULES}}


def rows(quick: bool = False, seed: int = 0) -> list[Row]:
    planted, control = measure("digits", seed), measure("digits-control", seed)
    out = []
    for rule in RULES:
        value, metric = (abs(planted["flip_rate"] - planted["truth"]), "|flip rate - true flip rate|") \
            if rule == "L201" else (planted["truth"], "true flip rate")
        out.append(Row("image shortcut", "digits (watermark)", rule, metric, value,
                       Verdict(control["statuses"][rule], "fail" if control["used"] else "pass"),
                       Verdict(planted["statuses"][rule], "fail" if planted["used"] else "pass")))
    return out
