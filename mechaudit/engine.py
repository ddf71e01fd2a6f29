"""The audit engine: load, check the inputs fit, plan the rules, run them in isolation, collect the result."""

from __future__ import annotations

import copy
import platform
import random
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from . import __version__, deadline, distributed
from .calibration import agreed, available_bytes, measure
from .config import apply_overrides, override_summary
from .context import AuditContext
from .errors import InputError
from .findings import AuditResult, Finding, RuleRun
from .interrupts import Interrupted
from .isolation import ModelGuard
from .lazy_imports import warm_up_gradients
from .loading import AuditData, LoadedModel, load_data, load_model
from .loading.auditable import auditable
from .memory import batch_size_for, halve_batch, report_retries, retried_note
from .model_view import ModelView
from .needs import missing_need
from .planning import Plan, RulePlan, plan_rules
from .portable import portable_traceback, relative_keys
from .precision import cast_forward, dispatched, exact_float32, input_device
from .rulebook import Rule, Rulebook, load_rulebook
from .sources import anchor_files, source_locations
from .spec import AuditSpec, project_root
from .techniques.output_reduction import check_reduction, output_count
from .torch_attention import without_fast_path
from .waivers import apply_waivers, load_waivers

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda", "CUDA is not available on this machine")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return distributed.local_device(torch.device(requested))  # under torchrun on CUDA: the local rank's GPU


def prepare(spec: AuditSpec, loaded: LoadedModel | None = None,
            data: AuditData | None = None, guard: ModelGuard | None = None) -> tuple[AuditContext, dict]:
    """Load the model and data (unless given, as by :func:`mechaudit.audit`) and check that they fit each other;
    raises :class:`InputError` if not. Loading and the first forward passes share the rule time-out; ``guard``
    attaches to the model before its first forward pass."""
    options = spec.options
    seed_everything(options.seed)
    device = resolve_device(options.device)
    search_path = spec.source.parent if spec.source else Path.cwd()
    max_bytes = options.max_file_mb * 2**20
    with distributed.step():  # a rank that cannot load stops every rank
        if data is None:  # first: every check that needs only the spec and the data files fails before the model loads
            data = load_data(spec.data, spec.task, max_bytes)
        if loaded is None:
            with _bounded("model: loading it", options.rule_timeout):
                loaded = load_model(spec.model, trust_pickle=options.trust_pickle, search_path=search_path,
                                    max_bytes=max_bytes)
        conversion = {"conversion": loaded.conversion_check(data.inputs[:options.max_samples])} if (
            loaded.conversion_check is not None) else {}  # the converted module against its original (ONNX), on CPU
        model = _place(loaded, device, options.dtype)
        device = input_device(model, device)
        if guard is not None:
            guard.attach(model)
    with _bounded("model: the first forward passes on the audit data", options.rule_timeout):
        with distributed.step():
            model, data = auditable(model, data, device)  # token ids; a ModelOutput's logits
            view = _discover(model, data, device, options.layers)
            batch_size = batch_size_for(model, data.inputs[:2], device, options.batch_size)
        if not distributed.same_everywhere(view.layouts()):  # verified by a forward pass on each rank
            raise InputError("model", "the ranks verified different sample layouts of its layers at discovery (a "
                                      "forward pass that is not deterministic?): " + str(view.layouts()))
        context = AuditContext(view, data, spec.task, spec.class_names, device, batch_size,
                               options.max_samples, options.seed, behaviour=spec.behaviour, output=spec.output)
        if guard is not None:
            guard.restore()
        _check_outputs(context)  # under torchrun: the sharded outputs, gathered
    root = project_root(spec.source or Path.cwd())
    inputs = {"model": {"name": loaded.name, "source": loaded.source, "sha256": relative_keys(loaded.hashes, root),
                        **conversion},
              "data": {"sha256": relative_keys(data.hashes, root), "samples": len(data),
                       "sample_shape": list(data.inputs.shape[1:]),
                       "groups": _declared_groups(data)}}
    return context, inputs


