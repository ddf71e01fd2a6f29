"""A second-order screen of patching for a metric that is stationary on the run patched into (e.g. at its maximum).

Attribution patching estimates the effect of patching component ``i`` (activation ``a_i`` replaced by ``a_i'``,
``d_i = a_i' - a_i``) by the first-order term ``g . J d_i`` (``J`` the Jacobian of the model's output ``y`` in the
component, ``g = dm/dy``). Where the metric is stationary in the output on the patched run, ``g = 0`` and that term
vanishes for every component: MiniLM's similarity behaviour, the cosine similarity of a prompt's output to its
paraphrase's, is exactly 1 on the paraphrase run that L207 patches into, so every single-component patch can only
lower it, by a second-order amount. Integrating the gradient along the path of every component moved together
(EAP-IG) then attributes the *joint* patch's effect, ``-d_i . H (sum_j d_j)`` in the quadratic case: each
component's interaction with all others, not its own effect.

This screen estimates each component's own effect to second order in the output,
``g . J d_i + 1/2 (J d_i)^T H (J d_i)`` with ``H`` the metric's Hessian in the output (the term of the output's own
curvature, ``g . J'' [d_i, d_i]``, vanishes with ``g``): the Gauss-Newton approximation, exact to second order at a
stationary point. The quadratic form is estimated for every component at once from ``probes`` random output
directions ``z`` (Rademacher, seeded): ``E[(z . J d_i)((H z) . J d_i)] = (J d_i)^T H (J d_i)`` since ``E[z z^T] = I``
(Hutchinson's trick, applied to ``J^T H J`` restricted to each ``d_i``). Per batch: one forward pass of the patched
run kept for autograd (its output also gives ``g``), one backward pass through the model for ``J^T g``, and per probe
two (``J^T z`` and ``J^T H z``); ``g`` and ``H z`` are derivatives of the metric alone (in the output, not through the
model), taken per chunk of samples and rebuilt per probe, so that memory does not grow with the probes. Per pair, so
nothing cancels across pairs.

Where a layer's units reach the output only through a module that reads them unit by unit after their own
nonlinearity (an MLP's up projection, read by its down projection after the GELU: :func:`patch_sites`), each unit is
moved at that module's input: ``d_i`` is then the exact change of what the reader reads, ``GELU(a_i') - GELU(a_i)``,
and only the rest of the model is linearised. At the up projection's output, ``J d_i`` takes the GELU's slope at the
patched run alone: a neuron the patch switches on from the GELU's flat part looks idle, one it moves into the flat
part looks large. That, not the Hutchinson noise, was the disagreement measured on MiniLM (``python
benchmarks/minilm_patching.py --screens``, 160 random components of 10,056 patched exactly, 148 of them MLP neurons):
Spearman of screen and exact at the outputs 0.685 with 4 probes and 0.689 with 64 (MLP neurons 0.66, the 12 stream
dimensions 1.00), at the readers' inputs 0.993 with 4 probes (MLP neurons 0.991) and 0.998 with 16; the GELU neuron
``encoder.layer.0.intermediate.dense:u691`` (5.7% of the behaviour) ranked 1,892nd at its output, 15th at its
reader's input. The heads and the residual streams stay at their outputs (nothing reads them unit by unit). L202's
first-order ablation screen moves its units at the same sites (:mod:`.site_ablation`), for the same reason.

``J d_i`` is linear in ``d_i``, while a patch moves a component far (to a paraphrase's activation). Averaging ``J``
over the patched and the source run (``both_ends``, the trapezoid along the move) ranks MiniLM's many small components
better (Spearman over a random 48: 0.86 against 0.51) but its largest ones worse (its 4 carriers, components
recovering at least 10%, ranked 5, 2, 27, 11 against 0, 1, 3, 5; ``benchmarks/screen_steps.py``), and the top is what
the exact confirmation reads; so the default is the Taylor expansion at the patched run alone (these figures were
measured with every unit at its output, before :func:`patch_sites`).
"""

from __future__ import annotations

import logging

import torch

from .. import distributed
from ..activations import batches
from ..model_view import Layer, ModelView
from .atp import Metric
from .circuits import checked_splits
from .node_ablation import Reader
from .path_attribution import MovedSite, moved_sites
from .unit_split import module_readers, reader_layer

_LOG = logging.getLogger(__name__)

PROBES = 4
"""Random output directions of the Hessian term (two backward passes through the model each per run and batch, and a
Hessian-vector product of the metric in the output; measured on MiniLM, ``benchmarks/screen_steps.py``)."""

STATIONARY = 0.01
"""The metric counts as stationary on the patched run when the first-order prediction of patching every component at
once, ``|g . (y_source - y_patched)|`` summed over the pairs, is below this share of the metric's exact change between
the two runs, ``|m(source) - m(patched)|`` summed over the pairs (:attr:`~.patching.PatchingTotals.first_order_share`;
MiniLM's similarity: 8.5e-8; the logit differences and label logits of `digits`, `induction` and GPT-2: of order
1)."""


