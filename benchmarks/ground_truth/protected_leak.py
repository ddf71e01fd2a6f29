"""A protected column leaking into the label, swept in strength (L201 flip rate, R303, L205).

Data and models from ``tests/fixtures/localization_toys`` (``tabular_data``, ``tabular_model``): six features and a
binary ``sex`` column; the label follows x0 + x1 - x2 / 2 + ``strength`` * (sex - 1/2) plus noise. The same MLP is
trained at each strength; strength 0 is the control twin (the column carries no label information). The behaviour
R303 traces is the decision (class 1's logit minus class 0's), as the tabular tests declare it. Truth, from the
trained model itself: the share of audit samples whose prediction changes when ``sex`` is set to its other value
(the exact counterfactual, every sample), and the model uses the column when that share is above L201's threshold.
"""

from __future__ import annotations

import torch
from fixtures.localization_toys import SEX, TABULAR_COLUMNS, tabular_data, tabular_model

from mechaudit.api import audit
from mechaudit.loading import AuditData

from .table import Row, Verdict, findings, rule_status

STRENGTHS = (0.0, 0.5, 1.0, 2.0, 6.0)
QUICK_STRENGTHS = (0.0, 6.0)
RULES = ("L201", "R303", "L205")
BEHAVIOUR = {"kind": "logit_diff", "target": "1", "contrast": "0"}  # the decision, as the tabular tests declare it


def leaky_data(n: int, strength: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return tabular_data(n, strength > 0, seed, strength=strength)


def trained(strength: float) -> torch.nn.Module:
    return tabular_model(strength > 0, strength=strength)


@torch.no_grad()
def true_flip_rate(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    flipped = inputs.clone()
    flipped[:, SEX] = 1 - flipped[:, SEX]
    return float((model(flipped).argmax(1) != model(inputs).argmax(1)).float().mean())


def measure(strength: float, seed: int = 0) -> dict:
    """The audit's verdicts and L201's flip rate beside the true flip rate, for one strength."""
    model = trained(strength)
    inputs, labels = leaky_data(600, strength, seed=1)
    column = torch.zeros(inputs.shape[1])  # R303 reads the column as a region (one mask for every sample)
    column[SEX] = 1.0
    data = AuditData(inputs=inputs, labels=labels, protected={"sex": inputs[:, SEX].long()},
                     protected_columns={"sex": SEX}, feature_names=list(TABULAR_COLUMNS), masks={"sex": column})
    result = audit(model, data, behaviour=BEHAVIOUR, select=list(RULES), seed=seed)
    (l201,) = [f for f in findings(result, "L201", "flip_rate")
               if f.evidence.get("intervention", "").startswith("protected feature")] or [None]
    truth = true_flip_rate(model, inputs)
    threshold = l201.threshold if l201 is not None and l201.threshold is not None else 0.04
    statuses = {rule: rule_status(result, rule) for rule in RULES}
    if l201 is not None:
        statuses["L201"] = l201.status
    return {"strength": strength, "truth": truth, "used": truth > threshold, "statuses": statuses,
            "flip_rate": None if l201 is None else l201.value}


def rows(quick: bool = False, seed: int = 0) -> list[Row]:
    sweep = [measure(strength, seed) for strength in (QUICK_STRENGTHS if quick else STRENGTHS)]
    control, planted = sweep[0], sweep[1:]
    out = []
    for rule in RULES:
        for point in planted:
            value = abs(point["flip_rate"] - point["truth"]) if rule == "L201" and point["flip_rate"] is not None \
                else point["truth"]
            metric = "|flip rate - true flip rate|" if rule == "L201" else "true flip rate"
            control_verdict = Verdict(control["statuses"][rule], "fail" if control["used"] else "pass")
            out.append(Row("protected leak", f"tabular, leak {point['strength']:g}", rule, metric, value,
                           control_verdict, Verdict(point["statuses"][rule], "fail" if point["used"] else "pass")))
    return out
