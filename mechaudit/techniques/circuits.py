"""Circuit discovery with edge attribution patching (Syed, Rager, Conmy 2023).

Nodes are the units of the audited layers (and the input, split by declared regions); an edge joins a unit of
one layer to a unit of the next layer that reads it. Every node and edge is scored with two forward passes
(clean and reference) and one backward pass:

* node ``u``: ``(z_u_ref - z_u) . dm/dz_u``: the first-order change of the behaviour ``m`` when ``u`` is
  patched to its reference value (attribution patching);
* edge ``u -> v``: ``(W_vu (x_u_ref - x_u)) . dm/dz_v``: the same when only ``u``'s contribution to ``v``'s
  input is patched, where ``x_u`` is the part of ``v``'s input that ``u`` produced.

Scores are the sum over samples of the *absolute* per-sample effect: with a mean reference, signed effects
cancel across samples (a unit above its mean on half the data and below on the other half would score 0).

The reference is the corrupted input of a counterfactual pair when pairs are declared, else the mean over the
audit data (mean ablation). Reading ``W_vu`` off the weights needs to know which part of a layer's input each
upstream unit produced: this holds when only elementwise functions, pooling and flattening sit between the
two layers (MLPs, CNNs). Other pairs (attention heads, LayerNorm, residual streams) are scored by autograd
(:mod:`.gradient_edges`); pairs neither can score are listed in :attr:`CircuitScores.unconnected`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from .. import linear_maps
from ..addresses import INPUT, input_address
from ..model_view import Layer, ModelView, installed, units_view
from .gradient_edges import gradient_edges

Behaviour = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``behaviour(outputs, targets) -> per-sample metric m``; higher means more of the behaviour."""



