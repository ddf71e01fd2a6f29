"""What the next layer reads from a layer, as activation vectors: the layer's output at each position (a conv
layer's channels at each spatial cell, a token model's units at each token, attention heads' concatenated outputs
at each token), passed through the rectifying nonlinearity that follows it, if any.

A unit is measured on what the next layer reads: the pre-activation of a layer followed by a ReLU is not what the
model computes with (its negative part is cut off), and its mean over positions can hide all structure (the
spatial mean of a convolution's pre-activation is an affine function of the input's spatial mean: for a one-channel
input, rank one whatever the filters).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..activations import batches, hooked
from ..layouts import SAMPLES_FIRST, Layout
from ..model_view import Layer, ModelView, sample_axis
from ..torch_attention import recomputing
from .nonlinearity import Following
from .sae import layer_vectors
from .uncertainty import resample_budget

#: Rectifiers by the words their module or function names contain (see :mod:`.nonlinearity`); Hugging Face's
#: tanh-approximated GELUs are read as the exact GELU (they differ by less than 1e-3).
_FUNCTIONS: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = (
    ("relu6", F.relu6), ("hardswish", F.hardswish), ("relu", F.relu), ("gelu", F.gelu), ("silu", F.silu),
    ("swish", F.silu), ("mish", F.mish))


def rectifier_function(following: Following | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The function of the rectifier a layer's output reaches, or None when none follows it (or it is unknown)."""
    if following is None or not following.rectified:
        return None
    name = following.what.lower()
    return next((function for word, function in _FUNCTIONS if word in name), None)


def describe_tensor(layer: Layer, following: Following | None) -> str:
    """In words, which tensor :func:`read_and_input_covariances` reads as ``layer``'s output."""
    where = "each token" if layer.kind in ("heads", "stream") else "each position"
    if rectifier_function(following) is not None:
        return f"the output after the {following.what} that follows the layer, at {where}"
    return f"the layer's output (no rectifier follows it), at {where}"


#: Inputs wider than this get no (width x width) covariance: the layer is compared with its live units instead
#: (4,096 dimensions: a 128 MiB float64 matrix; a Linear reading a flattened 512x7x7 map would need 5 GB).
MAX_INPUT_WIDTH = 4096
#: Float64 rows converted at once by :meth:`RunningCovariance.add`, and input patches unfolded at once, in bytes.
CHUNK_BYTES = 64 * 2**20
#: Covariance matrices held during one pass over the samples, in bytes: layers are recorded in groups under it.
PASS_BYTES = 2 * 2**30
#: Groups of samples whose covariances are kept apart for the bootstrap (sample i in group i mod 16), and the
#: most bytes one layer's groups may hold: a layer whose covariances fit fewer than ``MIN_GROUPS`` times in it
#: is recorded in one group, without an interval (see :func:`bootstrap_plan`).
BOOTSTRAP_GROUPS = 16
MIN_GROUPS = 8
GROUP_BYTES = 2**30
#: A resample costs two eigendecompositions (output and input, width³ operations each): 200 resamples within
#: ``RESAMPLE_OPERATIONS`` (widths up to about 170), fewer for wider layers, never under 20; a layer where 20 would
#: exceed ``MAX_OPERATIONS`` (output and input both about 1,700 wide or more) gets none.
RESAMPLE_OPERATIONS = 2e9
MAX_OPERATIONS = 2e11


class BootstrapPlan(NamedTuple):
    """How a layer's covariances are bootstrapped: the groups of samples they are kept in, and the resamples."""

    groups: int
    resamples: int


