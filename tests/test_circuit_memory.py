"""What kept the circuit scores of a GPT-2-small-shaped audit at 12.7 GiB (issue 16), checked on a small model whose
up projection is audited alone (its down projection found as the unaudited reader, as in benchmarks/gpt2_small.py):

* the numeric unit-split check (:func:`~mechaudit.techniques.unit_split.unit_splits`: a forward pass with a graph,
  then two passes per reader pair) ran while the first clean run's graph, kept for the autograd edges, was alive:
  both graphs at once. It now runs before any clean run;
* the clean runs' backward passes computed every parameter's gradient (GPT-2: 0.5 GB, and the vocabulary
  projection's weight gradient is as costly as its forward pass); only the recorded activations' gradients are used;
* the reference run and the mean trace computed the logits (samples x tokens x vocabulary) that nothing reads.

Measured on the 12-block benchmark spec, R301 alone: peak RSS 12.2 GiB before, under 8 GiB after (see the report of
issue 16); here the properties themselves, on a model of a few hundred parameters, and what the changes must not
break: a behaviour without gradient is an error (not all-zero scores), an early stop is not caught by a model's
``except Exception`` and equals a full pass when a recorded module runs twice, and the split check keeps no graph
behind an input whose shape cannot split.
"""

from __future__ import annotations

import gc

import pytest
import torch

import mechaudit
import mechaudit.techniques.circuits as circuits
import mechaudit.techniques.unit_split as unit_split
from mechaudit.model_view import ModelView
from mechaudit.techniques.circuits import _mean_trace, _run, edge_attribution, target_logit
from mechaudit.techniques.early_stop import EnoughSeen, forward_until_seen
from mechaudit.techniques.node_ablation import read_sites
from mechaudit.techniques.path_attribution import mean_toward, path_estimates
from mechaudit.techniques.site_grads import NotDifferentiable
from mechaudit.techniques.unit_split import _close, comparison_pool, module_readers, unit_splits


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
    """Three audited layers: ``fc -> down`` read off the weights, ``down -> head`` (past the residual sum) by
    autograd; neither computes a weight's gradient."""
    model, _, x, reference, y = _setup()
    view = ModelView.discover(model, x[:2], only=("fc", "down", "head"))
    computed = _counting_parameter_gradients(model)
    scores = edge_attribution(view, x, y, target_logit, reference=reference if paired else None, batch_size=8)
    assert any(abs(score) > 0 for score in scores.nodes.values())
    assert [(b.source_layer, b.target_layer) for b in scores.edges.blocks] == [("fc", "down"), ("down", "head")]
    assert [b.method.split(":")[0] for b in scores.edges.blocks] == ["weights", "autograd"]
    assert all(b.scores.abs().sum() > 0 for b in scores.edges.blocks)
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