def second_order_patching(view: ModelView, layers: list[Layer], inputs: torch.Tensor, sources: torch.Tensor,
                          targets: torch.Tensor, metric: Metric, probes: int = PROBES, batch_size: int = 256,
                          device: torch.device | None = None, seed: int = 0, both_ends: bool = False,
                          sites: dict[str, Reader] | None = None) -> dict[str, torch.Tensor]:
    """Per layer, the second-order estimate (see the module's docstring) of the change of ``metric`` per pair when
    each unit alone takes its activation on ``sources`` in the run on ``inputs``: ``{layer: (units, pairs)}``.
    ``both_ends``: the output's change ``J d_i`` with ``J`` averaged over the ``inputs`` and the ``sources`` run (the
    trapezoid), else (default) the ``inputs`` run's alone. ``sites`` (:func:`patch_sites`): layers whose units are
    moved where their reader reads them (after the unit's own nonlinearity), so that ``d_i`` is the exact change of
    what the reader reads and ``J`` the Jacobian from there: a GELU neuron the patch switches on is then seen.

    One probe at a time (its direction ``z``, ``H z`` and their backward passes, then dropped), so that besides the
    forward graph only a few output-sized tensors are held; ``z`` is drawn by a CPU generator seeded with ``seed``
    (the same values on any device) as bytes, then moved and cast."""
    device = device or torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}
    for start, batch in batches(inputs, batch_size, device):
        chosen = targets[start:start + len(batch)].to(device)
        other = sources[start:start + len(batch)].to(device)
        replaced = _recorded_sites(view, layers, other, sites or {})
        with torch.enable_grad():
            first = _Run(view, layers, batch, replaced, sites=sites or {})
            runs = ([first, _Run(view, layers, other, replaced, first.deltas, sites or {})] if both_ends
                    else [first])
            point = first.output.detach()  # the metric's derivatives are in the output alone
            totals = _projected(runs, _metric_derivative(metric, point, chosen))
            for _ in range(probes):
                z = torch.randint(0, 2, point.shape, generator=generator, dtype=torch.int8)
                z = z.to(device=point.device, dtype=point.dtype).mul_(2).sub_(1)
                along_z = _projected(runs, z)
                hz = _metric_derivative(metric, point, chosen, z)
                del z
                along_hz = _projected(runs, hz)
                del hz
                totals = [t + 0.5 * a * b / probes for t, a, b in zip(totals, along_z, along_hz)]
            del runs, first, point
        for layer, total in zip(layers, totals):
            parts[layer.name].append(total.T.cpu())
    return {name: torch.cat(values, dim=1) for name, values in parts.items()}


CHUNK_VALUES = 2 ** 24
"""Output values per chunk of samples whose metric derivatives are taken together (64 MB in float32): the metric is
per sample, so its gradient and Hessian are too, and chunking bounds the metric's autograd temporaries."""