def _place(loaded: LoadedModel, device: torch.device, dtype: str) -> torch.nn.Module:
    """The model on ``device`` with its forward passes in ``dtype``; a model that accelerate already dispatched
    over devices (``device_map``) stays where it is."""
    try:
        model = loaded.module if dispatched(loaded.module) else loaded.module.to(device)
        return cast_forward(model, dtype)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"model {loaded.name}", f"cannot be moved to {device} in {dtype} ({type(exc).__name__}: "
                                                 f"{_first_line(exc)})") from None


def _declared_groups(data: AuditData) -> dict:
    """Which optional groups the audit data provides, by the names the spec gives them (shown in reports)."""
    return {"labels": data.labels is not None, "masks": sorted(data.masks), "concepts": sorted(data.concepts),
            "protected": sorted(data.protected), "pairs": data.pairs is not None}


def _discover(model: torch.nn.Module, data: AuditData, device: torch.device, layers: tuple[str, ...]) -> ModelView:
    sample = data.inputs[:2].to(device)
    try:
        return ModelView.discover(model, sample, layers)
    except (InputError, Interrupted, RuleTimeout):
        raise
    except (Exception, KeyboardInterrupt, SystemExit) as exc:
        raise InputError("model", f"forward pass failed on audit inputs of shape {tuple(data.inputs.shape[1:])} "
                                  f"per sample; do the inputs fit the model? ({type(exc).__name__}: "
                                  f"{_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """The message of ``exc`` in one line (for TorchScript, the model's own error, which comes last), with a hint
    when the forward pass wants more arguments."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if lines[0].startswith("The following operation failed in the TorchScript") else lines[0]
    if re.search(r"missing \d+ required (positional|keyword-only) argument|Expected a value for argument", line):
        line += " (pass it with [model] forward_kwargs)"
    return line


_LARGE_INPUT = 1e15  # far beyond any normalised data; squares and products of such values overflow float32


def _check_outputs(context: AuditContext) -> None:
    try:
        outputs = context.outputs
    except (InputError, Interrupted, RuleTimeout):
        raise
    except (Exception, KeyboardInterrupt, SystemExit) as exc:
        raise InputError("model", f"forward pass failed on the audit data ({type(exc).__name__}: "
                                  f"{_first_line(exc)})") from None
    if not torch.isfinite(outputs).all():
        largest = float(context.data.inputs.abs().max()) if context.data.inputs.is_floating_point() else 0.0
        if largest > _LARGE_INPUT:  # finite inputs whose scale overflows float32 arithmetic: the data's fault
            raise InputError("data: inputs", f"reach |x| = {largest:.3g}, and the model's outputs overflow to NaN "
                                             "or infinity on them; rescale (normalise) the data")
        raise InputError("model", "produced NaN or infinite outputs on the audit data")
    if outputs.dim() == 0 or outputs.shape[0] != len(context.data):
        rows = outputs.shape[0] if outputs.dim() else "no"
        raise InputError("model", f"returned {rows} output rows for {len(context.data)} samples (in batches of "
                                  f"{context.batch_size}); the first axis of the output must be the samples, one "
                                  "row each (does forward reduce over the batch?)")
    labels = context.data.labels
    if context.task == "classification":
        if outputs.dim() != 2:
            raise InputError("model", f"output shape {tuple(outputs.shape)} is not (samples, classes)")
        classes = outputs.shape[1]
        if context.class_names and len(context.class_names) != classes:
            raise InputError("task.class_names", f"names {len(context.class_names)} classes; the model has {classes}")
        if labels is not None and (labels.min() < 0 or labels.max() >= classes):
            raise InputError("data: labels", f"values must lie in 0..{classes - 1}; found "
                                             f"{int(labels.min())}..{int(labels.max())}")
    if context.task == "regression":
        _check_regression(outputs, labels, context.output)


def _check_regression(outputs: torch.Tensor, labels: torch.Tensor | None, output: str | int) -> None:
    """Several targets per sample must match the model's outputs; ``[task] output`` must name one of them."""
    try:
        check_reduction(outputs, output)
    except ValueError as exc:
        raise InputError("task.output", str(exc)) from None
    if labels is not None and labels.dim() > 1 and labels[0].numel() != output_count(outputs):
        raise InputError("data: labels", f"hold {labels[0].numel()} targets per sample {tuple(labels.shape[1:])}; "
                                         f"the model gives {output_count(outputs)} outputs per sample "
                                         f"{tuple(outputs.shape[1:])}")


def _selection(spec: AuditSpec, rulebook: Rulebook | None) -> tuple[Rulebook, list[Rule]]:
    """The rulebook with the options' per-rule overrides, and the rules the options select from it."""
    options = spec.options
    rulebook = apply_overrides(rulebook or load_rulebook(options.rulebook), options.rules)
    return rulebook, rulebook.select(options.select, options.ignore, options.extend_select)


def plan_audit(spec: AuditSpec, rulebook: Rulebook | None = None, *, loaded: LoadedModel | None = None,
               data: AuditData | None = None) -> Plan:
    """Load the model and data, check they fit, and plan the selected rules (:mod:`mechaudit.cost`) without
    running any."""
    _, rules = _selection(spec, rulebook)
    with distributed.session(resolve_device(spec.options.device)), without_fast_path(), exact_float32(), \
            ModelGuard() as guard:
        context, _ = prepare(spec, loaded, data, guard)
        context.rules = tuple(rules)
        return _plan(context, rules, spec.options.rule_timeout)


def _plan(context: AuditContext, rules: list[Rule], timeout: int) -> Plan:
    """Each rule's estimated cost against the rule time-out and the free memory (calibrated on this machine;
    under torchrun, numbers every rank agrees on, :func:`~mechaudit.calibration.agreed`, so every rank plans
    alike; a failure on one rank stops every rank)."""
    with distributed.step(), _bounded("model: calibrating the cost model (forward passes of the audit data)",
                                      timeout):
        sizes, calibration = measure(context, lambda run, seconds=CALIBRATION_BUDGET: _isolated(
            run, min(timeout or seconds, seconds)))
        memory = available_bytes(context.device)
    sizes, calibration, memory = agreed(sizes, calibration, memory)
    with distributed.step():
        return plan_rules(rules, sizes, calibration, timeout, memory,
                          skipped=lambda rule: missing_need(rule.check.needs, context))


#: Seconds the calibration's new calls of the model (one sample; a backward pass) may take before the plan does
#: without them (a backward pass is then assumed to cost two forward passes).
CALIBRATION_BUDGET = 60


def _isolated(run: Callable[[], T], seconds: int) -> T | None:
    """``run()``, or None when it fails, exceeds ``seconds`` or the model's code raises ``SystemExit`` or
    ``KeyboardInterrupt`` (a real interrupt still stops the audit): as in a rule, the model decides nothing."""
    try:
        with _time_budget(seconds):
            return run()
    except Interrupted:
        raise
    except (Exception, RuleTimeout, KeyboardInterrupt, SystemExit):  # noqa: BLE001
        return None


def run_audit(spec: AuditSpec, rulebook: Rulebook | None = None, progress: bool = False,
              command: str = "", *, loaded: LoadedModel | None = None, data: AuditData | None = None,
              today: date | None = None, baseline: Path | None = None,
              on_plan: Callable[[Plan], None] | None = None) -> AuditResult:
    """Run every selected rule of ``rulebook`` (with the options' per-rule overrides) on the spec's model and
    data, then apply the options' waiver file (expiry judged against ``today``, default the local date).
    ``baseline`` (a previous bundle or its findings.json) is where rules that compare with it read from (D107).
    Before the rules run, their plan (:mod:`mechaudit.cost`) is made and given to ``on_plan``: a rule that would
    exceed the rule time-out or the free memory runs reduced, or is refused with an ``error`` finding."""
    options = spec.options
    rulebook, rules = _selection(spec, rulebook)
    waiver_file = load_waivers(Path(options.waivers)) if options.waivers else None  # bad file: fail before running
    started = datetime.now(timezone.utc)
    # torch's fused attention would bypass the hooks on nn.MultiheadAttention heads
    with distributed.session(resolve_device(options.device)), without_fast_path(), exact_float32(), \
            ModelGuard() as guard:
        context, inputs = prepare(spec, loaded, data, guard)
        context.rules = tuple(rules)
        context.baseline = baseline
        plan = _plan(context, rules, options.rule_timeout)
        if on_plan is not None and distributed.is_main():
            on_plan(plan)
        warm_up_gradients(entry.backward for entry in plan.rules if entry.action in ("run", "reduce"))
        if distributed.active() and context.view.layers:
            context.unit_stats  # sharded artifacts are built by all ranks together, before any rule runs
        with distributed.step():
            runs = [_planned_run(rule, plan.entry(rule.id), context, options.rule_timeout, guard.restore)
                    for rule in _progress(rules, progress and distributed.is_main())]
        ranks_agree = distributed.same_everywhere([(f.rule_id, f.status, f.message) for r in runs for f in r.findings])
        parallel = {"world_size": distributed.world_size(), "ranks_agree": ranks_agree}
    metadata = {
        "tool": {"name": "mechaudit", "version": __version__},
        "rulebook": {"name": rulebook.name, "sha256": rulebook.sha256,
                     "rules": {rule.id: rule.describe() for rule in rules},
                     **({"overrides": override_summary(options.rules)} if options.rules else {})},
        **inputs,
        "task": spec.task,
        "class_names": list(spec.class_names),
        "scope": dict(spec.scope),
        "components": context.view.describe(),
        **({"skipped_layers": dict(context.view.skipped)} if context.view.skipped else {}),
        "locations": source_locations(spec.source, context.model, [layer.name for layer in context.view.layers],
                                      [rule.id for rule in rules],
                                      {"select": options.select, "extend_select": options.extend_select},
                                      anchors=anchor_files(spec)),
        "seed": options.seed,
        "device": str(context.device),
        "dtype": options.dtype,
        "batch_size": options.batch_size if context.batch_size == options.batch_size else
        {"requested": options.batch_size, "used": context.batch_size},
        **({"distributed": parallel} if parallel["world_size"] > 1 else {}),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "platform": platform.platform()},
        "plan": plan.to_dict(),
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    root = project_root(spec.source or Path.cwd())
    _portable_errors(runs, root)
    findings = [finding for run in runs for finding in run.findings]
    result = AuditResult(findings, runs, metadata, fail_on=options.fail_on,
                         attachments=dict(context.attachments), project_root=root)
    return apply_waivers(result, waiver_file, today) if waiver_file is not None else result


def _progress(rules: list[Rule], enabled: bool):
    """The rules, wrapped in a progress bar on a terminal."""
    if not enabled:
        return rules
    from tqdm import tqdm

    return tqdm(rules, unit="rule", file=sys.stderr, leave=False)


class RuleTimeout(BaseException):
    """A rule ran past its time budget (``rule-timeout``). A ``BaseException``, like ``KeyboardInterrupt``, so that
    no ``except Exception`` in a technique or in the model's code can swallow it; it is also raised again every
    second until the budget's context ends, in case code catches everything."""


@contextmanager
def _time_budget(seconds: int) -> Iterator[deadline.Budget]:
    """Raise :class:`RuleTimeout` in the main thread after ``seconds`` (0: no budget; other threads: none), and
    give checks the deadline (:mod:`mechaudit.deadline`; the budget is yielded, with the exact checks it cut).

    Re-entrant: inside an enclosing budget that runs out first, that one's handler fires at its time, and on
    leaving, the enclosing budget is re-armed with the time it has left."""
    with deadline.within(seconds) as budget, _alarm(seconds):
        yield budget


@contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    """The timer of :func:`_time_budget`."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    outer_left, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    inner_first = not outer_left or seconds <= outer_left

    def expire(signum, frame):
        if not inner_first and callable(previous):
            previous(signum, frame)  # the enclosing budget ran out first: its handler raises
        raise RuleTimeout(f"exceeded its time budget of {seconds} s; lift it with --rule-timeout SECONDS "
                          "(0: no limit) or rule-timeout in [audit] / [tool.mechaudit]")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds if inner_first else outer_left, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:  # the enclosing budget goes on with what it has left (soon if that is spent)
            left = outer_left - (time.monotonic() - started)
            unwinding = isinstance(sys.exc_info()[1], RuleTimeout)  # it has already fired: its repeat, as before
            signal.setitimer(signal.ITIMER_REAL, left if left > 0 else outer_interval if unwinding else 1e-3,
                             outer_interval)


@contextmanager
def _bounded(what: str, seconds: int):
    """A time budget outside a rule: running past it is bad input (a factory or forward that never returns)."""
    try:
        with _time_budget(seconds):
            yield
    except RuleTimeout:
        raise InputError(what, f"did not finish within --rule-timeout ({seconds} s)") from None


def _planned_run(rule: Rule, entry: RulePlan | None, context: AuditContext, timeout: int,
                 restore: Callable[[], None] | None) -> RuleRun:
    """Run ``rule`` as its plan says: refused (an ``error`` finding, before it runs), reduced (its lowered
    parameters; every finding says so in its message and in evidence ``budget_reduction``), or as it is."""
    if entry is not None and entry.action == "refuse":
        finding = Finding(rule.id, rule.severity, "error", entry.reason, evidence={"budget": entry.to_dict()})
        return RuleRun(rule.id, "error", 0.0, [finding], reason=entry.reason)
    if entry is None or entry.action != "reduce":
        return _run_rule(rule, context, timeout, restore)
    reduced = replace(rule, params=replace(rule.params, **{k: b for k, (_, b) in entry.reduced.items()}))
    run = _run_rule(reduced, context, timeout, restore)
    note = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in entry.reduced.items())
    _label(run.findings, f"reduced to fit the budget: {note}", "budget_reduction", entry.label())
    run.reason = "; ".join(filter(None, [run.reason, entry.reason]))
    return run


def _run_rule(rule: Rule, context: AuditContext, timeout: int = 0,
              restore: Callable[[], None] | None = None) -> RuleRun:
    """Run one rule in isolation: a missing need skips it; its check's measurements become its findings (judged by
    :class:`~mechaudit.findings.Measurement`: above the threshold fails); an exception, out-of-memory or time-out
    becomes an ``error`` finding, as does a ``SystemExit`` or ``KeyboardInterrupt`` that the model's code raises (a real
    interrupt stops the audit). ``restore`` puts the model's state back first. An out-of-memory error is retried
    once with half the batch size, and the retry is reported in the findings (:mod:`mechaudit.memory`)."""
    start = time.perf_counter()
    missing = missing_need(rule.check.needs, context)
    if missing:
        finding = Finding(rule.id, rule.severity, "skipped", f"skipped: {missing}")
        return RuleRun(rule.id, "skipped", 0.0, [finding], reason=missing)
    retries: list[dict] = []
    while True:
        seed_everything(context.seed)
        if restore is not None:
            restore()
        try:
            with _time_budget(timeout) as budget:
                budget.rule = rule.id  # names the rule in the cuts of a shared artifact that later rules read
                findings = [m.finding(rule.id, rule.severity, rule.uncertain)
                            for m in rule.check.run(context, rule)] or [
                    Finding(rule.id, rule.severity, "pass", "nothing to report")]
            _label_cuts(findings, budget.cuts, timeout)
            break
        except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
            if not retries and context.batch_size > 1:
                retries.append(halve_batch(context, exc))
                continue
            return _error_run(rule, start, f"ran out of memory ({type(exc).__name__}"
                                           f"{retried_note(retries)}); lower --batch-size or --max-samples", exc)
        except RuleTimeout as exc:
            return _error_run(rule, start, str(exc), exc)
        except Interrupted:
            raise
        except (KeyboardInterrupt, SystemExit) as exc:  # raised by the model's code, not a signal
            raised = f"sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else "KeyboardInterrupt"
            return _error_run(rule, start, f"check '{rule.check.name}' stopped: code it ran (the model's?) raised "
                                           f"{raised}", exc)
        except Exception as exc:  # crash isolation: one broken check never stops the audit
            layer = getattr(exc, "failed_layer", None)
            where = f" at layer {layer}" if layer else ""
            return _error_run(rule, start, f"check '{rule.check.name}' failed{where}: {type(exc).__name__}: {exc}",
                              exc)
    return RuleRun(rule.id, _worst_status(findings), time.perf_counter() - start, report_retries(findings, retries),
                   reason=retried_note(retries).lstrip("; ") or None)


def _label_cuts(findings: list[Finding], cuts: list[deadline.Cut], timeout: int) -> None:
    """Say in every finding of a rule whose exact checks the time budget cut (:func:`mechaudit.deadline.confirm`)
    how many ran, and how to lift it (as the plan's reductions are labelled, evidence ``time_budget_cut``)."""
    if not cuts:
        return
    note = "; ".join(cut.note() for cut in cuts)
    _label(findings, f"cut by the time budget ({timeout} s): {note} ran, the most important first; lift it with "
                     "--rule-timeout SECONDS", "time_budget_cut",
           {"rule_timeout": timeout, "cuts": [{"what": cut.what, "planned": cut.planned, "ran": cut.ran}
                                              for cut in cuts]})


def _label(findings: list[Finding], note: str, key: str, evidence: object) -> None:
    """Append ``[note]`` to every finding that is not skipped and record ``evidence`` under ``key``: what the
    budget did to a rule (the plan's reduction, the time budget's cut)."""
    for finding in findings:
        if finding.status != "skipped":
            finding.message += f" [{note}]"
            finding.evidence[key] = copy.deepcopy(evidence)  # each finding its own


def _error_run(rule: Rule, start: float, message: str, exc: BaseException) -> RuleRun:
    message = message.splitlines()[0] if message else type(exc).__name__
    trace = "".join(traceback.format_exception(exc, limit=-3))
    finding = Finding(rule.id, rule.severity, "error", message, evidence={"traceback": trace})
    return RuleRun(rule.id, "error", time.perf_counter() - start, [finding], reason=message)


def _portable_errors(runs: list[RuleRun], root: Path) -> None:
    """Write the paths in error findings (message, traceback) relative to the project ``root`` or the folder
    Python imports them from (:func:`~mechaudit.portable.portable_traceback`): a report carries no absolute path
    of the machine that made it."""
    for run in runs:
        if run.status != "error":
            continue
        run.reason = run.reason and portable_traceback(run.reason, root)
        for finding in run.findings:
            if finding.status == "error":
                finding.message = portable_traceback(finding.message, root)
                if isinstance(finding.evidence.get("traceback"), str):
                    finding.evidence["traceback"] = portable_traceback(finding.evidence["traceback"], root)


def _worst_status(findings: list[Finding]) -> str:
    for status in ("error", "fail", "pass", "skipped"):
        if any(f.status == status for f in findings):
            return status
    return "pass"
