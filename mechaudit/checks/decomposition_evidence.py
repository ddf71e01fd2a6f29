"""Reviewer evidence rules attach to their findings: top-activating exemplars of units or dictionary features,
activation maximisation, tuning curves, attention patterns of heads and activation atlases (drawn by
:mod:`mechaudit.report.decomposition_figures` and :mod:`mechaudit.report.unit_figures`). Pictures illustrate a
finding and never cost it: one that cannot be made is left out, with a warning."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from .. import deadline
from ..activations import batches, collect_units
from ..context import AuditContext
from ..model_view import Layer, installed, units_view
from ..techniques.activation_max import maximize_activation
from ..techniques.exemplars import top_exemplars
from ..techniques.sae import Dictionary

MAX_STEPS = 64  # activation maximisation steps per feature: enough to raise the objective, cheap on a CPU


def exemplars(context: AuditContext, indices: torch.Tensor, scores: torch.Tensor, components: list[int],
              names: list[str], top: int = 8) -> list[dict]:
    """Top-activating audit samples of the chosen columns of ``scores`` (samples of ``indices``, components);
    image tiles or table rows; nothing for token inputs."""
    inputs = context.data.inputs[indices]
    if not components or not inputs.is_floating_point():
        return []
    labels = context.data.labels[indices] if context.data.labels is not None else None
    return top_exemplars(scores, inputs, labels, components, names, top=top,
                         class_names=list(context.class_names) or None, feature_names=context.data.feature_names)


def maximised_features(context: AuditContext, layer: Layer, dictionary: Dictionary, features: list[int]) -> list[dict]:
    """Inputs optimised to activate each feature's direction (image models only)."""
    shape = tuple(context.data.inputs.shape[1:])
    if len(shape) != 3 or not context.data.inputs.is_floating_point():
        return []
    low, high = float(context.data.inputs.min()), float(context.data.inputs.max())
    module = dict(context.model.named_modules())[layer.name]
    rows = []
    for feature in features:
        result = maximize_activation(context.model, module, 0, shape, direction=dictionary.decoder[feature],
                                     steps=MAX_STEPS, seed=context.seed, device=context.device,
                                     value_range=(low, high), layout=layer.layout)
        rows.append({"component": dictionary.address(feature), **result})
    return rows


# -- pictures of the units a finding names (L201's trace, L202's critical units, L207's carrier heads) -------------

PICTURED_UNITS = 3  # units pictured per finding
PICTURED_EXEMPLARS = 6  # exemplars per unit
PATTERN_SAMPLES = 64  # samples (or pairs) averaged in an attention pattern
PATTERN_TOKENS = 32  # positions shown of an attention pattern (the first ones; the last query's last keys)
TUNING_SIDE = 64  # patch-position tuning only for images at most this many pixels a side (probes stay cheap)
TUNING_SAMPLES = 64  # samples a region sweep averages over
COLUMN_SAMPLES = 256  # tabular inputs: samples a unit's attribution per column averages over
COLUMN_BARS = 16  # tabular inputs: columns kept per unit (those with the largest shares)


