"""What a check receives: the model, its view, the data, and shared artifacts computed once, on first use."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from . import sharded
from .activations import UnitStats
from .loading import AuditData
from .model_view import ModelView
from .spec import BehaviourSpec

T = TypeVar("T")


@dataclass(frozen=True)
class Artifact(Generic[T]):
    """A typed artifact several rules share (attributions, the sanity verdict, the semantic dictionary, circuit
    scores, ...): ``compute(context, *args)`` runs once per audit and arguments, on first use, whichever rule asks
    first, so no rule depends on another having run before it. Read it with :meth:`AuditContext.shared`."""

    name: str
    compute: Callable[..., T]


@dataclass
class AuditContext:
    view: ModelView
    data: AuditData
    task: str
    class_names: tuple[str, ...]
    device: torch.device
    batch_size: int
    max_samples: int
    seed: int
    behaviour: BehaviourSpec | None = None
    #: Regression: how several outputs per sample become one value per sample ("mean" or an output index).
    output: str | int = "mean"
    #: The rules this audit runs (set by the engine), so that a shared artifact can use another rule's parameters:
    #: e.g. L201 marks its attributions unreliable when the attribution sanity rule is part of the audit and fails.
    rules: tuple[Any, ...] = ()
    #: Binary files rules write into the output directory (relative path -> bytes), e.g. D103's dictionaries.
    attachments: dict[str, bytes] = field(default_factory=dict)
    #: The baseline audit (a bundle directory or its findings.json) given with ``--baseline``, or None: D107 reads
    #: the representation fingerprints stored beside it.
    baseline: Path | None = None
    _artifacts: dict[tuple, Any] = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module:
        return self.view.model

    @cached_property
    def outputs(self) -> torch.Tensor:
        """Model outputs on the whole audit set (CPU; under torchrun, each rank computes its shard)."""
        return sharded.outputs(self.model, self.data.inputs, self.batch_size, self.device)

    @property
    def token_position(self) -> int:
        """The token position a next-token model is judged at: the behaviour's, else the last."""
        return self.behaviour.position if self.behaviour is not None else -1

    def logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """The logits a prediction is read from (``outputs`` (..., [positions,] classes)): for a next-token model,
        those at :attr:`token_position`."""
        return outputs[..., self.token_position, :] if self.task == "next-token" and outputs.dim() >= 3 else outputs

    @cached_property
    def predictions(self) -> torch.Tensor:
        """Predicted class per sample (for a next-token model: the predicted token at :attr:`token_position`)."""
        return self.logits(self.outputs).argmax(dim=-1)

    @cached_property
    def accuracy(self) -> float:
        assert self.data.labels is not None
        return float((self.predictions == self.data.labels).float().mean())

    @cached_property
    def unit_stats(self) -> dict[str, UnitStats]:
        """Streaming per-unit statistics of every audited layer (one pass, shared by all checks; under torchrun,
        each rank streams over its shard)."""
        return sharded.statistics(self.view, self.view.layers, self.data.inputs, self.batch_size, self.device)

    def sample_indices(self, limit: int | None = None) -> torch.Tensor:
        """A seeded, sorted subset of at most ``limit`` (default: ``max_samples``) sample indices."""
        n, limit = len(self.data), min(limit or self.max_samples, self.max_samples)
        if n <= limit:
            return torch.arange(n)
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(n, generator=generator)[:limit].sort().values

    def class_name(self, index: int) -> str:
        return self.class_names[index] if index < len(self.class_names) else str(index)

    def rule_for_check(self, check: str) -> Any | None:
        """The first rule of this audit that runs ``check`` (a registered check name), or None."""
        return next((rule for rule in self.rules if rule.check.name == check), None)

    def shared(self, artifact: Artifact[T], *args: Hashable) -> T:
        """``artifact`` for ``args``, computed on first use and kept for the rest of the audit."""
        key = (artifact.name, args)
        if key not in self._artifacts:
            self._artifacts[key] = artifact.compute(self, *args)
        return self._artifacts[key]