def sample_chunks(output: torch.Tensor) -> list[slice]:
    """Slices of ``output``'s samples of about :data:`CHUNK_VALUES` values each (at least one sample)."""
    rows = max(1, CHUNK_VALUES // max(1, output[0].numel()))
    return [slice(start, start + rows) for start in range(0, len(output), rows)]


def first_order_terms(metric: Metric, output: torch.Tensor, targets: torch.Tensor,
                      moved: torch.Tensor) -> torch.Tensor:
    """Per sample, ``g . moved`` with ``g`` the metric's gradient in ``output`` (samples,), float64; per chunk of
    samples, so that no output-sized tensor is made."""
    found = []
    for part in sample_chunks(output):
        point = output[part].detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(metric(point, targets[part]).sum(), point)
        found.append((grad.flatten(1).unsqueeze(1) @ moved[part].flatten(1).unsqueeze(2)).flatten().double())
    return torch.cat(found)


def _metric_derivative(metric: Metric, output: torch.Tensor, targets: torch.Tensor,
                       direction: torch.Tensor | None = None) -> torch.Tensor:
    """The metric's gradient ``g`` in ``output`` (summed over the samples), or with ``direction`` ``z`` its
    Hessian-vector product ``H z`` (zero for a metric linear in the output), computed per chunk of samples."""
    found = torch.zeros_like(output)
    for part in sample_chunks(output):
        point = output[part].detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(metric(point, targets[part]).sum(), point, create_graph=direction is not None)
        if direction is None:
            found[part] = grad
        elif grad.requires_grad:  # else the metric is linear in the output: no Hessian term
            (found[part],) = torch.autograd.grad(torch.vdot(grad.flatten(), direction[part].flatten()), point)
    return found


def _projected(runs: list[_Run], direction: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, ``d_i . J^T direction`` per sample and unit, ``J`` averaged over ``runs``."""
    found = [run.project(direction) for run in runs]
    return [sum(values) / len(runs) for values in zip(*found)]


class _Run:
    """One forward pass of ``batch`` with the audited layers' sites (their output, or their reader's input split by
    unit, :func:`patch_sites`) as gradient leaves, and the move ``d_i`` of each (``deltas``, else this run's
    activation to ``replaced``)."""

    def __init__(self, view: ModelView, layers: list[Layer], batch: torch.Tensor, replaced: list[torch.Tensor],
                 deltas: list[torch.Tensor] | None = None, sites: dict[str, Reader] | None = None) -> None:
        at = [MovedSite(layer, (sites or {}).get(layer.name)) for layer in layers]
        with moved_sites(view, at, None):  # alpha None: each site records its activation and carries it on
            self.output = view.model(batch).float()
        self.leaves = [site.moved for site in at]
        self.deltas = deltas if deltas is not None else [
            (end.float() - site.base.float()).flatten(2) for end, site in zip(replaced, at)]

    def project(self, direction: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, ``d_i . J^T direction`` per sample and unit (samples, units): one backward pass."""
        back = torch.autograd.grad(self.output, self.leaves, direction, retain_graph=True, allow_unused=True)
        return [torch.zeros(delta.shape[:2], device=delta.device) if b is None
                else (delta * b.float().flatten(2)).sum(-1)
                for b, delta in zip(back, self.deltas)]


def _recorded_sites(view: ModelView, layers: list[Layer], inputs: torch.Tensor,
                    sites: dict[str, Reader]) -> list[torch.Tensor]:
    """Each layer's site's activation on ``inputs`` (samples, units, ...), one no-grad forward pass."""
    at = [MovedSite(layer, sites.get(layer.name)) for layer in layers]
    with torch.no_grad(), moved_sites(view, at, None):
        view.model(inputs)
    return [site.base for site in at]


SITE_CHECK_SAMPLES = 16
"""Pairs on which :func:`patch_sites` finds and checks the readers (at most the batch size), drawn at random from all
the pairs: each check costs forward passes of that batch (MiniLM: 15 passes, 4.7 s CPU on 64 pairs, 1.2 s on 16,
the same 6 readers). A bypass or a mixing of units is structural and shows on any pair; a second path that only
some inputs switch on is caught only if the sample holds such a pair (one active on a fraction ``f`` of the pairs
is missed with probability about ``(1 - f) ** 16``: 0.85 for 1%, 0.19 for 10%)."""

SITE_CHECK_SEED = 1
"""Seed of the permutation that draws the :data:`SITE_CHECK_SAMPLES` pairs (a local generator: the same pairs on
every run and rank, whatever the global RNG holds). Not 0, the seed of the comparison inputs
:func:`~.unit_split.unit_splits` draws from the pairs and their twins: with the same seed, the permutations of
``n`` and ``2n`` often start alike, and a pair compared with itself (or its twin) hides a bypass."""


def site_check_sample(count: int, size: int) -> torch.Tensor:
    """The indices of the ``size`` pairs (of ``count``) the readers are checked on."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(SITE_CHECK_SEED))[:size]


def patch_sites(view: ModelView, layers: list[Layer], inputs: torch.Tensor, reference: torch.Tensor | None,
                batch_size: int = 256, device: torch.device | None = None,
                rule: str = "L207: the second-order screen") -> dict[str, Reader]:
    """Per layer of ``layers`` whose units reach the output only through a module that reads them unit by unit (the
    next audited layer, or an unaudited reader such as BERT's ``output.dense`` after ``intermediate.dense`` and its
    GELU: :func:`~.unit_split.module_readers`, checked by :func:`~.unit_split.unit_splits` on a random sample of
    :data:`SITE_CHECK_SAMPLES` pairs of ``inputs`` against ``reference``), a :class:`~.node_ablation.Reader` at that
    module's input: patching a unit there with its source value is patching it at its output, and the move there
    is the exact change after the unit's own nonlinearity. The other layers (heads, residual streams) are left out;
    so is every layer, with a warning, when checking the splits fails (the sites are optional: the screen then
    moves each unit at its output); when finding the unaudited readers fails, they are dropped with a warning (only
    the audited layers are then readers). Warnings name ``rule`` and are logged by rank 0 alone under torchrun
    (L202's screen calls it too, with ``reference`` None: the comparison inputs are drawn from ``inputs`` alone)."""
    device = device or torch.device("cpu")
    size = min(batch_size, SITE_CHECK_SAMPLES, len(inputs))
    sample = site_check_sample(len(inputs), size)
    try:
        readers = module_readers(view, inputs[sample].to(device))
    except Exception as error:  # noqa: BLE001 - optional, as for the circuit rules: checked without unaudited readers
        _warn(f"{rule} checks no unaudited reader (finding them failed: %s)", error)
        readers = {}
    try:
        check = checked_splits(view, inputs, reference, size, device, readers, sample, rule=rule)
    except Exception as error:  # noqa: BLE001 - anything a model's forward raises: every unit at its output
        _warn(f"{rule} moves every unit at its output (readers unchecked: %s)", error)
        return {}
    order = [layer.name for layer in view.layers]
    found = {}
    for layer in layers:
        index = order.index(layer.name)
        following = order[index + 1] if index + 1 < len(order) else None
        reader = check.reader_of(layer.name, following)
        if reader is not None:
            found[layer.name] = Reader(layer, reader_layer(view, reader))
    return found


def _warn(message: str, error: Exception) -> None:
    """Logs ``message`` with ``error`` on rank 0 (every rank runs the same check)."""
    if distributed.is_main():
        _LOG.warning(message, error)
