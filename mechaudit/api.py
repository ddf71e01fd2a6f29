"""The Python API: audit a model that is already in memory, e.g. in a project's own tests.

>>> import mechaudit, torch                                                       # doctest: +SKIP
>>> result = mechaudit.audit(model, inputs, labels=labels, masks={"watermark": mask}, rulebook="compliance")
>>> from mechaudit.testing import assert_audit_passes
>>> assert_audit_passes(result)          # AssertionError listing the failing findings

Nothing is read from disk except the rulebook (and a waiver file or baseline when given); the result is the
same :class:`~mechaudit.findings.AuditResult` the command line writes, so every report writer works on it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .findings import AuditResult
from .loading import AuditData, LoadedModel
from .loading.auditable import eager
from .loading.data import _as_tensor, _mask, task_labels
from .spec import (
    TASKS,
    AuditSpec,
    BehaviourSpec,
    DataSpec,
    ModelSpec,
    Options,
    check_output,
    parse_behaviour,
    parse_options,
)

API = "mechaudit.audit()"


def audit(model: nn.Module, data: AuditData | torch.Tensor | np.ndarray, *, labels: Any = None,
          masks: Mapping[str, Any] | None = None, task: str = "classification", class_names: tuple[str, ...] = (),
          rulebook: Any = None, name: str | None = None, config: str | Path | None = None,
          baseline: str | Path | dict | None = None, today: dt.date | None = None, output: str | int = "mean",
          behaviour: BehaviourSpec | Mapping[str, Any] | None = None, **options: Any) -> AuditResult:
    """Audit ``model`` on ``data`` (an :class:`~mechaudit.loading.AuditData`, or the inputs as a tensor or array
    with ``labels`` and ``masks`` beside them) and return the result.

    ``rulebook`` is a built-in name (``"default"``, ``"compliance"``), a path, or a loaded rulebook.
    ``options`` are the keys of ``[tool.mechaudit]`` with underscores: ``select``, ``ignore``, ``extend_select``,
    ``fail_on``, ``seed``, ``device``, ``batch_size``, ``max_samples``, ``rule_timeout``, ``layers``,
    ``rules`` (per-rule overrides ``{"L201": {"max_flip_rate": 0.02}}``), ``waivers`` (a waiver file),
    ``tolerance``. ``config`` reads a ``pyproject.toml`` or spec first (options given here win). ``baseline``
    (a findings.json, a bundle or its content) adds the diff against it as ``result.baseline``. The model is
    put in eval mode for the audit and its training mode restored afterwards. ``output`` (regression with several
    outputs per sample): ``"mean"`` or an output index, as ``[task] output`` in a spec. ``behaviour`` is what the
    circuit rules explain, as the spec's ``[behaviour]`` table (``{"kind": "class_logit", "target": "0"}``).
    """
    from .config import load_options
    from .diff import diff_results, load_result
    from .engine import run_audit
    from .report.json_report import result_to_dict
    from .rulebook import Rulebook, load_rulebook

    if not isinstance(model, nn.Module):
        raise InputError(API, f"model must be a torch.nn.Module, not {type(model).__name__}")
    if task not in TASKS:
        raise InputError(f"{API} task", f"'{task}' is not one of {', '.join(TASKS)}")
    check_output(output, f"{API} output")
    if behaviour is not None and not isinstance(behaviour, BehaviourSpec):
        if not isinstance(behaviour, Mapping):
            raise InputError(f"{API} behaviour", "must be a mapping like the spec's [behaviour] table "
                             f"({{'kind': 'class_logit', 'target': '0'}}), not {type(behaviour).__name__}")
        behaviour = parse_behaviour(dict(behaviour), f"{API} behaviour")
    base = load_options(Path(config))[0] if config is not None else Options()
    table = {key: list(value) if isinstance(value, (tuple, list)) else value for key, value in options.items()}
    if isinstance(table.get("waivers"), Path):
        table["waivers"] = str(table["waivers"])
    resolved = parse_options(table, API, base)
    if "waivers" in table and resolved.waivers:
        resolved = _replace(resolved, waivers=str(Path(resolved.waivers).resolve()))
    book = rulebook if isinstance(rulebook, Rulebook) else load_rulebook(str(rulebook or resolved.rulebook))
    audit_data = data if isinstance(data, AuditData) else _audit_data(data, labels, masks, task)
    model = eager(model)  # torch.compile's wrapper: its dtype, guard and forward hooks would not reach the layers
    label = name or type(model).__name__
    spec = AuditSpec(model=ModelSpec(name=label), data=DataSpec(file=Path("<memory>")), task=task,
                     class_names=tuple(class_names), options=resolved, source=None, output=output,
                     behaviour=behaviour)
    loaded = LoadedModel(model, label, f"{type(model).__module__}.{type(model).__qualname__} (in memory)",
                         {"<state_dict>": _state_digest(model)})
    training = model.training
    model.eval()
    try:
        result = run_audit(spec, book, command=API, loaded=loaded, data=audit_data, today=today,
                           baseline=Path(baseline) if isinstance(baseline, (str, Path)) else None)
    finally:
        model.train(training)
    if baseline is not None:
        old = baseline if isinstance(baseline, dict) else load_result(Path(baseline))
        result.baseline = diff_results(old, result_to_dict(result), dict(resolved.tolerance),
                                       old_label=str(baseline) if not isinstance(baseline, dict) else "baseline")
    return result


def _replace(options: Options, **values: Any) -> Options:
    from dataclasses import replace

    return replace(options, **values)


def _audit_data(inputs: Any, labels: Any, masks: Mapping[str, Any] | None, task: str) -> AuditData:
    """Validate in-memory arrays exactly like the data loader validates files; hash what was given."""
    hashes = {}
    array = _numpy(inputs, "inputs")
    tensor = _as_tensor(array, f"{API} inputs", integer=task == "next-token")
    if tensor.dim() < 2 or tensor.shape[0] == 0:
        raise InputError(f"{API} inputs", f"need at least one sample and one feature, got shape {tuple(tensor.shape)}")
    hashes["<inputs>"] = _digest(array)
    data = AuditData(inputs=tensor)
    if labels is not None:
        label_array = _numpy(labels, "labels")
        data.labels = task_labels(label_array, tensor.shape[0], task, f"{API} labels")
        hashes["<labels>"] = _digest(label_array)
    for mask_name, mask in (masks or {}).items():
        mask_array = _numpy(mask, f"mask '{mask_name}'")
        data.masks[str(mask_name)] = _mask(mask_array, tensor, f"{API} mask '{mask_name}'")
        hashes[f"<mask:{mask_name}>"] = _digest(mask_array)
    data.hashes = hashes
    return data


def _numpy(value: Any, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{API} {what}", f"cannot be read as an array ({type(exc).__name__})") from None


def _digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _state_digest(model: nn.Module) -> str:
    """SHA-256 over the model's state_dict (names, dtypes, shapes and values), in a fixed order."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)};".encode())
        if value.device.type != "meta":
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()