def bootstrap_plan(read_width: int, input_width: int, samples: int, groups: int = BOOTSTRAP_GROUPS) -> BootstrapPlan:
    """The groups and resamples of the bootstrap of a layer whose output is ``read_width`` wide and whose input is
    ``input_width`` wide (0: not read), over ``samples`` samples: ``groups`` (at most one per sample) while they fit in
    ``GROUP_BYTES``, fewer down to ``MIN_GROUPS``, and resamples by :func:`~.uncertainty.resample_budget`. One group
    and no resample when either fails: a layer that gets no interval holds one covariance, not one per group."""
    resamples = resample_budget(float(read_width ** 3 + input_width ** 3), RESAMPLE_OPERATIONS, cap=MAX_OPERATIONS)
    kept = min(groups, samples, GROUP_BYTES // max(8 * (read_width ** 2 + input_width ** 2), 1))
    if not resamples or kept < 2 or kept < min(MIN_GROUPS, groups, samples):
        return BootstrapPlan(1, 0)
    return BootstrapPlan(kept, resamples)


class RunningCovariance:
    """The (width, width) covariance of vectors added chunk by chunk (float64 sums): memory is one width x width
    matrix and a bounded chunk of rows, whatever the number of vectors."""

    def __init__(self) -> None:
        self.count, self.total, self.gram = 0, None, None

    def add(self, chunk: torch.Tensor) -> None:
        rows = max(1, CHUNK_BYTES // (8 * max(chunk.shape[-1], 1)))
        for part in chunk.split(rows):
            x = part.double().cpu()
            self.total = x.sum(0) if self.total is None else self.total + x.sum(0)
            self.gram = x.T @ x if self.gram is None else self.gram + x.T @ x
            self.count += x.shape[0]

    @property
    def covariance(self) -> torch.Tensor:
        if not self.count:
            raise ValueError("no vectors were added")
        mean = self.total / self.count
        return (self.gram - self.count * torch.outer(mean, mean)) / max(self.count - 1, 1)


class GroupedCovariance:
    """A :class:`RunningCovariance` per group of samples (sample ``i`` in group ``i mod groups``): the covariance of
    all vectors, or of a bootstrap resample that draws whole groups (each sample's vectors stay together)."""

    def __init__(self, groups: int = 1) -> None:
        self.parts = [RunningCovariance() for _ in range(max(groups, 1))]
        self.partner: GroupedCovariance | None = None  #: the layer's other covariance: both keep as many groups

    def add(self, chunk: torch.Tensor, first_sample: int, samples: int) -> None:
        """``chunk``: the vectors of ``samples`` consecutive samples from ``first_sample`` on, sample by sample (a
        chunk whose rows do not divide by its samples goes whole to its first sample's group). When the vectors are
        wider than the estimate the groups were sized by, so that :func:`bootstrap_plan` allows fewer groups, this
        covariance and its partner are both merged into one."""
        if not self.count and len(self.parts) > 1:
            other = self.partner.width if self.partner is not None else 0
            if bootstrap_plan(chunk.shape[-1], other, len(self.parts), len(self.parts)).groups < len(self.parts):
                for covariance in (self, self.partner):
                    if covariance is not None:
                        covariance.merge()
        groups = len(self.parts)
        if groups == 1 or samples < 1 or chunk.shape[0] % samples:
            self.parts[first_sample % groups].add(chunk)
            return
        group = ((first_sample + torch.arange(samples)) % groups).repeat_interleave(chunk.shape[0] // samples)
        for g in group.unique().tolist():
            self.parts[g].add(chunk[group.to(chunk.device) == g])

    @property
    def count(self) -> int:
        return sum(part.count for part in self.parts)

    @property
    def width(self) -> int:
        """The width of the vectors added (0 before any)."""
        return next((part.gram.shape[0] for part in self.parts if part.gram is not None), 0)

    def merge(self) -> None:
        """Keep one group: the sums of all groups (the covariance of all vectors is unchanged)."""
        merged = RunningCovariance()
        for part in self.parts:
            if part.count:
                merged.total = part.total if merged.total is None else merged.total + part.total
                merged.gram = part.gram if merged.gram is None else merged.gram + part.gram
                merged.count += part.count
        self.parts = [merged]

    @property
    def covariance(self) -> torch.Tensor:
        return self.resampled(torch.ones(len(self.parts), dtype=torch.float64))

    def resampled(self, weights: torch.Tensor) -> torch.Tensor:
        """The covariance with each group's vectors counted ``weights[g]`` times (the times a resample drew it)."""
        used = [(float(w), part) for w, part in zip(weights.tolist(), self.parts) if part.count and w]
        if not used:
            raise ValueError("no vectors were added")
        count = sum(w * part.count for w, part in used)
        total, gram = torch.zeros_like(used[0][1].total), torch.zeros_like(used[0][1].gram)
        for w, part in used:  # in place: no temporary matrix per group
            total.add_(part.total, alpha=w)
            gram.add_(part.gram, alpha=w)
        mean = total / count
        return (gram - count * torch.outer(mean, mean)) / max(count - 1, 1)


def _conv_settings(module: nn.Module) -> tuple[tuple, tuple, tuple, tuple] | str:
    """A 1-D or 2-D convolution's (kernel, dilation, padding, stride) as 2-D tuples for ``F.unfold``, or why its
    input patches cannot be unfolded."""
    if isinstance(module, nn.Conv3d):
        return "a 3-D convolution's input patches are not unfolded"
    if isinstance(module.padding, str) and module.padding != "valid":
        return f"a convolution with padding '{module.padding}' is not unfolded"
    padding = (0,) * len(module.kernel_size) if isinstance(module.padding, str) else module.padding
    settings = (module.kernel_size, module.dilation, padding, module.stride)
    return settings if isinstance(module, nn.Conv2d) else tuple((1, value[0]) if i != 2 else (0, value[0])
                                                               for i, value in enumerate(settings))


def input_width(module: nn.Module) -> int | str | None:
    """The width of :func:`input_vectors` of ``module`` when its type tells it (a convolution's channels x kernel
    cells, a Linear's input features), why its input is not read (a 3-D convolution), or None (known on reading)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        settings = _conv_settings(module)
        return settings if isinstance(settings, str) else module.in_channels * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return module.in_features
    return None


def input_vectors(module: nn.Module, value: torch.Tensor) -> torch.Tensor:
    """What ``module`` reads, as vectors: a 1-D or 2-D convolution's input patches (channels x kernel cells, at each
    output position), else the input's last dimension (a token's or a sample's features); ``(n, width)``. A 3-D
    convolution (see :func:`input_width`) is not read here: ValueError."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        settings = _conv_settings(module)
        if isinstance(settings, str):
            raise ValueError(settings)
        images = value.unsqueeze(-2) if isinstance(module, nn.Conv1d) else value
        patches = F.unfold(images, *settings)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return value.reshape(-1, value.shape[-1])


@dataclass
class LayerCovariances:
    """What :func:`read_and_input_covariances` recorded for one layer: the covariance of what the next layer reads,
    that of what the layer reads (None when not read), and why it was not read; each kept per group of samples."""

    read: GroupedCovariance = field(default_factory=GroupedCovariance)
    given: GroupedCovariance | None = field(default_factory=GroupedCovariance)
    not_read: str | None = None

    def __post_init__(self) -> None:
        if self.given is not None:
            self.read.partner, self.given.partner = self.given, self.read


def _estimated_bytes(view: ModelView, layer: Layer, max_input_width: int) -> int:
    """The float64 covariances of one layer, estimated before reading (width 4,096 where its type does not say)."""
    read, given = _estimated_widths(view, layer, max_input_width)
    return 8 * (read * read + given * given)


def _estimated_widths(view: ModelView, layer: Layer, max_input_width: int) -> tuple[int, int]:
    """The widths of one layer's output and input (0: not read), estimated before reading."""
    width = input_width(view.model.get_submodule(layer.name))
    read = layer.size if layer.kind in ("linear", "conv", "stream") else _site_width(view, layer) or max_input_width
    unknown = read if layer.kind in ("heads", "stream") else max_input_width  # they read the stream they write
    given = min(width, max_input_width) if isinstance(width, int) else 0 if isinstance(width, str) else unknown
    return read, given


def _site_width(view: ModelView, layer: Layer) -> int | None:
    """The width of attention heads' concatenated outputs: their output projection's input features (an
    ``nn.MultiheadAttention``'s ``embed_dim``: its projection runs inside its forward)."""
    site = view.model.get_submodule(layer.site) if layer.site else None
    width = site.embed_dim if isinstance(site, nn.MultiheadAttention) else input_width(site) if site else None
    return width if isinstance(width, int) else None


def bootstrap_groups(view: ModelView, layer: Layer, samples: int, max_input_width: int = MAX_INPUT_WIDTH,
                     groups: int = BOOTSTRAP_GROUPS) -> int:
    """The groups of samples ``layer``'s covariances are kept in (:func:`bootstrap_plan` on its estimated widths)."""
    return bootstrap_plan(*_estimated_widths(view, layer, max_input_width), samples, groups).groups


def layer_groups(view: ModelView, layers: list[Layer], max_input_width: int = MAX_INPUT_WIDTH,
                 pass_bytes: int = PASS_BYTES, groups: dict[str, int] | None = None) -> list[list[Layer]]:
    """``layers`` in consecutive groups whose covariances (times their ``groups`` of samples) fit in
    ``pass_bytes`` (a layer alone when it does not)."""
    groups = groups or {}
    passes: list[list[Layer]] = []
    held = pass_bytes + 1
    for layer in layers:
        size = _estimated_bytes(view, layer, max_input_width) * groups.get(layer.name, 1)
        if held + size > pass_bytes:
            passes.append([])
            held = 0
        passes[-1].append(layer)
        held += size
    return passes


def read_and_input_covariances(view: ModelView, layers: list[Layer], inputs: torch.Tensor, batch_size: int,
                               device: torch.device, following: dict[str, Following] | None = None,
                               max_input_width: int = MAX_INPUT_WIDTH, pass_bytes: int = PASS_BYTES,
                               bootstrap: int = 1) -> dict[str, LayerCovariances]:
    """For each layer, in one pass over ``inputs`` per group of :func:`layer_groups`: the covariance of the vectors
    the next layer reads (the layer's output at each position, rectified when a rectifier follows) and of those the
    layer's module reads (:func:`input_vectors` of its first floating-point tensor argument, samples first:
    :func:`~..model_view.sample_axis`; read once per forward pass, not again when torch attention's heads are
    recomputed). The second is not
    built (``given`` None, ``not_read`` says why) when the module takes no such tensor, when its input is wider than
    ``max_input_width`` or when its patches are not unfolded (a 3-D convolution). With ``bootstrap`` above 1, each
    covariance is kept in up to that many groups of samples (:func:`bootstrap_groups`), for a bootstrap over them."""
    following = following or {}
    recorded: dict[str, LayerCovariances] = {}
    kept = {layer.name: bootstrap_groups(view, layer, len(inputs), max_input_width, bootstrap) if bootstrap > 1 else 1
            for layer in layers}
    batch = {"first": 0, "samples": 0}  # the samples the current forward pass reads
    for group in layer_groups(view, layers, max_input_width, pass_bytes, kept):
        handles = []
        for layer in group:
            module = view.model.get_submodule(layer.name)
            record = recorded[layer.name] = LayerCovariances(GroupedCovariance(kept[layer.name]),
                                                             GroupedCovariance(kept[layer.name]))
            width = input_width(module)
            if isinstance(width, str) or (isinstance(width, int) and width > max_input_width):
                record.given, record.not_read = None, _too_wide(width, max_input_width)
                continue
            handles.append(module.register_forward_pre_hook(_input_hook(record, max_input_width, batch, layer.layout),
                                                            with_kwargs=True))
        functions = {layer.name: rectifier_function(following.get(layer.name)) for layer in group}

        def on_output(layer: Layer, output: torch.Tensor) -> None:
            vectors = layer_vectors(output, layer)
            function = functions[layer.name]
            recorded[layer.name].read.add(function(vectors) if function is not None else vectors, batch["first"],
                                          batch["samples"])

        try:
            with hooked(view, group, on_output), torch.no_grad():
                for start, values in batches(inputs, batch_size, device):
                    batch.update(first=start, samples=len(values))
                    view.model(values)
        finally:
            for handle in handles:
                handle.remove()
    for record in recorded.values():
        if record.given is not None and not record.given.count:
            record.given, record.not_read = None, record.not_read or "the layer takes no floating-point tensor"
    return recorded


def _too_wide(width: int | str, max_input_width: int) -> str:
    if isinstance(width, str):
        return width
    return f"its input has {width} dimensions, above {max_input_width}: no covariance of that size is built"


def _input_hook(record: LayerCovariances, max_input_width: int, batch: dict[str, int],
                layout: Layout = SAMPLES_FIRST) -> Callable:
    def on_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if record.given is None or recomputing(module):  # not the heads' rerun: one forward pass, one reading
            return
        value = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()),
                     None)
        if value is None:
            return
        value = value.detach()
        if value.dim() > 2 and sample_axis(module):  # (tokens, samples, width): each sample's rows together
            value = value.movedim(sample_axis(module), 0)
        elif not layout.is_samples_first and layout.fits(value, batch["samples"]):  # as the layer's own output
            value = layout.samples_first(value, batch["samples"])
        width = input_width(module)
        if width is None and value.shape[-1] > max_input_width:
            record.given, record.not_read = None, _too_wide(value.shape[-1], max_input_width)
            return
        if width is None or isinstance(module, nn.Linear):  # rows as they are (no patches): chunked by add
            record.given.add(input_vectors(module, value), batch["first"], batch["samples"])
            return
        if value.dim() != (4 if isinstance(module, nn.Conv2d) else 3):
            record.given, record.not_read = None, f"its input of shape {tuple(value.shape)} is not batched"
            return
        per_sample = width * value[0, 0].numel() * value.element_size()
        first = batch["first"]
        for part in value.split(max(1, CHUNK_BYTES // per_sample)):  # unfolded patches of a few samples at once
            record.given.add(input_vectors(module, part), first, len(part))
            first += len(part)
    return on_input
