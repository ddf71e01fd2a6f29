"""What kept the circuit scores of a GPT-2-small-shaped audit at 12.7 GiB (issue 16), checked on a small model whose
up projection is audited alone (its down projection found as the unaudited reader, as in benchmarks/gpt2_small.py):

* the numeric unit-split check (:func:`~mechaudit.techniques.unit_split.unit_splits`: a forward pass with a graph,
  then two passes per reader pair) ran while the first clean run's graph, kept for the autograd edges, was alive:
  both graphs at once. It now runs before any clean run;
* the clean runs' backward passes computed every parameter's gradient (GPT-2: 0.5 GB, and the vocabulary
  projection's weight gradient is as costly as its forward pass); only the recorded activations' gradients are used;
* the reference run and the mean trace computed the logits (samples x tokens x vocabulary) that nothing reads.

Measured on the 12-block benchmark spec, R301 alone: peak RSS 12.2 GiB before, under 8 GiB after (see the report of
issue 16); here the properties themselves, on a model of a few hundred parameters.
"""

from __future__ import annotations

import gc

import pytest
import torch

import mechaudit.techniques.circuits as circuits
from mechaudit.model_view import ModelView
from mechaudit.techniques.circuits import _mean_trace, _run, edge_attribution, target_logit
from mechaudit.techniques.node_ablation import read_sites
from mechaudit.techniques.path_attribution import mean_toward, path_estimates


class _Mlp(torch.nn.Module):
    """A residual MLP over tokens: ``fc`` is audited, ``down`` (its reader) is not, ``head`` reads the stream."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.down, self.head = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8), torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x + self.down(torch.nn.functional.gelu(self.fc(x)))).mean(1))


def _setup() -> tuple[_Mlp, ModelView, torch.Tensor, torch.Tensor, torch.Tensor]:
    model = _Mlp().eval()
    generator = torch.Generator().manual_seed(1)
    x, reference = torch.randn(24, 5, 8, generator=generator), torch.randn(24, 5, 8, generator=generator)
    view = ModelView.discover(model, x[:2], only=("fc",))
    return model, view, x, reference, torch.randint(0, 3, (24,), generator=generator)


@pytest.mark.parametrize("paired", [False, True])
def test_the_split_check_never_runs_beside_a_kept_clean_graph(paired: bool, monkeypatch) -> None:
    _, view, x, reference, y = _setup()
    checked = []

    def unit_splits(*args, **kwargs):
        gc.collect()
        checked.append(sum(type(o) is circuits._Batch for o in gc.get_objects()))  # clean runs alive
        return original(*args, **kwargs)
    original = circuits.unit_splits
    monkeypatch.setattr(circuits, "unit_splits", unit_splits)
    scores = edge_attribution(view, x, y, target_logit, reference=reference if paired else None, batch_size=8)
    assert scores.read_by == {"fc": "down"}  # the reader was found and checked
    assert checked == [0]


def _counting_parameter_gradients(model: torch.nn.Module) -> list[str]:
    computed: list[str] = []
    for name, parameter in model.named_parameters():
        parameter.register_hook(lambda grad, name=name: computed.append(name))
    return computed


@pytest.mark.parametrize("paired", [False, True])
def test_edge_scores_compute_no_parameter_gradient(paired: bool) -> None:
    model, view, x, reference, y = _setup()
    computed = _counting_parameter_gradients(model)
    scores = edge_attribution(view, x, y, target_logit, reference=reference if paired else None, batch_size=8)
    assert any(abs(score) > 0 for score in scores.nodes.values())
    assert computed == []
    assert all(parameter.grad is None for parameter in model.parameters())


def test_path_estimates_compute_no_parameter_gradient() -> None:
    model, view, x, _, y = _setup()
    means = {"fc": model.fc(x).mean(0).T.detach()}  # (units, positions)
    sites = read_sites(view, {"fc": "down"}, {"down": torch.nn.functional.gelu(model.fc(x)).mean(0).detach()})
    computed = _counting_parameter_gradients(model)
    estimates = path_estimates(view, view.layers, x, y, target_logit, steps=2, toward=mean_toward(means, sites),
                               sites=sites, batch_size=8)
    assert estimates["fc"].abs().sum() > 0
    assert computed == []


def test_reference_runs_and_mean_traces_end_at_the_last_recorded_layer() -> None:
    """The head runs in the clean pass (its logits are the behaviour), not in the reference pass, and in the first
    batch of a mean trace only (where the calls of the recorded layers are counted); what they record is the same."""
    model, view, x, reference, y = _setup()
    heads = []
    model.head.register_forward_hook(lambda *_: heads.append(1))
    down = circuits.reader_layer(view, "down")
    run = _run(view, x, y, target_logit, reference, None, 0, 8, torch.device("cpu"), [*view.layers, down])
    assert len(heads) == 1
    with torch.no_grad():
        expected = model.down(torch.nn.functional.gelu(model.fc(reference[:8])))
    assert torch.allclose(run.ref_outputs["down"], expected)
    heads.clear()
    trace = _mean_trace(view, x, 8, torch.device("cpu"), [*view.layers, down])
    assert len(heads) == 1  # three batches
    with torch.no_grad():
        assert torch.allclose(trace["in"]["down"][0], torch.nn.functional.gelu(model.fc(x)).mean(0), atol=1e-6)
