"""The cost model: what each rule will cost, estimated before it runs, and the plan that keeps rules in budget.

Costs are counted in units that do not depend on the machine (:class:`Cost`): *sample-forwards* (one sample
through one full forward pass of the model; a batch of 64 is 64), *sample-backwards*, *calls* of the model (each
has a fixed overhead, which dominates on small models), arithmetic outside the model (floating-point operations:
dictionary training, similarity, probes) and the peak working memory in bytes.
Each rule's estimator lives beside its check (``register(..., cost=RuleCost(...))``) and reads only the audit's
:class:`Sizes` (the audited layers with their widths and positions, the data size, the inputs and outputs per
sample) and the rule's parameters; a check without one gets :func:`generic_cost`. Shared artifacts (the unit
statistics, the circuit scores, ...) are charged to the first rule of the audit that needs them; a rule that
uses an artifact another rule defines (L201 reads L203's sanity verdict) names it with a cost of None.

A :class:`Calibration`, measured once per audit on this machine (forward passes of one sample and of a batch, one
backward pass, one matrix product), turns units into seconds. The plan (:func:`plan_rules`) compares each estimate
with the rule
time-out and the free memory: a rule that would not fit is *reduced* (its declared parameter, e.g. ``samples``,
lowered until it fits; its findings say so) or *refused* (an ``error`` finding saying how to lift the budget)
before it runs. The wall-clock time-out stays the backstop for estimates that are wrong.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

#: Bytes per activation value: statistics and scans work in float32.
VALUE_BYTES = 4
#: Samples in the calibration batch (at most; the audit's batch size below that): per-sample time depends on the
#: batch size (on a CPU, measured on digits: 8.5 us per sample-forward in batches of 64, 43 us in batches of 256).
CALIBRATION_SAMPLES = 256


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
    """One audited layer as a cost estimate sees it: units, and activation values per sample (units × positions)."""

    name: str
    kind: str
    units: int
    values: int
    hidden: bool


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
    timed (then twice a forward)."""

    forward_seconds: float
    backward_seconds: float
    flop_seconds: float
    call_seconds: float = 0.0
    backward_measured: bool = True

    def to_dict(self) -> dict:
        return {"forward_ms_per_sample": self.forward_seconds * 1e3,
                "backward_ms_per_sample": self.backward_seconds * 1e3,
                "ms_per_call": self.call_seconds * 1e3, "seconds_per_gflop": self.flop_seconds * 1e9,
                "backward_measured": self.backward_measured}


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


def edge_scores(sizes: Sizes, samples: int) -> Cost:
    """Edge attribution patching (``techniques.circuits.edge_attribution``): a forward pass of the inputs and of
    their references and one backward pass, then every edge of consecutive audited layers scored."""
    n = sizes.n(samples)
    layers = sizes.layers
    edges = sum(2.0 * n * a.values * b.units for a, b in zip(layers, layers[1:]))
    widest = max((a.values * b.units for a, b in zip(layers, layers[1:])), default=0)
    part = Cost(forward=2 * n, backward=n, flops=edges, calls=3 * sizes.batches(n),
                peak_bytes=max(sizes.batch_bytes(n, 3), VALUE_BYTES * 3.0 * min(n, sizes.batch_size) * widest))
    return Cost(shared=(("circuit_scores", part),))


def circuit_references(sizes: Sizes, samples: int) -> Cost:
    """The shared references of R302 and R304: the behaviour of the intact model, of every hidden unit ablated,
    and on the references (presence)."""
    return Cost(shared=(("circuit_references", forwards(sizes, sizes.n(samples), 3)),))


# -- calibration ----------------------------------------------------------------------------------------------

