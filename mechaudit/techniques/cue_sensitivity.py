"""Cue sensitivity: hidden conditional behaviour, localised to the components that carry it.

Given prompt pairs that differ only in a cue the output must not depend on (``this conversation is monitored``
versus not, a swapped name), the technique

1. measures the total effect of the cue: how often the prediction flips, and the mean change of the log-probability
   of the cue-free prediction, ``m = log p(y_without)``;
2. scores every component (unit, channel, head) by attribution patching between the two runs, ``|(a_with -
   a_without) . dm/da|``, which is non-zero only for components whose activation depends on the cue *and* whose
   change moves the output (Nanda 2023; Syed et al. 2023), with the edges between them. The gradient is taken in
   both runs and the scores added: a unit the cue switches on from below a ReLU's kink has no gradient in the
   cue-free run;
3. confirms the ranking exactly (screen, then confirm: AtP*, Kramar et al. 2024): each component is patched alone
   (its cued activation written into the cue-free run) and the mean change of ``m`` measured: every component when
   there are at most :data:`~.atp.SCREEN_ABOVE` (or ``exhaustive``), else the ``top_k`` by attribution and a seeded
   random ``calibration`` sample of the others, whose agreement with the attribution is reported;
4. takes the pathway, the fewest of those components, by exact change, covering ``coverage`` of their total (at
   most ``top_k``), and measures exactly what flows through it: the cue-free prompts are run with only the
   pathway's activations replaced by their cued values (activation patching). The flip rate of that run is the
   output's dependence on the cue through the pathway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .. import deadline
from ..activations import batches, hooked
from ..model_view import ModelView, from_units_view, installed, units_view
from . import atp
from .circuits import CircuitScores, NoTimeToScore, edge_attribution, logits_at

Confirm = Callable[[atp.Selection, Callable[[list[int]], object], float], atp.Selection]
"""``confirm(selection, run, estimate)``: run the exact check ``run`` on chunks of ``selection``'s components, the
most important first, and return the selection of those that ran (the rule's: bounded by its time budget, with
``estimate`` the seconds one check is expected to take before one has run)."""


def confirm_all(selection: atp.Selection, run: Callable[[list[int]], object], estimate: float = 0.0) -> atp.Selection:
    """Every component of ``selection``, at once (no time budget)."""
    run(selection.checked)
    return selection


#: Unpatched candidates named in the evidence when the time budget cut the exact patches (the count is given too).
UNCHECKED_SHOWN = 10


@dataclass
class CueResult:
    """What the cue does to the output, in total and through the pathway of components that carry it."""

    samples: int
    total_flip_rate: float
    total_change: float                 # mean |log p(y_without | with cue) - log p(y_without | without cue)|
    pathway: list[str]
    pathway_flip_rate: float
    pathway_change: float               # the same change, with only the pathway carrying the cue
    scores: CircuitScores
    #: Per pair, whether the prediction flips with only the pathway carrying the cue (for its interval).
    pathway_flips: torch.Tensor | None = None
    #: The change (as ``total_change``) with one component alone carrying the cue, per component patched exactly.
    exact_changes: dict[str, float] | None = None
    #: How the exactly patched components were chosen and how the attribution agrees with them (evidence).
    screen: dict | None = None
    #: Top candidates (or, unscreened, components) the time budget left unpatched: the pathway may miss them.
    unchecked: int = 0

    @property
    def pathway_share(self) -> float:
        """Share of the total change that the pathway alone reproduces."""
        return self.pathway_change / self.total_change if self.total_change > 1e-12 else 0.0


def cue_sensitivity(view: ModelView, with_cue: torch.Tensor, without_cue: torch.Tensor, position: int = -1,
                    top_k: int = 10, coverage: float = 0.8, batch_size: int = 256,
                    device: torch.device | None = None, exhaustive: bool = False, calibration: int = 32,
                    seed: int = 0, confirm: Confirm = confirm_all) -> CueResult:
    """Measure and localise the output's dependence on the cue (see the module docstring). ``confirm`` runs the
    exact patches (the rule's: the screen's top first, within its time budget); the candidates it leaves out are
    counted in :attr:`CueResult.unchecked` and named in the screen's evidence."""
    device = device or torch.device("cpu")
    without_logits = _log_probs(view, without_cue, batch_size, device, position)
    targets = without_logits.argmax(-1)
    with_logits = _log_probs(view, with_cue, batch_size, device, position)

    def log_p(outputs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits_at(outputs, position).float(), -1).gather(1, chosen.view(-1, 1)).squeeze(1)

    began = deadline.clock()
    forward = edge_attribution(view, without_cue, targets, log_p, reference=with_cue, batch_size=batch_size,
                               device=device, what="edge-scoring batches (cue-free run's gradient)")
    kept = forward.samples  # fewer than all when the time budget cut the first scoring: the second scores the same
    # the first direction's time per batch (its set-up included: an over-estimate) lets the second's first batch,
    # and then the first exact patch, start only when it fits
    per_batch = (deadline.clock() - began) / max(1, math.ceil(kept / batch_size))
    try:
        backward = edge_attribution(view, with_cue[:kept], targets[:kept], log_p, reference=without_cue[:kept],
                                    batch_size=batch_size, device=device, seconds_per_batch=per_batch,
                                    what="edge-scoring batches (cued run's gradient)")
    except NoTimeToScore:  # the time budget ran out (a cut, recorded): the first direction's scores stand alone
        backward = None
    # a second direction cut short is summed with the first over more samples: its batches are the first ones of
    # the same pairs, so the scores stay sums over samples, of both directions on the first, of one on the rest
    scores = _summed(forward, backward) if backward is not None else forward
    hidden = {layer.name for layer in view.hidden_layers}
    ranked = [n for n in sorted(scores.nodes, key=lambda n: -scores.nodes[n]) if scores.node_layer[n] in hidden]
    attribution = torch.tensor([scores.nodes[n] for n in ranked], dtype=torch.float64)
    screened = len(ranked) > atp.SCREEN_ABOVE and not exhaustive
    planned = atp.select(attribution, top_k, calibration, seed) if screened else atp.everything(len(ranked))
    rows = torch.arange(len(targets))
    base = without_logits[rows, targets]
    exact: dict[int, float] = {}

    def run(chunk: list[int]) -> None:
        exact.update({i: _patched_change(view, without_cue, with_cue, [ranked[i]], targets, base, batch_size,
                                         device, position) for i in chunk})
    # an exact patch runs every pair twice forward: about half a scored batch per batch of pairs (a forward and a
    # backward pass, of about two forwards, and the reference's forward)
    selection = confirm(planned, run, per_batch / 2 * math.ceil(len(targets) / batch_size))
    unchecked = [i for i in planned.top if i not in exact]
    # the pathway: by exact change among the components patched; with none patched (the time budget ran out first),
    # by attribution, so that what flows through the screen's best candidates is still measured exactly
    change = exact if exact else {i: float(attribution[i]) for i in planned.top}
    by_change = sorted(change, key=lambda i: -change[i])
    total = sum(max(change[i], 0.0) for i in by_change)
    pathway: list[str] = []
    covered = 0.0
    for i in by_change[:top_k]:
        if change[i] <= 0 or covered >= coverage * total:
            break
        pathway.append(ranked[i])
        covered += change[i]
    screen = _screen_evidence(selection, attribution, exact, ranked, screened, exhaustive)
    if len(selection.checked) < len(planned.checked):
        screen["method"] += (f"; cut by the time budget: {len(selection.checked)} of the {len(planned.checked)} "
                             "planned patched")
    if unchecked:
        # as the pathway rows' scores: the attribution summed over both directions' pairs, divided by their count
        screen["unchecked_candidates"] = [
            {"component": ranked[i], "attribution_estimate": float(attribution[i] / scores.samples)}
            for i in unchecked[:UNCHECKED_SHOWN]]
        screen["unchecked_count"] = len(unchecked)
        if not exact:
            screen["pathway_chosen_by"] = "attribution (no component was patched alone before the time ran out)"
    patched_logits = _log_probs(view, without_cue, batch_size, device, position,
                                patch=(pathway, with_cue)) if pathway else without_logits
    return CueResult(
        samples=len(targets),
        total_flip_rate=float((with_logits.argmax(-1) != targets).float().mean()),
        total_change=float((with_logits[rows, targets] - base).abs().mean()),
        pathway=pathway,
        pathway_flip_rate=float((patched_logits.argmax(-1) != targets).float().mean()),
        pathway_change=float((patched_logits[rows, targets] - base).abs().mean()),
        scores=scores,
        pathway_flips=(patched_logits.argmax(-1) != targets).cpu(),
        exact_changes={ranked[i]: value for i, value in exact.items()},
        screen=screen,
        unchecked=len(unchecked),
    )


