"""The causal effect of an input region's pathway: how many of the region's prediction flips go away when its
pathway is cut (its direction erased at a layer, see :mod:`.direction_edit`).

For each layer, cross-fitted (the direction is estimated on the even-numbered samples and measured on the
odd-numbered ones, then the other way round, so every sample is measured held out), a sample counts as *carried*
by the pathway at that layer when removing the region flips its prediction in the intact model and no longer does
with the region's direction erased there (``flipped before - flipped after``, per sample, in {-1, 0, 1}). Their sum
over the *exposed* samples (those whose input the region's removal changes, the only ones it can flip) divided by
their number is the share of predictions that the pathway through that layer carries from the region to the
decision, whatever share of the samples is exposed (a share of all samples would fall with how common the exposed
group is); the layer where it is largest is where the pathway is cut most completely. Unlike a flow of
attributions, this is an intervention: a region whose attribution share is modest but whose removal flips many
predictions through one direction is caught; and a direction whose erasure changes predictions for other reasons
(collateral) does not count, since the same edit applies with and without the region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..activations import model_outputs
from ..model_view import Layer, ModelView
from .baselines import Removal, remove_zero
from .direction_edit import projected, region_direction
from .edits import HeldOut
from .uncertainty import Interval, bootstrap


@dataclass(frozen=True)
class PathwayEffect:
    """Per layer, the per-sample effect of cutting the region's pathway there (held-out samples)."""

    layers: list[str]
    carried: np.ndarray          # (layers, samples): flipped before minus flipped after, in {-1, 0, 1}
    flipped_before: np.ndarray   # (samples,) bool: removing the region flips the prediction, intact model
    changed: np.ndarray | None = None  # (samples,) bool: removing the region changes the input (None: every one)

    @property
    def exposed(self) -> int:
        """How many held-out samples the region's removal changes at all (the only ones it can flip)."""
        return int(self.changed.sum()) if self.changed is not None else self.carried.shape[1]

    @property
    def per_layer(self) -> np.ndarray:
        """The share of the exposed held-out samples (those whose input the removal changes) whose prediction the
        pathway at each layer carries: not diluted by samples the region cannot flip (with the zero baseline on a
        binary column, those already at 0), so it follows the pathway's strength, not how common the group is."""
        return self.carried.sum(1) / max(self.exposed, 1)

    @property
    def per_layer_of_all(self) -> np.ndarray:
        """The share of all held-out predictions carried at each layer (scales with the exposed share)."""
        return self.carried.mean(1)

    @property
    def best(self) -> int:
        """Index of the layer where cutting the pathway takes away the most flips."""
        return int(np.argmax(self.per_layer))

    @property
    def value(self) -> float:
        """The pathway's causal effect: the largest share of predictions carried, over the layers (>= 0)."""
        return max(0.0, float(self.per_layer.max()))

    def interval(self, seed: int = 0) -> Interval | None:
        """Percentile bootstrap over the held-out samples of :attr:`value` (the best layer chosen anew)."""
        carried = self.carried
        changed = self.changed if self.changed is not None else np.ones(carried.shape[1], bool)
        return bootstrap(lambda idx: max(0.0, float(carried[:, idx].sum(1).max()) / max(int(changed[idx].sum()), 1)),
                         carried.shape[1], over="held-out samples", seed=seed)

    def to_dict(self) -> dict:
        flips = int(self.flipped_before.sum())
        return {"layers": [{"layer": name, "carried_share": float(share), "carried_share_of_all": float(of_all),
                            "carried_share_of_flips": float(row.sum() / flips) if flips else 0.0}
                           for name, share, of_all, row in zip(self.layers, self.per_layer, self.per_layer_of_all,
                                                               self.carried)],
                "best": self.layers[self.best], "flip_rate_before": float(self.flipped_before.mean()),
                "evaluated_samples": int(self.carried.shape[1]), "exposed_samples": self.exposed,
                "exposed_share": self.exposed / max(int(self.carried.shape[1]), 1),
                "cut": "directional ablation of the region's mean effect at one layer (a simulation), estimated "
                       "on one half of the samples and measured on the other, both ways"}


#: An input element counts as changed by the removal when it moves by more than this, relative to its size (plus the
#: same absolute): a baseline computed in floating point (a mean, a blur) leaves rounding noise of about 1e-7 on
#: elements it does not change, which must not count as exposure.
EXPOSURE_TOLERANCE = 1e-5


def exposed_samples(inputs: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """(samples,) bool: the samples whose input the region's removal changes beyond rounding noise."""
    return (~torch.isclose(removed.double(), inputs.double(), rtol=EXPOSURE_TOLERANCE, atol=EXPOSURE_TOLERANCE)
            ).flatten(1).any(1)


def _predictions(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    return model_outputs(model, inputs, batch_size, device).argmax(-1)


def _halves(inputs: torch.Tensor, mask: torch.Tensor, remove: Removal) -> tuple[HeldOut, HeldOut]:
    """The even/odd :class:`HeldOut` split and its mirror (fit on the odd-numbered samples, measure the even)."""
    forward = HeldOut.split(inputs, None, mask, remove)
    return forward, HeldOut(forward.inputs, forward.mask, forward.fit_inputs, None, forward.fit_mask, remove)


def pathway_effect(view: ModelView, layers: list[Layer], inputs: torch.Tensor, mask: torch.Tensor,
                   batch_size: int, device: torch.device, remove: Removal = remove_zero) -> PathwayEffect | None:
    """The :class:`PathwayEffect` of ``mask``'s region through each of ``layers``; None with fewer than 4 samples or
    when the region changes none of the layers (there is no pathway to cut)."""
    if inputs.shape[0] < 4:
        return None
    halves = _halves(inputs, mask, remove)

    def flips(samples: HeldOut) -> torch.Tensor:
        return (_predictions(view.model, samples.inputs, batch_size, device)
                != _predictions(view.model, remove(samples.inputs, samples.mask), batch_size, device)).cpu()

    before = torch.cat([flips(half) for half in halves])
    changed = torch.cat([exposed_samples(half.inputs, remove(half.inputs, half.mask)) for half in halves])
    names, rows = [], []
    for layer in layers:
        after = []
        for half in halves:
            edit = region_direction(view, layer, half.fit_inputs, half.fit_mask, batch_size, device, remove)
            if edit is None:
                break
            with projected(view, [edit]):
                after.append(flips(half))
        if len(after) == len(halves):
            names.append(layer.name)
            rows.append((before.double() - torch.cat(after).double()).numpy())
    if not rows:
        return None
    return PathwayEffect(names, np.stack(rows), before.numpy(), changed.cpu().numpy())