class _Frozen(torch.nn.Module):
    """Two audited layers; ``frozen`` runs the forward under ``torch.no_grad`` (the behaviour has no gradient)."""

    def __init__(self, frozen: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head, self.frozen = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3), frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def _frozen_setup(frozen: bool) -> tuple[_Frozen, ModelView, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x, reference = torch.randn(16, 8, generator=generator), torch.randn(16, 8, generator=generator)
    model = _Frozen(frozen).eval()
    return model, ModelView.discover(model, x[:2], only=("a", "b")), x, reference, torch.randint(0, 3, (16,))


@pytest.mark.parametrize("paired", [False, True])
def test_a_behaviour_without_gradient_is_an_error_not_zero_scores(paired: bool) -> None:
    _, view, x, reference, y = _frozen_setup(frozen=False)  # the control: scored
    scores = edge_attribution(view, x, y, target_logit, reference=reference if paired else None, batch_size=8)
    assert any(abs(score) > 0 for score in scores.nodes.values())
    _, view, x, reference, y = _frozen_setup(frozen=True)
    with pytest.raises(NotDifferentiable, match="does not depend differentiably on the audited layers"):
        edge_attribution(view, x, y, target_logit, reference=reference if paired else None, batch_size=8)


def test_path_estimates_without_gradient_raise() -> None:
    for frozen in (False, True):
        _, view, x, _, y = _frozen_setup(frozen)
        run = lambda: path_estimates(view, view.layers, x, y, target_logit, steps=2,  # noqa: E731
                                     toward=lambda _layer, units: torch.zeros_like(units), batch_size=8)
        if frozen:
            with pytest.raises(NotDifferentiable):
                run()
        else:
            assert run()["a"].abs().sum() > 0


def test_the_circuit_rule_reports_a_behaviour_without_gradient_as_an_error_finding() -> None:
    model, _, x, _, _ = _frozen_setup(frozen=True)
    labels = model(x).argmax(1)
    result = mechaudit.audit(model, x, labels=labels, select=["R301"], behaviour={"kind": "class_logit", "target": "0"})
    assert [f.status for f in result.findings] == ["error"]
    assert "differentiably" in result.findings[0].message


class _Fallback(torch.nn.Module):
    """Tries a path and, if it ever raises, falls back for good (``except Exception``): an early stop must not be
    taken for a failure."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if self.fast:
            try:
                h = torch.relu(self.b(h))
            except Exception:  # noqa: BLE001 - the pattern under test
                self.fast = False
                h = torch.relu(self.b(h)) * 0.5
        else:
            h = torch.relu(self.b(h)) * 0.5
        return self.head(h)


def test_a_model_catching_exceptions_does_not_catch_the_early_stop() -> None:
    generator = torch.Generator().manual_seed(1)
    x, reference = torch.randn(16, 8, generator=generator), torch.randn(16, 8, generator=generator)
    y = torch.randint(0, 3, (16,), generator=generator)
    model = _Fallback().eval()
    with torch.no_grad():
        expected = target_logit(model(x), y).mean().item()
    view = ModelView.discover(model, x[:2], only=("a", "b"))
    for paired in (True, False):
        scores = edge_attribution(view, x, y, target_logit, reference=reference if paired else None, batch_size=8)
        assert model.fast
        assert scores.behaviour == pytest.approx(expected, rel=1e-6)


def test_only_the_early_stop_is_caught() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    for raised, escapes in ((EnoughSeen, False), (KeyboardInterrupt, True), (RuntimeError, True)):
        def stop(*_args, raised=raised) -> None:
            raise raised
        handle = model[0].register_forward_hook(stop)
        try:
            if escapes:
                with pytest.raises(raised):
                    forward_until_seen(model, torch.ones(1, 4))
            else:
                forward_until_seen(model, torch.ones(1, 4))
        finally:
            handle.remove()


class _Twice(torch.nn.Module):
    """Two audited up projections ``fc1``, ``fc2`` whose unaudited reader is one shared ``down``: ``down`` is
    recorded (as their reader) and runs twice per pass, the second time after ``fc2``; ``head`` after it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.down(torch.nn.functional.gelu(self.fc1(x)))
        x = x + self.down(torch.nn.functional.gelu(self.fc2(x)))
        return self.head(x.mean(1))


@pytest.mark.parametrize("paired", [False, True])
def test_early_stopping_with_a_layer_called_twice_scores_as_a_full_pass(paired: bool, monkeypatch) -> None:
    generator = torch.Generator().manual_seed(1)
    x, reference = torch.randn(16, 5, 8, generator=generator), torch.randn(16, 5, 8, generator=generator)
    y = torch.randint(0, 3, (16,), generator=generator)
    model = _Twice().eval()
    view = ModelView.discover(model, x[:2], only=("fc1", "fc2"))
    heads: list[int] = []
    model.head.register_forward_hook(lambda *_: heads.append(1))
    tracked = [*view.layers, circuits.reader_layer(view, "down")]

    def score() -> tuple[circuits.CircuitScores, dict]:
        return (edge_attribution(view, x, y, target_logit, reference=reference if paired else None, batch_size=8),
                _mean_trace(view, x, 8, torch.device("cpu"), tracked))
    stopped, stopped_trace = score()
    stopped_heads = len(heads)
    heads.clear()
    monkeypatch.setattr(circuits, "all_seen", lambda *_: False)  # every pass in full
    full, full_trace = score()
    assert stopped_heads < len(heads)  # the early stop did end passes before the head
    for kind in ("in", "out"):  # down's second call is the one recorded (its last), in every batch
        for name in ("fc1", "fc2", "down"):
            torch.testing.assert_close(stopped_trace[kind][name], full_trace[kind][name])
    assert stopped.nodes == pytest.approx(full.nodes, rel=1e-6, abs=1e-9)
    assert len(stopped.edges.blocks) == len(full.edges.blocks) > 0
    for ours, theirs in zip(stopped.edges.blocks, full.edges.blocks):
        torch.testing.assert_close(ours.scores, theirs.scores)


class _TwoBlocks(torch.nn.Module):
    """Two residual MLP blocks over tokens: ``fc1``'s reader ``down1`` splits by its units; ``fc2`` reads the
    stream (8 wide, not ``fc1``'s 16 units): a pair whose shapes cannot split."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.down1 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
        self.fc2, self.down2, self.head = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8), torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.down1(torch.nn.functional.gelu(self.fc1(x)))
        x = x + self.down2(torch.nn.functional.gelu(self.fc2(x)))
        return self.head(x.mean(1))


def test_the_split_check_keeps_no_graph_behind_an_input_that_cannot_split(monkeypatch) -> None:
    model = _TwoBlocks().eval()
    x = torch.randn(16, 5, 8, generator=torch.Generator().manual_seed(1))
    view = ModelView.discover(model, x[:2], only=("fc1", "fc2"))
    readers = module_readers(view, x[:8])
    held, stopped = {}, {}
    original = unit_split._splits

    def splits(view, previous, layer, out, read, other, stop=False):
        held[(previous.name, layer.name)] = read.requires_grad
        if stop:
            stopped[layer.name] = original(view, previous, layer, out, read, other, stop=True)
        return original(view, previous, layer, out, read, other, stop=False)  # every pass in full
    monkeypatch.setattr(unit_split, "_splits", splits)
    found = unit_splits(view, x[:8], comparison_pool(x, None), readers=readers)
    assert held == {("fc1", "fc2"): False, ("fc1", "down1"): True, ("fc2", "down2"): True}
    assert found.splits == {"fc2": False, "down1": True, "down2": True}
    assert stopped == found.splits  # each layer ran once: every pass on other inputs could end early, to the same


def test_close_treats_nan_as_different_and_infinity_as_itself() -> None:
    nan, inf = float("nan"), float("inf")
    assert not _close([torch.tensor([1.0, nan])], [torch.tensor([1.0, nan])])
    assert not _close([torch.tensor([1.0, 2.0])], [torch.tensor([1.0, nan])])
    assert _close([torch.tensor([1.0, 2.0, inf])], [torch.tensor([1.0, 2.0, inf])])
    assert not _close([torch.tensor([1.5, 2.0, inf])], [torch.tensor([1.0, 2.0, inf])])  # atol from finite values
    assert not _close([torch.tensor([1.0, -inf])], [torch.tensor([1.0, inf])])
    one_sample = torch.randn(1, 1000, generator=torch.Generator().manual_seed(0))
    changed = one_sample.clone()
    changed[0, 999] += 1.0
    assert _close([one_sample], [one_sample + 1e-7], chunk_elements=7)
    assert not _close([changed], [one_sample], chunk_elements=7)  # one sample in slices: the last slice counts