def _patched_change(view: ModelView, without_cue: torch.Tensor, with_cue: torch.Tensor, nodes: list[str],
                    targets: torch.Tensor, base: torch.Tensor, batch_size: int, device: torch.device,
                    position: int) -> float:
    """Mean |change| of log p(cue-free prediction) with only ``nodes`` carrying the cue (exact patching)."""
    logits = _log_probs(view, without_cue, batch_size, device, position, patch=(nodes, with_cue))
    return float((logits[torch.arange(len(targets)), targets] - base).abs().mean())


def _screen_evidence(selection: atp.Selection, attribution: torch.Tensor, exact: dict[int, float], ranked: list[str],
                     screened: bool, exhaustive: bool) -> dict:
    if screened:
        method = "attribution patching (AtP*) in both directions between each pair's two runs"
        return atp.report(selection, attribution, exact, ranked, method).to_evidence()
    why = "exhaustive = true" if exhaustive else f"at most {atp.SCREEN_ABOVE} components"
    return {"method": f"exact patching of every component alone ({why})", "scored": len(ranked),
            "checked_exactly": len(selection.checked), "calibration": 0,
            "spearman": atp.report(selection, attribution, exact, ranked, "").spearman}


def _summed(a: CircuitScores, b: CircuitScores) -> CircuitScores:
    """Attribution patching in both directions, added: a unit that is off (at a ReLU kink) in one run has no
    gradient there, so one direction alone can miss a component that only the cue switches on."""
    return replace(a, nodes={n: a.nodes[n] + b.nodes.get(n, 0.0) for n in a.nodes},
                   edges=a.edges + b.edges, samples=a.samples + b.samples)


