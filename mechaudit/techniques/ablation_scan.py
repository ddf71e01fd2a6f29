"""The fast exact ablation scan: every unit of several layers ablated alone, in several modes, with the same
outputs as one forward pass per unit (:func:`~.ablation.ablation_loop`).

The model is cut at each layer (:mod:`.model_cut`). Per batch, the part before the layers runs once (for all
layers and modes, and once on the resample source); for each chunk of units, only the part after the layer runs,
on the batch repeated once per ablated unit. In delta mode the next Linear/Conv module is not rerun either: its
clean output plus the change of the ablated unit's columns (channels) through their weights; when the unit-wise
operations in between are separable, one pass of them on the batch serves every unit of the chunk. Layers that
cannot be cut (or models that cannot be traced) use the batched hooks of :func:`~.ablation.ablation_outputs`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import linear_maps
from ..activations import batches
from ..model_view import Layer, ModelView, from_units_view, units_view
from .ablation import (
    MAX_OUTPUT_BYTES,
    Reduce,
    ablation_outputs,
    capture_layers,
    check_replacement,
    chunked,
    write_ablations,
)
from .model_cut import Cut, ModelCut, NothingToCut, quiet_fx

Mode = tuple
"""``(values, source)``: ``values`` {layer name: (units, positions) replacement} for zero or mean ablation, or
``source`` (inputs like the audited inputs) for resample ablation; the other one None."""


class AblationScanner:
    """Scan ``layers`` of ``view`` (see the module docstring); ``sample``: a few audit inputs."""

    def __init__(self, view: ModelView, layers: list[Layer], device: torch.device, sample: torch.Tensor) -> None:
        self.view, self.layers, self.device = view, layers, device
        try:
            with quiet_fx():
                self.cut: ModelCut | None = ModelCut.build(view, layers, sample.to(device))
            self.reasons = dict(self.cut.skipped)
        except NothingToCut as exc:
            self.cut, self.reasons = None, dict(exc.skipped)
        except Exception as exc:  # noqa: BLE001  not traceable: the hook-based path is exact too
            self.cut = None
            self.reasons = {layer.name: f"the model cannot be traced ({type(exc).__name__})" for layer in layers}
        if self.cut is not None:
            self._verify(sample.to(device))

    def _verify(self, sample: torch.Tensor) -> None:
        """Zero-ablate a layer's first and last unit on ``sample`` through its cut and through hooks; a cut that
        raises or disagrees is dropped, so that layer is scanned with hooks."""
        for layer in self.layers:
            cut = self.cut.cuts.get(layer.name)
            if cut is None:
                continue
            units = sorted({0, layer.size - 1})
            try:
                with torch.no_grad(), quiet_fx():
                    clean = cut.values(self.cut.run_upstream(sample))
                    values = torch.zeros_like(units_view(clean[0], layer)[0])
                    got = _chunk(cut, clean, torch.tensor(units, device=self.device), values, None).float().cpu()
                expected = ablation_outputs(self.view.model, self.view.site(layer), layer, sample, units, values,
                                            len(sample), self.device).flatten(0, 1)
                agrees = got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
                why = "its traced cut disagrees with forward hooks"
            except Exception as exc:  # noqa: BLE001  any failure of the traced path: the hooks are exact
                agrees, why = False, f"its traced cut failed ({type(exc).__name__}: {_first_line(exc)})"
            if not agrees:
                self._drop(layer, why)

    def _drop(self, layer: Layer, why: str) -> None:
        self.cut.cuts.pop(layer.name, None)
        self.reasons[layer.name] = why

    def method(self, layer: Layer) -> str:
        """How ``layer`` is scanned, in words (for evidence and benchmarks)."""
        cut = self.cut.cuts.get(layer.name) if self.cut else None
        if cut is None:
            return f"batched forward hooks ({self.reasons.get(layer.name, 'not cut')})"
        if not cut.delta:
            return "layers before it run once per batch; the layers after it rerun per ablation"
        return ("layers before it run once per batch; the next linear layer updated through the ablated unit's "
                "columns only" + ("; one pass of the unit-wise operations per chunk" if cut.separable else ""))

    def scan(self, inputs: torch.Tensor, modes: dict[str, Mode], batch_size: int = 256, max_batch: int = 8192,
             reduce: Reduce | None = None, units: dict[str, list[int]] | None = None,
             max_output_bytes: int = MAX_OUTPUT_BYTES) -> dict[str, dict[str, torch.Tensor]]:
        """``{mode: {layer: outputs}}``, outputs (units, samples, ...) with each unit ablated alone (or what
        ``reduce`` makes of each chunk); ``units`` restricts the units scanned per layer (default all). Each chunk
        of ablations repeats the batch at most ``max_batch`` rows and holds at most ``max_output_bytes`` of
        outputs before ``reduce`` (:func:`~.ablation.chunked`)."""
        for values, source in modes.values():
            for layer in self.layers:
                check_replacement(None if values is None else values[layer.name], source, inputs)
        chosen = {layer.name: list(range(layer.size)) if units is None else list(units.get(layer.name, []))
                  for layer in self.layers}
        layers = [layer for layer in self.layers if chosen[layer.name]]
        results: dict[str, dict[str, list[torch.Tensor]]] = {m: {layer.name: [] for layer in layers} for m in modes}
        cuts = dict(self.cut.cuts) if self.cut else {}
        if any(layer.name in cuts for layer in layers):
            with torch.no_grad():
                for start, batch in batches(inputs, batch_size, self.device):
                    samples = slice(start, start + len(batch))
                    clean = self.cut.run_upstream(batch)
                    sources: dict[int, tuple] = {}
                    for name, (values, source) in modes.items():
                        if source is not None and id(source) not in sources:
                            sources[id(source)] = self.cut.run_upstream(source[samples].to(self.device))
                        for layer in layers:
                            if layer.name not in cuts:
                                continue
                            try:
                                with quiet_fx():
                                    part = self._layer(
                                        cuts[layer.name], clean, chosen[layer.name],
                                        None if values is None else values[layer.name].to(self.device),
                                        None if source is None else sources[id(source)], samples, max_batch, reduce,
                                        max_output_bytes)
                            except (torch.cuda.OutOfMemoryError, MemoryError):
                                raise
                            except Exception as exc:  # noqa: BLE001  fall back to the exact hooks for this layer
                                self._drop(layer, f"its traced cut failed ({type(exc).__name__}: {_first_line(exc)})")
                                cuts.pop(layer.name)
                                for mode in results:
                                    results[mode][layer.name] = []
                                continue
                            results[name][layer.name].append(part)
        hooked = [layer for layer in layers if layer.name not in cuts]
        sites = [(self.view.site(layer), layer) for layer in hooked]
        sources = {id(source): source for _, source in modes.values() if source is not None}
        for start, batch in (batches(inputs, batch_size, self.device) if hooked else ()):
            stop = start + len(batch)
            # one source pass per batch for every hooked layer, held only while this batch is ablated
            captured = {key: capture_layers(self.view.model, sites, source[start:stop].to(self.device))
                        for key, source in sources.items()}
            shifted = None if reduce is None else _shifted(reduce, start)
            for layer in hooked:
                for name, (values, source) in modes.items():
                    results[name][layer.name].append(ablation_outputs(
                        self.view.model, self.view.site(layer), layer, batch, chosen[layer.name],
                        None if values is None else values[layer.name], len(batch), self.device, max_batch,
                        None if source is None else source[start:stop], shifted, max_output_bytes,
                        None if source is None else captured[id(source)][layer.name]))
        return {name: {layer: torch.cat(parts, dim=1) for layer, parts in per_layer.items()}
                for name, per_layer in results.items()}

    def _layer(self, cut: Cut, upstream: tuple, units: list[int], values: torch.Tensor | None, source: tuple | None,
               samples: slice, max_batch: int, reduce: Reduce | None, max_output_bytes: int) -> torch.Tensor:
        clean = cut.values(upstream)
        src = None if source is None else units_view(cut.values(source)[0], cut.layer)
        n = clean[0].shape[0]

        def run(chunk: list[int]) -> torch.Tensor:
            index = torch.tensor(chunk, device=self.device)
            return _chunk(cut, clean, index, values, src).float().unflatten(0, (len(chunk), n))
        return torch.cat([(reduce(out, samples) if reduce else out).cpu()
                          for out in chunked(units, n, run, max_batch, max_output_bytes)])


def _shifted(reduce: Reduce, offset: int) -> Reduce:
    """``reduce`` for a batch that starts at sample ``offset``: its sample slices are made absolute."""
    return lambda outputs, samples: reduce(outputs, slice(samples.start + offset, samples.stop + offset))


def _chunk(cut: Cut, clean: tuple, chunk: torch.Tensor, values: torch.Tensor | None,
           source: torch.Tensor | None) -> torch.Tensor:
    """The model's outputs, copy ``i`` of the batch with unit ``chunk[i]`` ablated: (copies * samples, ...)."""
    layer, activation = cut.layer, clean[0]
    k, n = len(chunk), activation.shape[0]
    later = [_repeat(v, k) if batched else v for v, batched in zip(cut.later(clean), cut.batched)]
    if cut.delta and cut.separable:
        # each unit of the chunk written once; each element of the linear input depends on one unit only
        units = units_view(activation, layer).clone()
        units[:, chunk] = (values[chunk].to(units.dtype).unsqueeze(0) if source is None
                           else source[:, chunk].to(units.dtype))
        written = from_units_view(units, activation, layer)
        x_new = cut.run("chain", written) if cut.chain is not None else written
        return cut.run("rest", _separable_update(cut, x_new - clean[1], chunk, clean[2]), *later)
    units = units_view(activation, layer).unsqueeze(0).repeat(k, 1, 1, 1)
    like = torch.empty((k * n, *activation.shape[1:]), device="meta")
    written = write_ablations(units, chunk, values, source).reshape(k * n, layer.size, -1)
    ablated = from_units_view(written, like, layer)
    if not cut.delta:
        return cut.run("rest", ablated, *later)
    x_new = cut.run("chain", ablated) if cut.chain is not None else ablated
    delta = (x_new - _repeat(clean[1], k)).reshape(k, n, *clean[1].shape[1:])
    return cut.run("rest", _repeat(clean[2], k) + _checked_update(cut, delta, chunk), *later)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _repeat(value: torch.Tensor, k: int) -> torch.Tensor:
    return value.repeat(k, *([1] * (value.dim() - 1)))