def target_logit(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return outputs.gather(1, targets.view(-1, 1)).squeeze(1)


def logit_difference(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``targets`` is (samples, 2): the logit of the first class minus that of the second."""
    return outputs.gather(1, targets[:, :1]).squeeze(1) - outputs.gather(1, targets[:, 1:]).squeeze(1)


def negative_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(outputs, targets, reduction="none")


def cosine_similarity(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``targets`` holds one embedding per sample (e.g. the paired prompt's): the outputs' cosine similarity to it."""
    return F.cosine_similarity(outputs.flatten(1).float(), targets.flatten(1).float(), dim=1)


def logits_at(outputs: torch.Tensor, position: int) -> torch.Tensor:
    """Next-token logits (samples, positions, vocabulary) at one position; other outputs unchanged."""
    return outputs[:, position] if outputs.dim() == 3 else outputs


def at_position(behaviour: Behaviour, position: int) -> Behaviour:
    """``behaviour`` read from the logits at token ``position`` of a next-token model."""
    def read(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return behaviour(logits_at(outputs, position), targets)
    return read


@dataclass
class CircuitScores:
    """Attribution-patching scores of every node and edge (summed over samples), and the behaviour itself."""

    layers: list[Layer]
    nodes: dict[str, float]
    edges: dict[tuple[str, str], float]
    node_layer: dict[str, str]
    behaviour: float
    samples: int
    unconnected: list[tuple[str, str]] = field(default_factory=list)

    def top_nodes(self, count: int, exclude_layers: tuple[str, ...] = ()) -> list[str]:
        candidates = [n for n in self.nodes if self.node_layer[n] not in exclude_layers]
        return sorted(candidates, key=lambda n: -abs(self.nodes[n]))[:count]


def _input_nodes(masks: dict[str, torch.Tensor], sample_shape: torch.Size) -> dict[str, torch.Tensor]:
    """Input regions as nodes: one per declared mask and ``input:rest`` for the remainder (or one ``input``)."""
    if not masks:
        return {INPUT: torch.ones(sample_shape)}
    regions = {input_address(name): mask.expand(sample_shape) for name, mask in masks.items()}
    rest = (1 - torch.stack(list(regions.values())).amax(0)).clamp_min(0)
    if rest.sum() > 0:
        regions[input_address("rest")] = rest
    return regions


class _Recorder:
    """Forward hooks that keep each layer's input and output (with gradients on the clean run)."""

    def __init__(self, view: ModelView, layers: list[Layer], keep_grad: bool) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._view, self._layers, self._keep_grad = view, layers, keep_grad

    def recording(self):
        """The context within which the forward passes are recorded."""
        return installed(self._view.hook(layer, self._hook(layer.name, self._keep_grad)) for layer in self._layers)

    def _hook(self, name: str, keep_grad: bool):
        def hook(output: torch.Tensor, args: tuple) -> None:
            self.inputs[name] = args[0].detach()
            if keep_grad and output.requires_grad:
                output.retain_grad()
            self.outputs[name] = output
        return hook


def _unit_columns(x_in: torch.Tensor, module: nn.Module, upstream_units: int) -> torch.Tensor | None:
    """View a layer's input as (samples, upstream units, positions), or None if it cannot be split by unit."""
    if linear_maps.is_linear(module):
        features = x_in.shape[-1]
        if x_in.dim() != 2 or features % upstream_units:
            return None
        return x_in.reshape(x_in.shape[0], upstream_units, features // upstream_units)
    if x_in.shape[1] != upstream_units:
        return None
    return x_in


def _contributions(module: nn.Module, delta: torch.Tensor) -> torch.Tensor:
    """Per upstream unit ``u`` and layer unit ``v``, the change of ``v``'s output caused by ``delta``'s part
    from ``u``: shape (samples, upstream units, layer units, positions)."""
    if linear_maps.is_linear(module):  # delta: (n, U, P); weight (V, U*P)
        weight = linear_maps.weight(module).detach().reshape(-1, delta.shape[1], delta.shape[2])
        return torch.einsum("vup,nup->nuv", weight, delta).unsqueeze(-1)
    upstream = delta.shape[1]
    weight = module.weight.detach()  # (V, U / groups, *k)
    if module.groups != 1:
        raise ValueError("grouped convolutions are not split into edges")
    grouped = weight.transpose(0, 1).reshape(upstream * module.out_channels, 1, *weight.shape[2:])
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[delta.dim() - 2]
    out = conv(delta, grouped, None, module.stride, module.padding, module.dilation, groups=upstream)
    return out.reshape(out.shape[0], upstream, module.out_channels, -1)


def edge_attribution(view: ModelView, inputs: torch.Tensor, targets: torch.Tensor, behaviour: Behaviour,
                     reference: torch.Tensor | None = None, masks: dict[str, torch.Tensor] | None = None,
                     batch_size: int = 256, device: torch.device | None = None) -> CircuitScores:
    """Score every node and edge of ``view``'s layers for ``behaviour`` (see the module docstring).

    ``reference`` holds the corrupted inputs paired with ``inputs``; without it, the reference activations are
    the means over ``inputs``.
    """
    device = device or torch.device("cpu")
    layers = view.layers
    model = view.model
    means = None if reference is not None else _mean_trace(view, inputs, batch_size, device)
    regions = _input_nodes(masks or {}, inputs.shape[1:])
    nodes: dict[str, float] = {}
    edges: dict[tuple[str, str], float] = {}
    unconnected: list[tuple[str, str]] = []
    total_behaviour = 0.0
    for start in range(0, inputs.shape[0], batch_size):
        batch = inputs[start:start + batch_size].to(device)
        batch_targets = targets[start:start + batch_size].to(device)
        recorder = _Recorder(view, layers, keep_grad=True)
        with recorder.recording(), torch.enable_grad():
            clean_input = batch.clone().requires_grad_(batch.is_floating_point())
            metric = behaviour(model(clean_input), batch_targets)
            metric.sum().backward(retain_graph=True)  # kept for the edges scored by autograd
        total_behaviour += float(metric.detach().sum())
        if reference is not None:
            ref_batch = reference[start:start + batch_size].to(device)
            ref = _Recorder(view, layers, keep_grad=False)
            with ref.recording(), torch.no_grad():
                model(ref_batch)
            ref_inputs, ref_outputs = ref.inputs, ref.outputs
        else:
            ref_batch = means[INPUT].expand_as(batch)
            ref_inputs = {name: value.expand_as(recorder.inputs[name]) for name, value in means["in"].items()}
            ref_outputs = {name: value.expand_as(recorder.outputs[name]) for name, value in means["out"].items()}
        previous: Layer | None = None
        for layer in layers:
            output = recorder.outputs[layer.name]
            grad = output.grad if output.grad is not None else torch.zeros_like(output)
            delta_out = ref_outputs[layer.name].detach() - output.detach()
            node_scores = (units_view(delta_out, layer) * units_view(grad, layer)).sum(dim=2).abs().sum(0)
            for unit, score in enumerate(node_scores.tolist()):
                address = layer.address(unit)
                nodes[address] = nodes.get(address, 0.0) + score
            module = view.module(layer)
            x_in = recorder.inputs[layer.name]
            delta_in = ref_inputs[layer.name] - x_in
            v_grad = units_view(grad, layer)  # (n, V, P')
            if previous is None:
                if layer.kind in ("linear", "conv") and _reads_model_input(module, x_in, batch):
                    delta_full = ref_batch - batch
                    for region, mask in regions.items():
                        contribution = _contributions(module, _by_channel(delta_full * mask.to(device), module))
                        scores = torch.einsum("nuvp,nvp->nv", contribution, v_grad).abs().sum(0)
                        for unit, score in enumerate(scores.tolist()):
                            key = (region, layer.address(unit))
                            edges[key] = edges.get(key, 0.0) + score
                previous = layer
                continue
            scores = _weight_edges(previous, layer, module, delta_in, v_grad)
            if scores is None:
                upstream_out = recorder.outputs[previous.name]
                scores = gradient_edges(previous, upstream_out, ref_outputs[previous.name].detach() -
                                        upstream_out.detach(), layer, output, grad)
            if scores is None:
                if (previous.name, layer.name) not in unconnected:
                    unconnected.append((previous.name, layer.name))
            else:
                for (u, v), score in zip(torch.cartesian_prod(torch.arange(scores.shape[0]),
                                                              torch.arange(scores.shape[1])).tolist(),
                                         scores.flatten().tolist()):
                    key = (previous.address(u), layer.address(v))
                    edges[key] = edges.get(key, 0.0) + score
            previous = layer
        model.zero_grad(set_to_none=True)
    node_layer = {layer.address(u): layer.name for layer in layers for u in range(layer.size)}
    node_layer.update({region: INPUT for region in regions})
    return CircuitScores(layers, nodes, edges, node_layer, total_behaviour / inputs.shape[0], inputs.shape[0],
                         unconnected)


def _weight_edges(previous: Layer, layer: Layer, module: nn.Module, delta_in: torch.Tensor,
                  v_grad: torch.Tensor) -> torch.Tensor | None:
    """Edge scores (U, V) read off ``layer``'s weights, when its input splits into the upstream units' parts
    (MLPs, CNNs: only unit-wise functions, pooling and flattening between); else None."""
    if "heads" in (previous.kind, layer.kind) or "stream" in (previous.kind, layer.kind):
        return None
    if layer.kind == "conv" and (module.groups != 1 or module.padding_mode != "zeros"):
        return None
    split = _unit_columns(delta_in, module, previous.size)
    if split is None:
        return None
    contribution = _contributions(module, split)  # (n, U, V, P')
    return torch.einsum("nuvp,nvp->nuv", contribution, v_grad).abs().sum(0)


def _reads_model_input(module: nn.Module, x_in: torch.Tensor, batch: torch.Tensor) -> bool:
    """Whether the first audited layer is applied to the model's input itself (then input regions get edges)."""
    shape_ok = x_in.dim() == 2 if linear_maps.is_linear(module) else True
    return shape_ok and x_in.shape == batch.shape and torch.equal(x_in, batch)


def _by_channel(delta: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The model-input delta shaped for :func:`_contributions` (one pseudo-unit for Linear, channels for Conv);
    the caller sums over that axis, so a region node gathers all its channels."""
    return delta.reshape(delta.shape[0], 1, -1) if linear_maps.is_linear(module) else delta


def _mean_trace(view: ModelView, inputs: torch.Tensor, batch_size: int,
                device: torch.device) -> dict[str, dict[str, torch.Tensor] | torch.Tensor]:
    """Mean input of the model and mean input and output of every layer over ``inputs`` (streamed)."""
    sums: dict[str, dict[str, torch.Tensor]] = {"in": {}, "out": {}}
    input_sum = torch.zeros(inputs.shape[1:], dtype=torch.float64)
    recorder = _Recorder(view, view.layers, keep_grad=False)
    with recorder.recording(), torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start:start + batch_size].to(device)
            view.model(batch)
            input_sum += batch.double().sum(0).cpu()
            for kind, store in (("in", recorder.inputs), ("out", recorder.outputs)):
                for name, value in store.items():
                    total = value.double().sum(0)
                    sums[kind][name] = sums[kind][name] + total if name in sums[kind] else total
    n = inputs.shape[0]
    means = {kind: {name: (total / n).float().unsqueeze(0) for name, total in store.items()}
             for kind, store in sums.items()}
    means[INPUT] = (input_sum / n).float().unsqueeze(0).to(device)
    return means


def circuit_graph(scores: CircuitScores, max_edges: int, labels: dict[str, str] | None = None) -> nx.DiGraph:
    """The strongest ``max_edges`` edges (by absolute score) and their nodes as a DiGraph.

    Node attributes: ``layer``, ``score``, ``label`` (semantic label, when known), ``depth`` (0 = input);
    edge attribute: ``score``. ``graph.graph["left_out_edges"]`` counts the edges not kept.
    """
    ranked = sorted(scores.edges.items(), key=lambda item: -abs(item[1]))
    kept = [item for item in ranked if item[1] != 0.0][:max_edges]
    depth = {layer.name: index + 1 for index, layer in enumerate(scores.layers)}
    depth[INPUT] = 0
    graph = nx.DiGraph(behaviour=scores.behaviour, samples=scores.samples, left_out_edges=len(ranked) - len(kept))
    for (source, target), score in kept:
        for node in (source, target):
            if node not in graph:
                layer = scores.node_layer[node]
                graph.add_node(node, layer=layer, depth=depth[layer], score=scores.nodes.get(node, 0.0),
                               label=(labels or {}).get(node, ""))
        graph.add_edge(source, target, score=score)
    return graph


def graph_to_json(graph: nx.DiGraph) -> dict:
    """Node and edge lists, the form findings carry as evidence and the report draws."""
    return {
        "nodes": [{"id": n, **{k: v for k, v in attrs.items()}} for n, attrs in graph.nodes(data=True)],
        "edges": [{"source": s, "target": t, "score": attrs["score"]} for s, t, attrs in graph.edges(data=True)],
        "left_out_edges": graph.graph.get("left_out_edges", 0),
        "behaviour": graph.graph.get("behaviour"),
    }


def attribution_flow(scores: CircuitScores, sinks: dict[str, float]) -> dict[str, float]:
    """Share of the behaviour's attribution that flows back to every node along |edge scores|.

    ``sinks`` weights the output nodes (e.g. by their node scores); their shares start proportional to it, and
    each node passes its share to its sources in proportion to the incoming edges' |scores|. The input nodes'
    shares then say how much of the behaviour comes from each input region.
    """
    incoming: dict[str, list[tuple[str, float]]] = {}
    for (source, target), score in scores.edges.items():
        incoming.setdefault(target, []).append((source, abs(score)))
    total_sink = sum(abs(w) for w in sinks.values()) or 1.0
    share = {sink: abs(weight) / total_sink for sink, weight in sinks.items()}
    for layer in reversed(scores.layers):
        for node in [n for n, name in scores.node_layer.items() if name == layer.name]:
            value = share.get(node, 0.0)
            sources = incoming.get(node, [])
            total = sum(weight for _, weight in sources)
            if value == 0.0 or total == 0.0:
                continue
            for source, weight in sources:
                share[source] = share.get(source, 0.0) + value * weight / total
    return share
