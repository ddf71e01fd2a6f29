"""Hugging Face's Conv1D (GPT-2's MLP and projections) is a Linear layer with its weight stored transposed: every
rule gives the same findings on a model built from it as on the same model built from nn.Linear."""

from __future__ import annotations

import pytest
import torch
from fixtures.exactness import assert_equal_up_to_rounding
from torch import nn

from mechaudit import linear_maps
from mechaudit.engine import run_audit
from mechaudit.loading import AuditData, LoadedModel
from mechaudit.model_view import ModelView
from mechaudit.rulebook import load_rulebook
from mechaudit.spec import AuditSpec, BehaviourSpec, DataSpec, ModelSpec, Options
from mechaudit.techniques.edits import suppressed_state_dict
from mechaudit.techniques.node_ablation import ablated


class Conv1D(nn.Module):
    """Hugging Face's Conv1D as transformers defines it (``x @ W + b``, weight (nx, nf)), without importing it."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)


class MLP(nn.Module):
    def __init__(self, transposed: bool) -> None:
        super().__init__()
        make = (lambda i, o: Conv1D(o, i)) if transposed else nn.Linear
        self.fc1, self.fc2, self.out = make(12, 16), make(16, 16), make(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _twins() -> tuple[MLP, MLP]:
    """A trained Linear MLP and the same weights in Conv1D layers."""
    torch.manual_seed(0)
    x = torch.randn(400, 12)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    dense = MLP(transposed=False)
    optimiser = torch.optim.Adam(dense.parameters(), lr=0.02)
    for _ in range(150):
        optimiser.zero_grad()
        nn.functional.cross_entropy(dense(x), y).backward()
        optimiser.step()
    twin = MLP(transposed=True)
    twin.load_state_dict({k: v.t() if k.endswith("weight") else v for k, v in dense.state_dict().items()})
    return dense.eval(), twin.eval()


def _data() -> AuditData:
    torch.manual_seed(1)
    x = torch.randn(160, 12)
    labels = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    mask = torch.zeros(12)
    mask[:2] = 1.0
    corrupted = x.clone()
    corrupted[:, 0] = -corrupted[:, 0]
    return AuditData(inputs=x, labels=labels, masks={"first_two": mask}, concepts={"positive": (x[:, 0] > 0).long()},
                     pairs=(x, corrupted))


def _findings(model: nn.Module) -> list[tuple]:
    spec = AuditSpec(model=ModelSpec(name="mlp"), data=DataSpec(file=__file__), task="classification",
                     options=Options(seed=0, extend_select=("D10",)), behaviour=BehaviourSpec(kind="label_logit"))
    loaded = LoadedModel(model, "mlp", "test", {})
    result = run_audit(spec, load_rulebook("default"), loaded=loaded, data=_data())
    return [(f.rule_id, f.status, f.location.component if f.location else None, f.message) for f in result.findings]


def test_conv1d_is_a_linear_layer_with_its_weight_transposed() -> None:
    dense, twin = _twins()
    view = ModelView.discover(twin, torch.randn(2, 12))
    assert [(l.name, l.kind, l.size) for l in view.layers] == [("fc1", "linear", 16), ("fc2", "linear", 16),
                                                              ("out", "linear", 3)]
    assert view.resolve("fc2:u7") == (view.layer("fc2"), 7)
    assert torch.equal(linear_maps.weight(twin.fc1), dense.fc1.weight)
    assert linear_maps.stored(twin.fc1, dense.fc1.weight).shape == twin.fc1.weight.shape


@pytest.mark.slow
def test_every_rule_gives_the_same_findings_on_conv1d_and_linear_twins() -> None:
    dense, twin = _twins()
    expected, found = _findings(dense), _findings(twin)
    assert len({rule for rule, status, *_ in expected if status not in ("skipped", "error")}) >= 14
    assert not [f for f in expected if f[1] == "error"]
    assert found == expected


def test_weight_edit_of_a_conv1d_unit_matches_its_ablation() -> None:
    """Suppressing a unit in the weights (Conv1D: a column of the stored weight) equals mean-ablating it."""
    _, twin = _twins()
    view = ModelView.discover(twin, torch.randn(2, 12))
    inputs = torch.randn(32, 12)
    values = {"fc1": torch.linspace(0.1, 1.6, 16).unsqueeze(1)}
    with torch.no_grad(), ablated(view, ["fc1:u3", "fc1:u9"], values):
        hooked = twin(inputs)
    edited = MLP(transposed=True).eval()
    edited.load_state_dict(suppressed_state_dict(view, ["fc1:u3", "fc1:u9"], values))
    with torch.no_grad():
        assert_equal_up_to_rounding(edited(inputs), hooked)
        assert not torch.allclose(twin(inputs), hooked, atol=1e-3)  # the control: the edit changes the output
