"""``mechaudit edit``: write a what-if edit (units suppressed to their mean output) into a copy of the weights."""

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
from .techniques.edits import suppressed_state_dict, what_if_suppressed

NOTICE = "SIMULATION by mechaudit edit: units suppressed to their mean output; not a retrained model"


def edit_model(spec: AuditSpec, units: list[str], out: Path) -> dict:
    """Suppress ``units`` (addresses), measure before/after on the audit data, write the edited weights."""
    if out.suffix != ".safetensors":
        raise InputError(str(out), "the edited weights are written as .safetensors")
    context, _ = prepare(spec)
    for address in units:
        layer, unit = context.view.resolve(address)
        if unit is None:
            raise InputError(f"address '{address}'", "name a unit (layer:uN or layer:chN), not a whole layer")
    values = mean_values(context)
    mask = next(iter(context.data.masks.values()), None)
    report = what_if_suppressed(context.view, units, values, context.data.inputs, context.data.labels, mask,
                                context.batch_size, context.device)
    try:
        state = suppressed_state_dict(context.view, units, values)
    except ValueError as exc:
        raise InputError("edit", str(exc)) from None
    edited = copy.deepcopy(context.model)
    edited.load_state_dict({k: v.to(context.device) for k, v in state.items()})
    report["after_weights"] = _measure(edited, context, mask)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(handle)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, temporary,
                  metadata={"mechaudit_edit": NOTICE, "suppressed": ",".join(units)})
        os.replace(temporary, out)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return report


def _measure(model, context, mask) -> dict:
    """Accuracy and region flip rate of ``model`` on the audit data."""
    from .activations import model_outputs
    from .techniques.edits import region_flip_rate

    result = {}
    if context.data.labels is not None:
        predictions = model_outputs(model, context.data.inputs, context.batch_size, context.device).argmax(-1)
        result["accuracy"] = float((predictions == context.data.labels).float().mean())
    if mask is not None:
        result["flip_rate"] = region_flip_rate(model, context.data.inputs, mask, context.batch_size, context.device)
    return result
