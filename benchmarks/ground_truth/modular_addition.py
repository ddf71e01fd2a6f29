"""An algorithmic task, modular addition (a + b mod P), trained in seconds (L202: which neurons matter).

An MLP reads one-hot ``a`` and ``b`` (2P inputs), has ``HIDDEN`` ReLU neurons and P logits, trained full-batch on
every pair until it is exact; it solves the task with Fourier features (each neuron's input weights are close to
a cosine of one frequency: the share of their spectrum at the strongest frequency is printed as ``fourier``).
The control twin is trained on the same inputs with shuffled labels (memorisation, no algorithm). Truth, from
each model itself: the exact accuracy drop when one neuron is replaced by its mean over all pairs (after the
ReLU, the value the next layer reads), neuron by neuron; the true critical neurons are those whose drop is above
L202's threshold. Measures: the AUROC of L202's drops against the true critical set, and the largest absolute
difference between L202's drop and the true drop over the neurons L202 reports. R304 (behaviour: the label's
logit) against the same truth: the largest absolute difference between its share of the behaviour lost per neuron
and that of the exact post-ReLU mean ablation (``true_losses``), over every neuron.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mechaudit.api import audit

from .table import Row, Verdict, auroc, findings, rule_status

P, HIDDEN = 17, 16


class ModularMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * P, HIDDEN)
        self.out = nn.Linear(HIDDEN, P)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc1(x)))


def pairs() -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    return torch.cat([F.one_hot(a, P), F.one_hot(b, P)], 1).float(), (a + b) % P


def trained(shuffled: bool, seed: int = 0, steps: int = 1200) -> ModularMLP:
    inputs, labels = pairs()
    if shuffled:
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 1))]
    torch.manual_seed(seed)
    model = ModularMLP()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-2, weight_decay=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def true_drops(model: ModularMLP, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy drop when each neuron (after its ReLU) is replaced by its mean over the inputs."""
    hidden = torch.relu(model.fc1(inputs))
    base = (model.out(hidden).argmax(1) == labels).float().mean()
    drops = torch.zeros(HIDDEN)
    for unit in range(HIDDEN):
        ablated = hidden.clone()
        ablated[:, unit] = hidden[:, unit].mean()
        drops[unit] = base - (model.out(ablated).argmax(1) == labels).float().mean()
    return drops


@torch.no_grad()
def true_losses(model: ModularMLP, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per neuron, the share of the label's logit lost when it alone (after its ReLU) is replaced by its mean over
    the inputs, per sample as R304 measures it: E|m(without u) - m| / E|m(all neurons at their mean) - m|."""
    hidden = torch.relu(model.fc1(inputs))
    means = hidden.mean(0)

    def logit(ablate: list[int]) -> torch.Tensor:
        ablated = hidden.clone()
        ablated[:, ablate] = means[ablate]
        return model.out(ablated).gather(1, labels.view(-1, 1)).squeeze(1)
    intact = logit([])
    span = (logit(list(range(HIDDEN))) - intact).abs().mean()
    return torch.stack([(logit([u]) - intact).abs().mean() / span for u in range(HIDDEN)])


def r304_error(model: ModularMLP, inputs: torch.Tensor, labels: torch.Tensor, seed: int) -> dict:
    """R304's verdict and the largest |its loss - the true loss| over every neuron (all of them candidates)."""
    result = audit(model, inputs, labels=labels, select=["R304"], seed=seed, behaviour={"kind": "label_logit"},
                   rules={"R304": {"candidates": HIDDEN}})
    reported = {row["component"]: row["behaviour_lost"] for f in findings(result, "R304", "behaviour_lost")
                for row in f.evidence.get("units") or []}
    truth = true_losses(model, inputs, labels)
    critical = bool((truth > 0.5).any())
    errors = [abs(reported[f"fc1:u{u}"] - float(truth[u])) for u in range(HIDDEN) if f"fc1:u{u}" in reported]
    return {"status": rule_status(result, "R304"), "expected": "fail" if critical else "pass",
            "error": max(errors) if len(errors) == HIDDEN else None}


def fourier_share(model: ModularMLP) -> float:
    """Mean over neurons of the share of their ``a``-weights' spectrum (constant term removed) at its peak."""
    spectrum = torch.fft.rfft(model.fc1.weight.detach()[:, :P], dim=1).abs()[:, 1:] ** 2
    return float((spectrum.amax(1) / spectrum.sum(1)).mean())


def measure(shuffled: bool, seed: int) -> dict:
    model = trained(shuffled, seed)
    inputs, labels = pairs()
    if shuffled:
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 1))]
    result = audit(model, inputs, labels=labels, select=["L202"], seed=seed, rules={"L202": {"modes": "mean"}})
    reported = {f.location.component: f.value for f in findings(result, "L202", "accuracy_drop")
                if f.location.component.startswith("fc1:")}
    for f in findings(result, "L202", "accuracy_drop"):
        for row in f.evidence.get("top_units") or []:
            reported.setdefault(row["unit"], row["mean_drop"])
    threshold = next((f.threshold for f in findings(result, "L202", "accuracy_drop") if f.threshold), 0.1)
    truth = true_drops(model, inputs, labels)
    units = [f"fc1:u{u}" for u in range(HIDDEN)]
    critical = [bool(truth[u] > threshold) for u in range(HIDDEN)]
    errors = [abs(reported[name] - float(truth[u])) for u, name in enumerate(units) if name in reported]
    return {"status": rule_status(result, "L202"), "expected": "fail" if any(critical) else "pass",
            "auroc": auroc(critical, [reported.get(name, 0.0) for name in units]),
            "error": max(errors) if errors else None, "fourier": fourier_share(model),
            "r304": r304_error(model, inputs, labels, seed)}


def rows(quick: bool = False, seed: int = 0) -> list[Row]:
    planted, control = measure(False, seed), measure(True, seed)
    control_verdict = Verdict(control["status"], control["expected"])
    planted_verdict = Verdict(planted["status"], planted["expected"])
    name = f"MLP, a + b mod {P}"
    return [Row("algorithmic", name, "L202", "max |drop - true drop| (reported neurons)", planted["error"],
                control_verdict, planted_verdict),
            Row("algorithmic", name, "L202", "neuron AUROC vs true critical set", planted["auroc"],
                control_verdict, planted_verdict),
            Row("algorithmic", name, "R304", "max |loss - true post-ReLU loss| (all neurons)", planted["r304"]["error"],
                Verdict(control["r304"]["status"], control["r304"]["expected"]),
                Verdict(planted["r304"]["status"], planted["r304"]["expected"])),
            Row("algorithmic", name, "-", f"Fourier share of neuron weights (control {control['fourier']:.2f})",
                planted["fourier"], None, None)]
