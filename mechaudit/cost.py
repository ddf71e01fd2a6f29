"""The cost model: what each rule will cost, estimated before it runs, and the plan that keeps rules in budget.

Costs are counted in units that do not depend on the machine (:class:`Cost`): *sample-forwards* (one sample
through one full forward pass of the model; a batch of 64 is 64), *sample-backwards*, *calls* of the model (each
has a fixed overhead, which dominates on small models), arithmetic outside the model (floating-point operations:
dictionary training, similarity, probes) and the peak working memory in bytes.
Each rule's estimator lives beside its check (``register(..., cost=RuleCost(...))``) and reads only the audit's
:class:`Sizes` (the audited layers with their widths and positions, the data size, the inputs and outputs per
sample) and the rule's parameters; a check without one gets :func:`generic_cost`. Shared artifacts (the unit
statistics, the circuit scores, ...) are charged to the first rule of the audit that needs them; a rule that
uses an artifact another rule defines (L201 reads L203's sanity verdict) names it with a cost of None. What torch
imports on first use, once per process (sympy for the first vector-Jacobian product with a cotangent, 0.3 s), is
no rule's work and no unit here: the engine pays it before the rules run (:mod:`mechaudit.lazy_imports`).

A :class:`Calibration`, measured once per audit on this machine (:mod:`mechaudit.calibration`), turns units into
seconds; the plan (:mod:`mechaudit.planning`) holds each rule to the rule time-out and the free memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Bytes per activation value: statistics and scans work in float32.
VALUE_BYTES = 4


@dataclass(frozen=True)
class Cost:
    """A rule's cost in machine-independent units; ``shared`` holds the costs of artifacts other rules share
    (name -> cost, or None for an artifact whose cost another rule declares), paid once per audit by the first
    rule that needs them."""

    forward: float = 0.0
    backward: float = 0.0
    flops: float = 0.0
    peak_bytes: float = 0.0
    calls: float = 0.0
    shared: tuple[tuple[str, "Cost | None"], ...] = ()

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.forward + other.forward, self.backward + other.backward, self.flops + other.flops,
                    max(self.peak_bytes, other.peak_bytes), self.calls + other.calls, self.shared + other.shared)

    def seconds(self, calibration: "Calibration") -> float:
        """This cost (without ``shared``) in seconds on the calibrated machine."""
        return (self.forward * calibration.forward_seconds + self.backward * calibration.backward_seconds
                + self.flops * calibration.flop_seconds + self.calls * calibration.call_seconds)


@dataclass(frozen=True)
class LayerSize:
    """One audited layer as a cost estimate sees it: units, activation values per sample (units × positions), and
    ``at``, the share of a forward pass's time spent when the layer's activation is ready (None: not timed)."""

    name: str
    kind: str
    units: int
    values: int
    hidden: bool
    at: float | None = None
    width: int = 0  #: numbers per activation vector (heads: the concatenated head outputs); 0: ``units``

    @property
    def vector_width(self) -> int:
        """Numbers per activation vector at one position: ``width``, else ``units``."""
        return self.width or self.units


@dataclass(frozen=True)
class Sizes:
    """What every estimator reads: the audit data's size and the model's audited layers, inputs and outputs."""

    samples: int
    max_samples: int
    batch_size: int
    layers: tuple[LayerSize, ...]
    input_values: int
    output_values: int
    regions: int = 0
    #: The declared ``[behaviour]``'s kind ('' without one): e.g. ``similarity``, stationary on the corrupted run by
    #: construction, which L207 screens to second order.
    behaviour: str = ""
    #: Declared counterfactual pairs (0: none): the circuit scores against them and against the mean activations
    #: (R303's) are then two artifacts, each paid once.
    pairs: int = 0

    def n(self, requested: int | None = None) -> int:
        """Samples a rule uses when it asks for ``requested`` (``context.sample_indices``'s rule)."""
        return max(0, min(requested or self.max_samples, self.max_samples, self.samples))

    @property
    def hidden(self) -> tuple[LayerSize, ...]:
        return tuple(layer for layer in self.layers if layer.hidden)

    @property
    def hidden_units(self) -> int:
        return sum(layer.units for layer in self.hidden)

    @property
    def activation_bytes(self) -> float:
        """Bytes per sample of every audited activation, the input and the output."""
        return VALUE_BYTES * (sum(layer.values for layer in self.layers) + self.input_values + self.output_values)

    def batches(self, samples: int) -> int:
        """Model calls to run ``samples`` samples in batches."""
        return math.ceil(samples / max(1, self.batch_size))

    def batch_bytes(self, samples: int | None = None, copies: float = 1.0) -> float:
        """Working memory of ``copies`` of a batch's activations (``samples`` default: the batch size)."""
        return copies * self.activation_bytes * min(samples or self.batch_size, self.batch_size)


@dataclass(frozen=True)
class Calibration:
    """Seconds per sample-forward, per sample-backward, per floating-point operation and per call of the model
    (its fixed overhead), measured on this machine; ``backward_measured`` is False where no backward pass could be
    timed (then twice a forward); ``threads``: torch's intra-op threads it was measured with (0: not recorded), as
    seconds measured with one thread count do not hold for another (GPT-2 small: 94-100 ms per sample-forward
    with one thread; each rule's time in a run with two implies 42-55 ms); ``contended``: the threads waited on
    each other in the calibration (more threads than free cores: a loaded machine, where one thread may be
    faster)."""

    forward_seconds: float
    backward_seconds: float
    flop_seconds: float
    call_seconds: float = 0.0
    backward_measured: bool = True
    threads: int = 0
    contended: bool = False

    def to_dict(self) -> dict:
        return {"forward_ms_per_sample": self.forward_seconds * 1e3,
                "backward_ms_per_sample": self.backward_seconds * 1e3,
                "ms_per_call": self.call_seconds * 1e3, "seconds_per_gflop": self.flop_seconds * 1e9,
                "backward_measured": self.backward_measured, "threads": self.threads, "contended": self.contended}


Estimator = Callable[[Sizes, Any], Cost]


@dataclass(frozen=True)
class RuleCost:
    """A check's cost model: ``estimate(sizes, params)``, and the parameter the plan may lower (``reduce``, an
    integer such as ``samples``) down to ``floor`` when the rule would not fit its budget."""

    estimate: Estimator
    reduce: str | None = None
    floor: int = 32


def stats_pass(sizes: Sizes) -> Cost:
    """The shared unit statistics: one forward pass over the audit data."""
    return Cost(shared=(("unit_stats", Cost(forward=sizes.samples, peak_bytes=sizes.batch_bytes())),))


def generic_cost(sizes: Sizes, params: Any) -> Cost:
    """For a check without its own estimator: two forward passes over the samples it uses (``params.samples``
    where it has one), with one batch of activations in memory."""
    n = sizes.n(getattr(params, "samples", None))
    return Cost(forward=2 * n, peak_bytes=sizes.batch_bytes(n, 2))


GENERIC = RuleCost(generic_cost)


# -- building blocks the checks' estimators share ---------------------------------------------------------------

def forwards(sizes: Sizes, samples: int, passes: float = 1.0) -> Cost:
    """``passes`` forward passes over ``samples`` samples in batches, a batch of activations in memory."""
    return Cost(forward=passes * samples, calls=passes * sizes.batches(samples),
                peak_bytes=sizes.batch_bytes(samples, 2))


def with_gradients(sizes: Sizes, samples: int, passes: float = 1.0, copies: float = 2.0) -> Cost:
    """``passes`` forward and backward passes over ``samples`` samples; ``copies`` batches held for autograd."""
    return Cost(forward=passes * samples, backward=passes * samples, calls=2 * passes * sizes.batches(samples),
                peak_bytes=sizes.batch_bytes(samples, copies))


def checked_exactly(components: int, exhaustive: bool, top: int, calibration: int) -> int:
    """How many of ``components`` a screened rule (L202, L207, R304) intervenes on exactly: every one up to the
    screen's threshold or when ``exhaustive``, else the screen's ``top`` and a ``calibration`` sample."""
    from .techniques.atp import SCREEN_ABOVE

    return components if exhaustive or components <= SCREEN_ABOVE else min(components, top + calibration)


def uses(artifact: str) -> Cost:
    """A rule's use of an artifact whose cost another rule of the audit declares (charged to whichever runs
    first); nothing when no rule of the audit declares it."""
    return Cost(shared=((artifact, None),))


#: Attribution methods that take one gradient per sample (the others take ``n_steps``).
ONE_STEP_METHODS = ("saliency", "deeplift", "lrp")


def attributions(sizes: Sizes, method: str, n_steps: int, samples: int) -> Cost:
    """The shared input attributions of ``samples`` samples (captum, internal batches of 8 × the batch size)."""
    n = sizes.n(samples)
    steps = 1 if method in ONE_STEP_METHODS else n_steps
    part = Cost(forward=n * steps, backward=n * steps, calls=2 * math.ceil(n * steps / (8 * max(1, sizes.batch_size))),
                peak_bytes=sizes.batch_bytes(n, 16))
    return Cost(shared=((f"attributions:{method}:{n_steps}:{n}", part),))


def sanity_cascade(sizes: Sizes, samples: int, n_steps: int, evaluations: int) -> Cost:
    """The shared randomisation cascade of the attribution sanity check: attributions of ``samples`` samples on
    the original model and after each of ``evaluations`` randomisation steps."""
    n = sizes.n(samples)
    runs = [attributions(sizes, "integrated_gradients", n_steps, n).shared[0][1]] * (1 + evaluations)
    return Cost(shared=(("attribution_sanity", sum(runs[1:], runs[0])),))


def unit_products(sizes: Sizes, samples: int) -> float:
    """Arithmetic of a per-layer (units × units) statistic over ``samples`` samples (covariances, correlations)."""
    return sum(2.0 * samples * layer.units * layer.values for layer in sizes.hidden)


def unit_split_check(sizes: Sizes, batch: int) -> Cost:
    """Finding the unaudited readers and checking which layers' inputs split by unit, on one batch of ``batch``
    samples (``techniques.circuits.checked_splits``: the circuit rules and L207's second-order screen)."""
    layers = sizes.layers
    pairs = list(zip(layers, layers[1:]))
    # whether a pair splits by unit: one forward of a batch and two VJPs per pair that may split (both sides
    # neurons or channels; a pair with heads or a stream never does, unchecked) (techniques.unit_split; each VJP
    # runs from the later layer's input back to the earlier layer's output)
    checked = [between(sizes, a, b) for a, b in pairs if {a.kind, b.kind} <= {"linear", "conv"}]
    check = Cost(forward=batch * len(checked), backward=2 * batch * sum(checked), calls=2 * len(checked))
    # unaudited readers (techniques.unit_split.module_readers): one forward of a batch and a partial backward per
    # layer that may have one to find them, then the same checks (a forward, two VJPs, each over one audited
    # layer's share) and the only-path forward
    readers = len(reader_layers(sizes))
    if readers:
        share = 1.0 / max(1, len(layers))
        check = check + Cost(forward=batch * (1 + 2 * readers), backward=3 * batch * share * readers,
                             calls=1 + 5 * readers)
    return check


def edge_scores(sizes: Sizes, samples: int, paired: bool = True) -> Cost:
    """Edge attribution patching (``techniques.circuits.edge_attribution``): a forward pass of the inputs and of
    their references (or, against the mean activations, of the mean trace) and one backward pass, then every edge
    of consecutive audited layers scored. One shared artifact per reference and sample count (``circuit_common.
    circuit_scores``): against the declared pairs (``paired`` and the audit declares some), else the means."""
    from .techniques.gradient_edges import MAX_PASSES
    from .techniques.weight_edges import CHUNK_ELEMENTS

    n = sizes.n(samples)
    batch = min(n, sizes.batch_size)
    layers = sizes.layers
    pairs = list(zip(layers, layers[1:]))
    edges = sum(2.0 * n * a.values * b.units for a, b in pairs)
    # pairs read off the weights: chunks of at most CHUNK_ELEMENTS contributions and their magnitudes
    # (techniques.weight_edges), never more than the dense (batch, U, V, positions of V) tensor
    widest = max((a.units * b.values for a, b in pairs if {a.kind, b.kind} <= {"linear", "conv"}), default=0)
    weight_bytes = VALUE_BYTES * min(3.0 * batch * widest, 2.0 * CHUNK_ELEMENTS)
    check = unit_split_check(sizes, batch)
    # pairs not read off the weights (heads, streams): min(U, V) backward passes between the two layers, each
    # the share of the model between them (techniques.gradient_edges); pairs wider than MAX_PASSES on both sides
    # are screened (circuits._screened_pair): one more forward (clean and reference) and backward pass over all
    # samples, then MAX_PASSES VJPs per batch
    autograd = [(min(a.units, b.units), between(sizes, a, b)) for a, b in pairs
                if {"heads", "stream"} & {a.kind, b.kind}]
    passes = sum(min(p, MAX_PASSES) * share for p, share in autograd)
    screened = sum(1 for p, _ in autograd if p > MAX_PASSES)
    vjps = sum(min(p, MAX_PASSES) for p, _ in autograd)
    part = Cost(forward=2 * n * (1 + screened), backward=n * (1 + screened + passes), flops=edges,
                calls=sizes.batches(n) * (3 * (1 + screened) + vjps),
                peak_bytes=max(sizes.batch_bytes(n, 3), weight_bytes))
    reference = "pairs" if paired and sizes.pairs else "means"
    return Cost(shared=((f"circuit_scores:{reference}:{n}", part + check),))


def reader_layers(sizes: Sizes) -> list[LayerSize]:
    """The audited layers that may be read by a module the audit does not cover (``unit_split.module_readers``):
    hidden Linear layers that act per position (a transformer MLP's up projection, whose down projection is often
    left out) or that no hidden audited layer follows; an upper bound (a reader found audited costs nothing)."""
    hidden = [layer for layer in sizes.layers if layer.hidden]
    return [layer for index, layer in enumerate(hidden) if layer.kind == "linear"
            and (layer.values > layer.units or index == len(hidden) - 1)]


def between(sizes: Sizes, upstream: LayerSize, layer: LayerSize) -> float:
    """The share of a pass through the model that lies between two audited layers: from the calibration's timing
    of where each layer's activation is ready (the shares of GPT-2's blocks are smaller than one layer's count
    suggests: the unembedding takes most of a shallow model's time), in either order (0 for a layer and itself),
    else one audited layer's share."""
    if upstream.at is not None and layer.at is not None:
        return abs(layer.at - upstream.at)
    return 1.0 / max(1, len(sizes.layers))


def circuit_references(sizes: Sizes, samples: int) -> Cost:
    """The shared references of R302 and R304: the behaviour of the intact model, of every hidden unit ablated,
    and on the references (presence). The means the next audited layers read come from the audit's statistics
    pass; an unaudited reader's (:func:`reader_layers`) cost one more forward pass over all the audit's inputs."""
    readers = forwards(sizes, sizes.samples) if reader_layers(sizes) else Cost()
    return Cost(shared=(("circuit_references", forwards(sizes, sizes.n(samples), 3) + readers),))
