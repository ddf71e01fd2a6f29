"""Where a layer's output holds the samples, verified at discovery, and the samples-first view of it.

mechaudit reads every activation samples first. Some layers' outputs are not: a Linear layer inside torch's
``nn.TransformerEncoder`` with its default ``batch_first=False`` writes (tokens, samples, width) (sample axis 1);
Hugging Face OPT's MLP applies ``fc1``/``fc2`` to ``hidden_states.reshape(-1, width)``, (samples x tokens, width),
and Swin's window attention to (samples x windows, tokens, width): rows folded *sample-major*, each sample's rows
together. A :class:`Layout` names such a layout; :meth:`Layout.samples_first` turns the output into (samples,
positions..., width) and :meth:`Layout.restored` turns a tensor of that shape back, so every hook function sees the
samples first and what it returns reaches the module as the module wrote it.

A layout is never guessed from shapes alone: :func:`verified_layout` takes the output on the discovery sample and
on the same samples in another order, and accepts the first candidate layout under which the output follows the
samples exactly (and the samples' outputs differ, so the check says something). A folded layer's positions are its
rows for that sample in the layer's own order (Swin: window by window, after the shifted windows' roll), not the
input's token order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """``axis``: the axis holding the samples (0 or 1); ``rows`` > 1: axis 0 holds ``rows`` rows per sample, folded
    sample-major (axis 0: (samples, rows)) or row-major (axis 1: (rows, samples)), as ``x.reshape(-1, width)`` of a
    samples-first or a sequence-first tensor leaves them."""

    axis: int = 0
    rows: int = 1

    @property
    def is_samples_first(self) -> bool:
        return self.axis == 0 and self.rows == 1

    def describe(self) -> str:
        if self.rows == 1:
            return "samples first" if self.axis == 0 else "samples on axis 1 (sequence-first)"
        order = "each sample's rows together" if self.axis == 0 else "row by row, the samples inside each"
        return f"{self.rows} rows per sample folded into axis 0 ({order})"

    def samples_first(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` in this layout as (samples, ...): folded rows become positions, merged with the next axis when
        there is one ((samples x k, m, w) -> (samples, k x m, w)). A view where the memory allows it."""
        if self.rows == 1:
            return value.movedim(self.axis, 0)
        if value.shape[0] % self.rows:
            raise ValueError(f"an output with {value.shape[0]} rows does not hold {self.rows} rows per sample, as the "
                             "layer did at discovery (inputs of another length?)")
        samples = value.shape[0] // self.rows
        split = value.unflatten(0, (samples, self.rows) if self.axis == 0 else (self.rows, samples))
        split = split.movedim(self.axis, 0)
        return split.flatten(1, 2) if value.dim() > 2 else split

    def restored(self, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`samples_first`: ``value`` (samples first) in the layout of ``like``."""
        if self.rows == 1:
            return value.movedim(0, self.axis)
        samples = like.shape[0] // self.rows
        return value.reshape(samples, self.rows, *like.shape[1:]).movedim(0, self.axis).reshape(like.shape)

    def fits(self, value: torch.Tensor) -> bool:
        """Whether ``value`` can be in this layout (for any number of samples)."""
        if self.rows > 1:
            return value.dim() >= 2 and value.shape[0] % self.rows == 0
        return value.dim() > self.axis + 1

    def holds(self, value: torch.Tensor, samples: int) -> bool:
        """Whether ``value`` (a layer module's own input, say) holds ``samples`` samples in this layout."""
        if self.rows > 1:
            return value.dim() >= 2 and value.shape[0] == samples * self.rows
        return value.dim() > self.axis + 1 and value.shape[self.axis] == samples

    def matches(self, value: torch.Tensor, like: torch.Tensor) -> bool:
        """Whether ``value`` (a Linear layer's input, say) has the leading axes of the output ``like``, so that it
        is in the same layout."""
        lead = self.axis + 1 if self.rows == 1 else 1
        return value.dim() == like.dim() and value.shape[:lead] == like.shape[:lead]


SAMPLES_FIRST = Layout()


def candidates(shape: tuple[int, ...], batch: int) -> list[Layout]:
    """The layouts an output of ``shape`` could have for ``batch`` samples, samples first first."""
    found = []
    if shape and shape[0] == batch:
        found.append(SAMPLES_FIRST)
    if len(shape) >= 3 and shape[1] == batch:
        found.append(Layout(axis=1))
    if len(shape) >= 2 and batch > 1 and shape[0] > batch and shape[0] % batch == 0:
        found += [Layout(0, shape[0] // batch), Layout(1, shape[0] // batch)]
    return found


def verified_layout(before: torch.Tensor, after: torch.Tensor, batch: int, order: torch.Tensor) -> Layout | None:
    """The first candidate layout under which ``after`` (the output on the samples taken in ``order``) is
    ``before`` (the output on the samples) reordered by ``order``, while ``before`` itself differs from it: None
    when no candidate follows the samples, or the samples' outputs are too alike to tell."""
    if before.shape != after.shape or not before.is_floating_point():
        return None
    before, after = before.detach().float(), after.detach().float()
    tolerance = 1e-4 * (1.0 + float(before.abs().amax())) if before.numel() else 0.0
    for layout in candidates(tuple(before.shape), batch):
        ours, theirs = layout.samples_first(before), layout.samples_first(after)
        if torch.allclose(theirs, ours[order], rtol=1e-4, atol=tolerance) and not torch.allclose(
                theirs, ours, rtol=1e-4, atol=tolerance):
            return layout
    return None