def _conv(spatial: int):
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]


def _separable_update(cut: Cut, delta: torch.Tensor, chunk: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The linear module's output (copies * samples, ...) when copy ``i`` changes its input by ``delta`` (samples,
    ...) on unit ``chunk[i]``'s columns (channels) only: the clean output plus that change through those weights."""
    module, k, index = cut.linear, len(chunk), cut.index[chunk]  # index: (k, c)
    if linear_maps.is_linear(module):
        chosen = delta[..., index.flatten()].unflatten(-1, tuple(index.shape))  # (n, ..., k, c)
        change = torch.einsum("n...kc,okc->kn...o", chosen, linear_maps.weight(module)[:, index])
        return (change + clean.unsqueeze(0)).flatten(0, 1)
    spatial = delta.dim() - 2
    grouped = delta[:, index.flatten()]  # (n, k * c, *spatial): copy i's channels form group i
    weight = module.weight[:, index].transpose(0, 1).flatten(0, 1)  # (k * out, c, *kernel)
    if spatial == 2:  # CPU grouped convolutions are an order of magnitude faster in channels-last layout
        grouped = grouped.contiguous(memory_format=torch.channels_last)
    change = _conv(spatial)(grouped, weight, None, module.stride, module.padding, module.dilation, groups=k)
    change = change.unflatten(1, (k, module.out_channels)).transpose(0, 1)  # (k, n, out, *spatial)
    if spatial != 2:
        return (change + clean.unsqueeze(0)).flatten(0, 1)
    # the sum is written in channels-last layout, (k, n, H, W, out) in memory, which pooling runs fastest on
    total = torch.empty(k, change.shape[1], *change.shape[3:], module.out_channels, dtype=change.dtype,
                        device=change.device).permute(0, 1, 4, 2, 3)
    torch.add(change, clean.contiguous(memory_format=torch.channels_last).unsqueeze(0), out=total)
    return total.flatten(0, 1)


def _checked_update(cut: Cut, delta: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """The change of the linear module's output (copies * samples, ...) for the change of its input ``delta``
    (copies, samples, ...): through each ablated unit's columns (channels) when the change is confined to them
    (checked), else through the whole module."""
    module = cut.linear
    confined = not bool((delta.abs() * ~cut.supports[chunk].unsqueeze(1)).amax() > 0)
    parts = []
    for copy, unit in enumerate(chunk.tolist()):
        change = delta[copy]
        if not confined or cut.index is None:
            if linear_maps.is_linear(module):
                parts.append(change @ linear_maps.weight(module).T)
            else:
                parts.append(_conv(change.dim() - 2)(change, module.weight, None, module.stride, module.padding,
                                                     module.dilation))
            continue
        columns = cut.index[unit]
        if linear_maps.is_linear(module):
            parts.append(change[..., columns] @ linear_maps.weight(module)[:, columns].T)
        else:
            parts.append(_conv(change.dim() - 2)(change[:, columns], module.weight[:, columns], None, module.stride,
                                                 module.padding, module.dilation))
    return torch.cat(parts)