def unit_pictures(context: AuditContext, addresses: list[str], inputs: torch.Tensor | None = None,
                  labels: torch.Tensor | None = None, region: tuple[str, torch.Tensor] | None = None) -> dict:
    """Evidence a reviewer looks at for the units at ``addresses`` (at most :data:`PICTURED_UNITS`): attention
    patterns for heads (averaged over ``inputs``, default the audit samples); for other units on image inputs, the
    top-activating exemplars with each one's receptive field, an activation-maximisation image and a tuning curve:
    along the value of a declared ``region`` ``(name, mask per input)`` when one is given, else (units of a Linear
    layer) along the position of a bright patch; on token inputs, exemplar contexts with the activating token
    marked; on tables, exemplar rows and the unit's attribution per input column. Keys: ``attention_patterns``,
    ``exemplars``, ``activation_maximization``, ``tuning_curves``, ``column_attribution``; only those that apply."""
    if inputs is None:
        indices = context.sample_indices()
        inputs = context.data.inputs[indices]
        labels = context.data.labels[indices] if context.data.labels is not None else None
    evidence: dict[str, list] = {}
    for address in addresses[:PICTURED_UNITS]:
        if deadline.running_out():  # pictures never cost a finding: near the rule's time-out they are left out
            warnings.warn(f"no pictures of {address}: the rule's time budget is running out", stacklevel=2)
            break
        try:
            layer, unit = context.view.resolve(address)
            if unit is None:
                continue
            if layer.kind == "heads":
                pictures = {"attention_patterns": _pattern(context, layer, unit, inputs[:PATTERN_SAMPLES])}
            else:
                pictures = _unit_rows(context, layer, unit, inputs, labels, region)
        except Exception as exc:  # noqa: BLE001  pictures illustrate a finding; they never cost it
            warnings.warn(f"no pictures of {address}: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        for key, row in pictures.items():
            if row is not None:
                evidence.setdefault(key, []).append(row)
    return evidence


def _pattern(context: AuditContext, layer: Layer, head: int, inputs: torch.Tensor) -> dict | None:
    """The mean attention pattern of one head over ``inputs``, and that of the first sample with its tokens (the
    first ``PATTERN_TOKENS`` positions); on longer sequences also ``last_row``: the weights the first sample's true
    last position gives its last ``PATTERN_TOKENS`` keys, with ``last_row_tokens`` and ``last_row_start``."""
    from ..techniques.attention_patterns import head_patterns

    block = dict(context.model.named_modules())[layer.name]
    weights = head_patterns(context.model, block, layer.size, inputs, context.device)
    if weights is None:
        return None
    shown = weights[:, head, :PATTERN_TOKENS, :PATTERN_TOKENS]
    names = context.data.token_text.names if token_ids(context, inputs) else None
    positions = int(weights.shape[-1])
    row = {"component": layer.address(head), "samples": int(weights.shape[0]), "positions": positions,
           "mean": _rounded(shown.mean(0)), "example": _rounded(shown[0]),
           "example_tokens": names(inputs[0, :PATTERN_TOKENS].tolist()) if names else None}
    if positions > PATTERN_TOKENS:
        start = positions - PATTERN_TOKENS
        row.update(last_row=_rounded(weights[0, head, -1:, start:])[0], last_row_start=start,
                   last_row_tokens=names(inputs[0, start:].tolist()) if names else None)
    return row


def _unit_rows(context: AuditContext, layer: Layer, unit: int, inputs: torch.Tensor, labels: torch.Tensor | None,
               region: tuple[str, torch.Tensor] | None) -> dict[str, dict]:
    """One row per picture kind for one (non-head) unit."""
    from ..techniques.tuning import patch_position_curve, region_sweep_curve

    name, image = layer.address(unit), inputs.dim() == 4 and inputs.is_floating_point()
    maps = _unit_maps(context, layer, unit, inputs)  # (samples, positions)
    class_names = list(context.class_names) or None
    rows: dict[str, dict] = {}
    if image:
        [row] = top_exemplars(maps.amax(1, keepdim=True), inputs, labels, [0], [name], top=PICTURED_EXEMPLARS,
                              class_names=class_names)
        if maps.shape[1] > 1 and layer.kind == "conv":
            _receptive_fields(context, layer, unit, inputs, maps, row)
        rows["exemplars"] = row
        module = dict(context.model.named_modules())[layer.name]
        low, high = float(inputs.min()), float(inputs.max())
        rows["activation_maximization"] = {"component": name, **maximize_activation(
            context.model, module, unit, tuple(inputs.shape[1:]), steps=MAX_STEPS, seed=context.seed,
            device=context.device, value_range=(low, high), centre=layer.kind == "conv", layout=layer.layout)}

        def response(batch: torch.Tensor) -> torch.Tensor:
            return _unit_maps(context, layer, unit, batch).mean(1)
        if region is not None:
            rows["tuning_curves"] = {"component": name, **region_sweep_curve(
                response, inputs[:TUNING_SAMPLES], region[1][:TUNING_SAMPLES], low, high, region=region[0])}
        elif layer.kind != "conv" and max(inputs.shape[-2:]) <= TUNING_SIDE:  # a conv map's mean ignores position
            rows["tuning_curves"] = {"component": name, **patch_position_curve(
                lambda batch: response(batch * (high - low) + low), tuple(inputs.shape[1:]))}
    elif token_ids(context, inputs) and maps.shape[1] == inputs.shape[1]:
        tokens = context.data.token_text.per_sample(inputs)  # decoded only for the exemplars drawn
        [rows["exemplars"]] = top_exemplars(maps.amax(1, keepdim=True), inputs, labels, [0], [name],
                                            top=PICTURED_EXEMPLARS, class_names=class_names, tokens=tokens,
                                            positions=maps.argmax(1))
    elif inputs.dim() == 2 and inputs.is_floating_point() and not token_ids(context, inputs):
        [rows["exemplars"]] = top_exemplars(maps.amax(1, keepdim=True), inputs, labels, [0], [name],
                                            top=PICTURED_EXEMPLARS, class_names=class_names,
                                            feature_names=context.data.feature_names)
        try:  # the bars are a picture of their own: their failure keeps the exemplars
            rows["column_attribution"] = _column_attribution(context, layer, unit, inputs[:COLUMN_SAMPLES])
        except Exception as exc:  # noqa: BLE001  pictures illustrate a finding; they never cost it
            warnings.warn(f"no column attribution of {name}: {type(exc).__name__}: {exc}", stacklevel=2)
    return rows


def _column_attribution(context: AuditContext, layer: Layer, unit: int, inputs: torch.Tensor) -> dict | None:
    """Which input columns drive a unit of a tabular model: per column, the mean over ``inputs`` of |gradient x
    (input - mean input)| of the unit's activation (Shrikumar et al. 2016's gradient x input, against the mean row),
    as shares of their total; the :data:`COLUMN_BARS` largest, largest first. None when the unit has no gradient
    with respect to the inputs (the model reads them as ids: rounded or cast before they reach it)."""
    baseline = inputs.float().mean(0)
    total = torch.zeros(inputs.shape[1], dtype=torch.float64)
    for _, batch in batches(inputs, context.batch_size, context.device):
        batch = batch.float()
        gradient = _input_gradient(context, layer, batch, lambda units: units[:, unit])
        if gradient is None:
            return None
        total += (gradient * (batch - baseline.to(batch.device))).abs().sum(0).double().cpu()
    shares = total / total.sum() if total.sum() > 0 else total
    order = torch.argsort(shares, descending=True, stable=True)[:COLUMN_BARS].tolist()
    names = context.data.feature_names or [f"x{j}" for j in range(inputs.shape[1])]
    return {"component": layer.address(unit), "samples": int(inputs.shape[0]),
            "columns": [str(names[j]) if j < len(names) else f"x{j}" for j in order],
            "shares": [round(float(shares[j]), 4) for j in order]}


def _input_gradient(context: AuditContext, layer: Layer, batch: torch.Tensor,
                    pick: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """The gradient with respect to ``batch`` of the sum of ``pick(units)``, ``units`` being ``layer``'s units view
    on that batch; None when no gradient reaches the inputs (a model that rounds or casts them first)."""
    batch = batch.detach().requires_grad_(True)
    captured: list[torch.Tensor] = []
    with installed([context.view.hook(layer, lambda out, _args: captured.append(out))]), torch.enable_grad():
        context.model(batch)
        picked = pick(units_view(captured[-1], layer)).sum()
        if not picked.requires_grad:
            return None
        gradient = torch.autograd.grad(picked, [batch], allow_unused=True)[0]
    return None if gradient is None else gradient.detach()


def token_ids(context: AuditContext, inputs: torch.Tensor) -> bool:
    """Whether ``inputs`` are token ids (samples, positions): integers, or whole numbers when the spec declares a
    tokenizer or vocabulary (token ids of a regression or classification task arrive as floats)."""
    if inputs.dim() != 2:
        return False
    if not inputs.is_floating_point():
        return True
    return context.data.token_text.source != "ids" and bool((inputs == inputs.round()).all() and (inputs >= 0).all())


def _unit_maps(context: AuditContext, layer: Layer, unit: int, inputs: torch.Tensor) -> torch.Tensor:
    """The unit's activation at every position, ``(samples, positions)``, on the CPU."""
    return collect_units(context.view, [layer], inputs, context.batch_size, context.device,
                         lambda _l, out: units_view(out, layer)[:, unit].float())[layer.name]


def _receptive_fields(context: AuditContext, layer: Layer, unit: int, inputs: torch.Tensor, maps: torch.Tensor,
                      row: dict) -> None:
    """Add to each image exemplar the input box that can change the unit at its peak position (the support of the
    gradient there, in tile pixels ``[top, left, bottom, right]``, exclusive), when it is smaller than the image."""
    chosen = torch.tensor([e["sample"] for e in row["exemplars"]])
    peaks = maps[chosen].argmax(1)
    batch = inputs[chosen].to(context.device).float()
    gradient = _input_gradient(context, layer, batch,
                               lambda units: units[torch.arange(len(chosen)), unit, peaks.to(units.device)])
    if gradient is None:
        return
    support = gradient.abs().sum(1).cpu()  # (exemplars, H, W)
    height, width = inputs.shape[-2:]
    tile_rows, tile_cols = len(row["exemplars"][0]["tile"]), len(row["exemplars"][0]["tile"][0])
    for exemplar, mask in zip(row["exemplars"], support):
        rows, cols = (mask > mask.max() * 1e-6).nonzero(as_tuple=True)
        if len(rows) == 0 or (len(rows.unique()) == height and len(cols.unique()) == width):
            continue
        exemplar["receptive_field"] = [round(float(rows.min()) * tile_rows / height, 2),
                                       round(float(cols.min()) * tile_cols / width, 2),
                                       round(float(rows.max() + 1) * tile_rows / height, 2),
                                       round(float(cols.max() + 1) * tile_cols / width, 2)]


def layer_atlas(context: AuditContext, layer: Layer, inputs: torch.Tensor, labels: list[str] | None,
                marked: torch.Tensor | None = None) -> dict | None:
    """The activation atlas of ``layer`` over image ``inputs`` (see :mod:`mechaudit.techniques.atlas`), or None for
    other inputs."""
    from ..techniques.atlas import MAX_DIMENSIONS, activation_atlas

    if inputs.dim() != 4 or not inputs.is_floating_point() or len(inputs) < 4:
        return None

    def keep(_layer: Layer, output: torch.Tensor) -> torch.Tensor:
        units = units_view(output, layer).float()
        return units if units[0].numel() <= MAX_DIMENSIONS else units.mean(-1, keepdim=True)
    try:
        activations = collect_units(context.view, [layer], inputs, context.batch_size, context.device, keep)
        atlas = activation_atlas(activations[layer.name], inputs, labels, marked, seed=context.seed)
    except Exception as exc:  # noqa: BLE001  the atlas illustrates a finding; it never costs it
        warnings.warn(f"no activation atlas of {layer.name}: {type(exc).__name__}: {exc}", stacklevel=2)
        return None
    return {"layer": layer.name, **atlas}


def _rounded(values: torch.Tensor) -> list:
    return [[round(float(v), 3) for v in row] for row in values]