def measure(context: Any, isolate: Callable[[Callable[[], Any]], Any] = lambda run: run()) -> tuple[Sizes, Calibration]:
    """The audit's :class:`Sizes` and this machine's :class:`Calibration`: one hooked forward pass of a batch
    (timed; it records each layer's activation size), forward passes of one sample, one backward pass from the
    outputs to the first audited activation (or to float inputs), and one timed matrix product. ``isolate(run)``
    runs the calls the audit has not made before (one sample; gradients) and returns None where they fail: a model
    may do, under gradients, what it never did in the first forward passes (the engine bounds and isolates them
    like a rule)."""
    from .model_view import units_view

    view, data = context.view, context.data
    batch = data.inputs[:max(1, min(context.batch_size, len(data), CALIBRATION_SAMPLES))].to(context.device)
    values: dict[str, int] = {}

    def record(layer):
        def hook(activation, _args):
            values[layer.name] = int(units_view(activation, layer)[0].numel())
        return hook
    from .model_view import installed

    with installed(view.hook(layer, record(layer)) for layer in view.layers), torch.no_grad():
        output = view.model(batch)
    with torch.no_grad():
        whole = min(_timed(lambda: view.model(batch), context.device) for _ in range(2))
        single = isolate(lambda: min(_timed(lambda: view.model(batch[:1]), context.device) for _ in range(2)))
    single = whole / len(batch) if single is None else single  # None: no call overhead measured
    # t(b) = call + b * per_sample, from a batch of b and of one sample
    forward = max((whole - single) / (len(batch) - 1) if len(batch) > 1 else whole, whole / len(batch) / 4, 1e-9)
    call = max(single - forward, 0.0)
    layers = tuple(LayerSize(layer.name, layer.kind, layer.size, values.get(layer.name, layer.size),
                             not layer.is_output) for layer in view.layers)
    sizes = Sizes(len(data), context.max_samples, context.batch_size, layers, int(data.inputs[0].numel()),
                  int(output[0].numel()) if isinstance(output, torch.Tensor) else 0, len(data.masks))
    backward = isolate(lambda: _backward_seconds(context, batch))
    calibration = Calibration(forward, backward if backward is not None else 2 * forward, _flop_seconds(), call,
                              backward is not None)
    return sizes, calibration


def _backward_seconds(context: Any, batch: torch.Tensor) -> float | None:
    """Seconds per sample of a backward pass: the gradient of the summed outputs with respect to float inputs, or
    where they do not reach the outputs (token ids stored as floats), to the first audited activation; None where
    there is nothing to differentiate."""
    seconds = _gradient_seconds(context, batch, to_inputs=True) if batch.is_floating_point() else None
    if seconds is None and context.view.layers:
        seconds = _gradient_seconds(context, batch, to_inputs=False)
    return None if seconds is None else max(seconds / len(batch), 1e-9)


def _gradient_seconds(context: Any, batch: torch.Tensor, to_inputs: bool) -> float | None:
    """Seconds of one backward pass of ``batch`` to its inputs or to the first audited activation (the second of
    two: the first checks the leaf reaches the outputs), or None when it does not."""
    view = context.view
    leaves: list[torch.Tensor] = []

    def leaf(activation, _args):
        if leaves:
            return None
        leaves.append(activation.detach().requires_grad_(True))
        return leaves[-1]
    if to_inputs:
        batch = batch.clone().requires_grad_(True)
        leaves.append(batch)
    from .model_view import installed

    try:
        with torch.enable_grad(), installed([] if to_inputs else [view.hook(view.layers[0], leaf)]):
            output = view.model(batch)
        if not isinstance(output, torch.Tensor) or not output.is_floating_point() or not leaves:
            return None
        total = output.float().sum()
        if not total.requires_grad or torch.autograd.grad(total, leaves, allow_unused=True,
                                                          retain_graph=True)[0] is None:
            return None
        return _timed(lambda: torch.autograd.grad(total, leaves), context.device)
    except RuntimeError:  # no path from the leaf to the outputs (e.g. integer operations in between)
        return None