def _log_probs(view: ModelView, inputs: torch.Tensor, batch_size: int, device: torch.device, position: int,
               patch: tuple[list[str], torch.Tensor] | None = None) -> torch.Tensor:
    """Log-probabilities at ``position`` (CPU); with ``patch = (nodes, source)``, each batch runs with those
    nodes' activations taken from the same samples of ``source``."""
    parts = []
    for start, batch in batches(inputs, batch_size, device):
        with torch.no_grad():
            if patch is None:
                outputs = view.model(batch)
            else:
                nodes, source = patch
                with patched(view, nodes, source[start:start + batch.shape[0]].to(device)):
                    outputs = view.model(batch)
        parts.append(F.log_softmax(logits_at(outputs, position).float(), -1).cpu())
    return torch.cat(parts)


@contextmanager
def patched(view: ModelView, nodes: list[str], source: torch.Tensor) -> Iterator[None]:
    """Within the context, each node's activation is replaced by its value on ``source`` (same batch size):
    activation patching of a set of components."""
    by_layer: dict[str, list[int]] = {}
    for address in nodes:
        layer, unit = view.resolve(address)
        by_layer.setdefault(layer.name, []).append(unit)
    layers = [view.layer(name) for name in by_layer]
    recorded: dict[str, torch.Tensor] = {}
    with hooked(view, layers, lambda layer, output: recorded.__setitem__(layer.name, units_view(output, layer))):
        view.model(source)
    hooks = []
    for layer in layers:
        index = torch.tensor(sorted(by_layer[layer.name]), device=source.device)

        def replace(output: torch.Tensor, _args: tuple, layer=layer, index=index) -> torch.Tensor:
            units = units_view(output, layer).clone()
            units[:, index] = recorded[layer.name][:, index].to(units.dtype)
            return from_units_view(units, output, layer)
        hooks.append((layer, replace))
    with installed(view.hook(layer, fn) for layer, fn in hooks):
        yield
