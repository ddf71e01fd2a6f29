"""``mechaudit edit``: write a what-if edit into a copy of the weights, with before / after on the audit data.

Three edits: units suppressed to their mean output (``--suppress``), a region's direction erased at a Linear
layer (``--erase REGION --layer LAYER``, directional ablation; the direction is estimated on the even-numbered
audit samples and every figure is measured on the odd-numbered ones), or facts rewritten by a rank-one edit of an
MLP (``--rome``, :mod:`mechaudit.fact_edit`; measured on the fact's prompts, paraphrases and unrelated prompts,
with an HTML page of its causal traces and measures beside the weights)."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from .checks.circuit_common import mean_values
from .engine import prepare
from .errors import InputError
from .output_file import current_umask
from .spec import AuditSpec, EditSpec
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


def edit_facts_command(spec: AuditSpec, out: Path, edit: EditSpec, layer: str | None = None) -> dict:
    """Write ``edit``'s facts into a copy of the model (ROME), measure each before and after, and write the
    weights to ``out`` and the page of traces and measures beside them (``out`` with ``.html``)."""
    from .fact_edit import edit_facts
    from .report.edit_figures import edit_page

    if out.suffix != ".safetensors":
        raise InputError(str(out), "the edited weights are written as .safetensors")
    if spec.task != "next-token":
        raise InputError("edit --rome", f"edits facts of a next-token model; the spec's task is '{spec.task}'")
    context, _ = prepare(spec)
    inputs = context.data.inputs
    if inputs.dtype not in (torch.int64, torch.int32):
        raise InputError("edit --rome", "the audit inputs must be token ids (integers)")
    key_data = inputs[context.sample_indices()]
    edited, records = edit_facts(context.model, edit, key_data, inputs, context.device, layer, context.seed)
    facts = [record.to_dict() for record in records]
    label = "facts rewritten by a rank-one edit (ROME): " + "; ".join(
        f"{r['prompt']} -> {r['target_new']} (was {r['target_true']}) at {r['layer']}" for r in facts)
    report = {"edit": label, "facts": facts, "page": str(out.with_suffix(".html"))}
    state = {name: tensor.detach().cpu() for name, tensor in edited.state_dict().items()}
    page = edit_page(spec.model.name, label, facts, NOTICE)
    _write(state, out, label, {"facts": json.dumps([{k: v for k, v in f.items() if k != "trace"} for f in facts])},
           extra=(out.with_suffix(".html"), page))
    return report


def _write(state: dict, out: Path, label: str, metadata: dict | None = None,
           extra: tuple[Path, str] | None = None) -> None:
    """Write atomically: temporary files in the same directory, renamed into place (the weights first, then
    ``extra``, a text file written beside them)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporaries = []
    try:
        if extra is not None:
            page = _temporary(extra[0], temporaries)
            Path(page).write_text(extra[1], encoding="utf-8")
        weights = _temporary(out, temporaries)
        save_file({k: v.contiguous() for k, v in state.items()}, weights,
                  metadata={"mechaudit_edit": NOTICE, "edit": label, **(metadata or {})})
        umask = current_umask()
        for temporary in temporaries:  # as readable as a plainly created file (mkstemp makes them 0600)
            os.chmod(temporary, 0o666 & ~umask)
        os.replace(weights, out)  # the weights first: a page never describes weights that were not written
        if extra is not None:
            os.replace(page, extra[0])
    finally:
        for temporary in temporaries:
            if os.path.exists(temporary):
                os.remove(temporary)


def _temporary(path: Path, created: list[str]) -> str:
    """A temporary file beside ``path``."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    created.append(temporary)
    return temporary