def _flop_seconds(size: int = 256, repeats: int = 4) -> float:
    """Seconds per floating-point operation of a float32 matrix product on the CPU (where mechaudit's own
    arithmetic, dictionaries and similarity, mostly runs)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return max((time.perf_counter() - start) / (repeats * 2 * size ** 3), 1e-15)


def _timed(run: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``run()`` takes (waiting for the GPU to finish)."""
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def available_bytes(device: torch.device) -> int:
    """Free memory where the rules' tensors live: the device's on CUDA, else the machine's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil is optional; POSIX knows the free pages
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


# -- the plan -------------------------------------------------------------------------------------------------

@dataclass
class RulePlan:
    """One rule's line in the plan: its estimate, and what the budget does to it (``run``, ``reduce``,
    ``refuse`` or ``skip``); ``reduced`` maps a parameter to (its value, the value it runs with)."""

    rule_id: str
    forward: float
    backward: float
    flops: float
    peak_bytes: float
    seconds: float
    action: str = "run"
    reduced: dict[str, tuple[int, int]] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict:
        return {"rule": self.rule_id, "action": self.action, "forward_passes": round(self.forward),
                "backward_passes": round(self.backward), "flops": float(f"{self.flops:.3g}"),
                "peak_bytes": int(self.peak_bytes), "estimated_seconds": round(self.seconds, 3),
                **({"reduced": {k: {"from": a, "to": b} for k, (a, b) in self.reduced.items()}} if self.reduced
                   else {}), **({"reason": self.reason} if self.reason else {})}

    def label(self) -> dict:
        """What a reduced rule's findings record (evidence ``budget_reduction``)."""
        return {"reduced": {k: {"from": a, "to": b} for k, (a, b) in self.reduced.items()}, "reason": self.reason}


@dataclass
class Plan:
    """The plan of an audit: the calibration, the budgets it was held to, and one :class:`RulePlan` per rule."""

    calibration: Calibration
    rule_timeout: int
    memory_bytes: int
    rules: list[RulePlan]

    def to_dict(self) -> dict:
        return {"calibration": self.calibration.to_dict(), "rule_timeout": self.rule_timeout,
                "available_bytes": self.memory_bytes, "rules": [entry.to_dict() for entry in self.rules]}

    def entry(self, rule_id: str) -> RulePlan | None:
        return next((entry for entry in self.rules if entry.rule_id == rule_id), None)

    def lines(self) -> list[str]:
        """The plan as a table for the terminal."""
        head = (f"plan: {len(self.rules)} rules; rule time-out {self.rule_timeout or 'none'}"
                f"{' s' if self.rule_timeout else ''}; {_size(self.memory_bytes)} free; a sample-forward takes "
                f"{self.calibration.forward_seconds * 1e3:.3g} ms, a sample-backward "
                f"{self.calibration.backward_seconds * 1e3:.3g} ms"
                f"{'' if self.calibration.backward_measured else ' (assumed: 2 forwards)'}")
        rows = [f"{'rule':<6}{'action':<8}{'forward':>10}{'backward':>10}{'memory':>10}{'est. s':>9}  note"]
        for e in self.rules:
            note = "; ".join(filter(None, [", ".join(f"{k} {a} -> {b}" for k, (a, b) in e.reduced.items()),
                                           e.reason]))
            rows.append(f"{e.rule_id:<6}{e.action:<8}{_count(e.forward):>10}{_count(e.backward):>10}"
                        f"{_size(e.peak_bytes):>10}{e.seconds:>9.3g}  {note}")
        total = sum(e.seconds for e in self.rules if e.action in ("run", "reduce"))
        return [head, *rows, f"estimated total: {total:.3g} s"]


def plan_rules(rules: list, sizes: Sizes, calibration: Calibration, rule_timeout: int, memory_bytes: int,
               skipped: Callable[[Any], str | None] = lambda rule: None) -> Plan:
    """Estimate every rule in order (shared artifacts charged to the first rule that runs and needs them) and
    decide, before anything runs, which fit the budgets as they are, which run reduced and which are refused.
    ``skipped(rule)`` gives the reason a rule will be skipped (a missing need), or None."""
    ready = {rule.id: skipped(rule) for rule in rules}
    declared: dict[str, Cost] = {}  # the shared artifacts' costs, as the rules that define them declare them
    for rule in rules:
        if not ready[rule.id]:
            for name, part in _model(rule).estimate(sizes, rule.params).shared:
                if part is not None:
                    declared.setdefault(name, part)
    charged: set[str] = set()
    entries = []
    for rule in rules:
        if ready[rule.id]:
            entries.append(RulePlan(rule.id, 0, 0, 0, 0, 0.0, "skip", reason=ready[rule.id]))
            continue
        model = _model(rule)
        entry = _judge(rule, model, sizes, calibration, rule_timeout, memory_bytes,
                       lambda cost: _total(cost, charged, declared))
        if entry.action != "refuse":
            charged.update(name for name, _ in model.estimate(sizes, _params(rule, entry)).shared)
        entries.append(entry)
    return Plan(calibration, rule_timeout, memory_bytes, entries)


