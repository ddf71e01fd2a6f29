"""``mechaudit edit``: write a what-if edit into a copy of the weights, with before / after on the audit data.

Two edits: units suppressed to their mean output (``--suppress``), or a region's direction erased at a Linear
layer (``--erase REGION --layer LAYER``, directional ablation; the direction is estimated on the even-numbered
audit samples and every figure is measured on the odd-numbered ones)."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from .checks.circuit_common import mean_values
from .engine import prepare
from .errors import InputError
from .spec import AuditSpec
from .techniques.direction_edit import projected_linear_state
from .techniques.edits import HeldOut, erased, measure, suppressed_state_dict, what_if_suppressed

NOTICE = "SIMULATION by mechaudit edit: not a retrained model"


def edit_model(spec: AuditSpec, out: Path, units: list[str] = (), erase: str | None = None,
               layer: str | None = None) -> dict:
    """Apply one edit (``units`` to suppress, or ``erase`` a region at ``layer``), measure before / after (as a
    hook and with the edited weights), and write the edited weights to ``out``."""
    if out.suffix != ".safetensors":
        raise InputError(str(out), "the edited weights are written as .safetensors")
    if bool(units) == bool(erase):
        raise InputError("edit", "give either units to suppress or a region to erase (with its layer)")
    context, _ = prepare(spec)
    try:
        if units:
            report, state, label, measure_edited = _suppress(context, list(units))
        else:
            report, state, label, measure_edited = _erase(context, erase, layer)
    except ValueError as exc:
        raise InputError("edit", str(exc)) from None
    edited = copy.deepcopy(context.model)
    edited.load_state_dict({k: v.to(context.device) for k, v in state.items()})
    report["after_weights"] = measure_edited(edited)
    report["edit"] = label
    _write(state, out, label)
    return report


def _suppress(context, units: list[str]):
    """The suppression report, weights and label, and how to measure a model on the same data."""
    for address in units:
        _, unit = context.view.resolve(address)
        if unit is None:
            raise InputError(f"address '{address}'", "name a unit (layer:uN or layer:chN), not a whole layer")
    values = mean_values(context)
    data, mask = context.data, next(iter(context.data.masks.values()), None)
    report = what_if_suppressed(context.view, units, values, data.inputs, data.labels, mask, context.batch_size,
                                context.device)
    state = suppressed_state_dict(context.view, units, values)

    def measure_edited(model):
        return measure(model, data.inputs, data.labels, mask, context.batch_size, context.device)
    return report, state, f"units suppressed to their mean output: {', '.join(units)}", measure_edited


def _erase(context, region: str, layer_name: str | None):
    """The erasure report (held out), weights and label, and how to measure a model on the held-out samples."""
    data = context.data
    if region not in data.masks:
        raise InputError(f"region '{region}'", f"is not declared; the spec declares: {', '.join(data.masks) or 'none'}")
    if layer_name is None:
        raise InputError("edit", "--erase needs --layer: the Linear layer whose weights take the edit")
    layer, _ = context.view.resolve(layer_name)
    if len(data.inputs) < 2:
        raise InputError("edit", "the audit data needs at least 2 samples (one to estimate, one to measure)")
    samples = HeldOut.split(data.inputs, data.labels, data.masks[region])
    before = samples.measure(context.model, context.batch_size, context.device)
    direction, after = erased(context.view, layer, samples, context.batch_size, context.device)
    if direction is None:
        raise InputError(f"region '{region}'", f"removing it does not change {layer.name}: nothing to erase")
    state = projected_linear_state(context.view, direction)
    report = {"before": before, "after": after, "evaluated_samples": len(samples.inputs), "simulation": True}

    def measure_edited(model):
        return samples.measure(model, context.batch_size, context.device)
    return report, state, f"direction of region '{region}' erased at {layer.name}", measure_edited


def _write(state: dict, out: Path, label: str) -> None:
    """Write atomically: a temporary file in the same directory, renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(handle)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, temporary,
                  metadata={"mechaudit_edit": NOTICE, "edit": label})
        os.replace(temporary, out)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
