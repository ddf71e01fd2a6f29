"""Mean (or zero) ablation of sets of nodes at once, to measure circuits: faithfulness, completeness,
minimality, single points of failure (Wang et al. 2022; Mueller et al. 2025, MIB).

Which tensor a unit's ablation writes: by default the layer's own output (a Linear/Conv output before its
nonlinearity; a head's part of the output projection's input). Given :class:`ReadSite` s (the circuit rules pass
them for every layer whose node scores read the next audited layer's input, :attr:`.circuits.CircuitScores.read_by`),
a unit of such a layer is ablated where the next layer (or an unaudited reader, such as a transformer MLP's down
projection: :func:`.unit_split.module_readers`) reads it instead: its part of that layer's input (after its
nonlinearity, pooling, flattening; a transformer MLP neuron's GELU output at every token), replaced by its mean
there (per position, as the unit statistics hold it), so that ablation and node scores intervene on the
same tensor.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain

import torch

from ..model_view import Layer, ModelView, from_units_view, installed, units_view
from .circuits import Behaviour, _mean_trace
from .unit_split import joined, reader_layer, split_input


@dataclass(frozen=True)
class Reader:
    """The input of ``reader`` split by the units of ``layer`` (:func:`~.unit_split.split_input`)."""

    layer: Layer
    reader: Layer


@dataclass(frozen=True)
class ReadSite(Reader):
    """Where the units of ``layer`` are ablated: the input of ``reader``, the next audited layer, split by unit
    (:func:`~.unit_split.split_input`); ``values`` (units, ...) is what ``reader`` reads from an ablated unit."""

    values: torch.Tensor

    def zeroed(self) -> "ReadSite":
        return ReadSite(self.layer, self.reader, torch.zeros_like(self.values))


def read_sites(view: ModelView, read_by: dict[str, str], input_means: dict[str, torch.Tensor | None]
               ) -> dict[str, ReadSite]:
    """One :class:`ReadSite` per layer in ``read_by`` (layer name -> the name of the next audited layer, whose input
    splits by its units), holding the mean of what the reader reads from each unit: its part of the reader's mean
    input (``input_means``, by reader name: :attr:`~mechaudit.activations.UnitStats.input_mean`, recorded in the
    audit's one statistics pass). A layer whose reader's mean input is unknown is left out (ablated at its output).
    """
    sites = {}
    for name, reader_name in read_by.items():
        layer, reader = view.layer(name), reader_layer(view, reader_name)
        mean = input_means.get(reader_name)
        split = None if mean is None else split_input(layer, reader, view.module(reader), mean[None])
        if split is not None:
            sites[name] = ReadSite(layer, reader, split[0].float())
    return sites


def reader_input_means(view: ModelView, names: list[str], inputs: torch.Tensor, batch_size: int,
                       device: torch.device) -> dict[str, torch.Tensor]:
    """The mean input (one sample's shape: per token) over ``inputs`` of each module in ``names`` (unaudited
    readers, whose inputs the audit's statistics pass does not record): the circuit rules' streamed mean trace
    (one pass without gradients) of those modules. Raises ValueError when a reader's input's first axis is not the
    samples."""
    trace = _mean_trace(view, inputs, batch_size, device, [reader_layer(view, name) for name in names])
    return {name: trace["in"][name][0] for name in names}


@contextmanager
def ablated(view: ModelView, nodes: Iterable[str], values: dict[str, torch.Tensor],
            sites: dict[str, ReadSite] | None = None):
    """Within the context, every node (``layer:uN`` address) in ``nodes`` outputs ``values[layer][unit]``
    (a (units, positions) tensor per layer: means for mean ablation, zeros for zero ablation); a node of a layer
    in ``sites`` is ablated where the next audited layer reads it instead (:class:`ReadSite`)."""
    by_layer: dict[str, list[int]] = {}
    for address in nodes:
        layer, unit = view.resolve(address)
        by_layer.setdefault(layer.name, []).append(unit)
    hooks = []
    reads = []
    for name, units in by_layer.items():
        layer = view.layer(name)
        index = torch.tensor(sorted(units))
        if sites and name in sites:
            reads.append((sites[name], index))
            continue
        replacement = values[name]

        def hook(output, _inputs, layer=layer, index=index, replacement=replacement):
            units_out = units_view(output, layer).clone()
            units_out[:, index.to(output.device)] = replacement[index].to(units_out.dtype).to(output.device)
            return from_units_view(units_out, output, layer)
        hooks.append((layer, hook))
    with installed(chain((_read_site_hook(view, site, index) for site, index in reads),
                         (view.hook(layer, fn) for layer, fn in hooks))):
        yield


def _read_site_hook(view: ModelView, site: ReadSite, index: torch.Tensor) -> torch.utils.hooks.RemovableHandle:
    """A forward pre-hook on the reader that writes ``site.values`` into the ablated units' part of its input."""
    module = view.module(site.reader)

    def pre_hook(_module, args: tuple):
        x = site.reader.layout.samples_first(args[0])  # as the reader's hooks see it
        split = split_input(site.layer, site.reader, module, x).clone()
        split[:, index.to(x.device)] = site.values[index].to(split.dtype).to(x.device)
        return (site.reader.layout.restored(joined(split, x), args[0]), *args[1:])
    return module.register_forward_pre_hook(pre_hook)


def behaviour_under_ablation(view: ModelView, inputs: torch.Tensor, targets: torch.Tensor, behaviour: Behaviour,
                             nodes: Iterable[str], values: dict[str, torch.Tensor], batch_size: int,
                             device: torch.device, sites: dict[str, ReadSite] | None = None) -> torch.Tensor:
    """Per-sample behaviour over ``inputs`` with ``nodes`` ablated (CPU tensor; ``sites`` as for :func:`ablated`)."""
    parts = []
    with ablated(view, list(nodes), values, sites), torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            outputs = view.model(inputs[start:start + batch_size].to(device))
            parts.append(behaviour(outputs.float(), targets[start:start + batch_size].to(device)).cpu())
    return torch.cat(parts)


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-sample absolute difference of two behaviours."""
    return float((a - b).abs().mean())


def faithfulness(m_circuit: torch.Tensor, m_model: torch.Tensor, m_empty: torch.Tensor) -> float:
    """f(C) = 1 - E|m(C) - m(M)| / E|m(empty) - m(M)|, per sample; nan when ablating everything changes nothing.

    Equal to MIB's (m(C) - m(empty)) / (m(M) - m(empty)) when every sample moves the same way; unlike it, it
    does not let effects of opposite sign on different samples cancel (as they do under mean ablation, where
    the average behaviour of the averaged model can equal the model's).
    """
    span = distance(m_empty, m_model)
    return 1.0 - distance(m_circuit, m_model) / span if span > 1e-12 else float("nan")


def curve_area(sizes: list[float], values: list[float]) -> float:
    """Area under a faithfulness-versus-size curve on sizes normalised to [0, 1] (trapezoid rule)."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(sizes, values), zip(sizes[1:], values[1:])):
        area += (x1 - x0) * (y0 + y1) / 2
    return area