def _model(rule: Any) -> RuleCost:
    return getattr(rule.check, "cost", None) or GENERIC


def _params(rule: Any, entry: RulePlan) -> Any:
    return dataclasses.replace(rule.params, **{k: b for k, (_, b) in entry.reduced.items()})


def _total(cost: Cost, charged: set[str], declared: dict[str, Cost]) -> Cost:
    """``cost`` plus the shared costs not yet paid by an earlier rule (an artifact this rule only uses: at the
    cost the defining rule declares)."""
    total = Cost(cost.forward, cost.backward, cost.flops, cost.peak_bytes, cost.calls)
    seen = set(charged)
    for name, part in cost.shared:
        part = part if part is not None else declared.get(name)
        if name not in seen and part is not None:
            seen.add(name)
            total = total + part
    return total


def _judge(rule: Any, model: RuleCost, sizes: Sizes, calibration: Calibration, timeout: int, memory: int,
           total: Callable[[Cost], Cost]) -> RulePlan:
    def entry(params: Any) -> RulePlan:
        cost = total(model.estimate(sizes, params))
        return RulePlan(rule.id, cost.forward, cost.backward, cost.flops, cost.peak_bytes, cost.seconds(calibration))

    def fits(plan: RulePlan) -> bool:
        return (not timeout or plan.seconds <= timeout) and plan.peak_bytes <= memory

    first = entry(rule.params)
    if fits(first):
        return first
    over = _over(first, timeout, memory)
    name = model.reduce
    current = getattr(rule.params, name, None) if name else None
    if isinstance(current, int) and current > model.floor:
        low, high, best = model.floor, current - 1, None
        while low <= high:  # the largest value that fits (estimates grow with the parameter)
            middle = (low + high) // 2
            trial = entry(dataclasses.replace(rule.params, **{name: middle}))
            if fits(trial):
                best, low = (middle, trial), middle + 1
            else:
                high = middle - 1
        if best is not None:
            value, plan = best
            plan.action, plan.reduced = "reduce", {name: (current, value)}
            plan.reason = f"{name} lowered from {current} to {value} to fit: as set, {over}"
            return plan
    first.action = "refuse"
    lowest = f" (even with {name} = {model.floor})" if isinstance(current, int) and current > model.floor else ""
    first.reason = f"refused before running: {over}{lowest}; {_lift(first, timeout, memory, name)}"
    return first


def _over(plan: RulePlan, timeout: int, memory: int) -> str:
    """Which budget the estimate exceeds, in words."""
    parts = []
    if timeout and plan.seconds > timeout:
        parts.append(f"an estimated {plan.seconds:.3g} s ({_count(plan.forward)} sample-forwards, "
                     f"{_count(plan.backward)} sample-backwards) exceeds --rule-timeout {timeout} s")
    if plan.peak_bytes > memory:
        parts.append(f"an estimated peak of {_size(plan.peak_bytes)} exceeds the {_size(memory)} of free memory")
    return " and ".join(parts)


def _lift(plan: RulePlan, timeout: int, memory: int, name: str | None) -> str:
    """How to lift the budget that refused ``plan``."""
    if timeout and plan.seconds > timeout:
        needed = int(math.ceil(plan.seconds * 1.5 / 60) * 60)
        return (f"lift it with --rule-timeout {needed} (0: no limit)" +
                (f" or lower the rule's {name}" if name else "") + " or --max-samples")
    return "lower --batch-size or --max-samples, or audit fewer layers (--layers)"


def _count(value: float) -> str:
    return f"{value:.3g}" if value < 1e5 else f"{value:.2e}"


def _size(value: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{int(value)} B"
