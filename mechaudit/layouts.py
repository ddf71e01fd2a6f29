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
input's token order. The rows per sample are those of discovery: on every later forward pass a hook put by
:meth:`~.model_view.ModelView.hook` checks the output against that pass's batch size (:class:`BatchSize`) and
raises :class:`LayoutError` on another row count (other token lengths, packed tokens) rather than split it
wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """Where an output holds its samples.

    ``rows`` == 1: the samples are on axis ``axis`` (0: samples first; 1: sequence-first, (tokens, samples, ...)).
    ``rows`` > 1: axis 0 holds ``rows`` rows per sample, and ``axis`` names the fold order of axis 0, as
    ``x.reshape(-1, width)`` leaves it: 0, sample-major ((samples, rows), from a samples-first tensor); 1, row-major
    ((rows, samples), from a sequence-first tensor). Either way ``axis`` is the axis the samples take once axis 0 is
    unflattened."""

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

    def samples_first(self, value: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """``value`` in this layout as (samples, ...): folded rows become positions, merged with the next axis when
        there is one ((samples x k, m, w) -> (samples, k x m, w)). A view where the memory allows it.

        ``samples``: the forward pass's batch size (:class:`BatchSize`), when known: an output that does not hold
        exactly that many samples (another row count per sample than at discovery: other token lengths, packed
        tokens) raises :class:`LayoutError`."""
        if self.rows == 1:
            if samples is not None and (value.dim() <= self.axis or value.shape[self.axis] != samples):
                raise LayoutError(f"its output {tuple(value.shape)} does not hold the {samples} samples of this "
                                  f"forward pass on axis {self.axis}, as at discovery")
            return value.movedim(self.axis, 0)
        if samples is None:
            if value.shape[0] % self.rows:
                raise LayoutError(f"an output with {value.shape[0]} rows does not hold {self.rows} rows per sample, "
                                  "as the layer did at discovery (inputs of another length?)")
            samples = value.shape[0] // self.rows
        elif value.shape[0] != samples * self.rows:
            raise LayoutError(f"its output {tuple(value.shape)} does not hold {self.rows} rows for each of the "
                              f"{samples} samples of this forward pass, as at discovery (inputs of another length, "
                              "or packed tokens?): mechaudit cannot tell which rows are whose")
        split = value.unflatten(0, (samples, self.rows) if self.axis == 0 else (self.rows, samples))
        split = split.movedim(self.axis, 0)
        return split.flatten(1, 2) if value.dim() > 2 else split

    def restored(self, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`samples_first`: ``value`` (samples first) in the layout of ``like``."""
        if self.rows == 1:
            return value.movedim(0, self.axis)
        samples = like.shape[0] // self.rows
        return value.reshape(samples, self.rows, *like.shape[1:]).movedim(0, self.axis).reshape(like.shape)

    def fits(self, value: torch.Tensor, samples: int | None = None) -> bool:
        """Whether ``value`` (a layer module's own input, say) can be in this layout: for ``samples`` samples when
        given, else for any number."""
        if self.rows > 1:
            return value.dim() >= 2 and (value.shape[0] % self.rows == 0 if samples is None else
                                         value.shape[0] == samples * self.rows)
        return value.dim() > self.axis + 1 and (samples is None or value.shape[self.axis] == samples)


class LayoutError(ValueError):
    """An output does not hold the samples as its layer's layout, verified at discovery, says."""


class BatchSize:
    """The batch size of the forward pass of a model running now (axis 0 of its first tensor argument, as mechaudit
    passes its samples), recorded by hooks :meth:`track` puts on the model; None outside one."""

    def __init__(self) -> None:
        self.now: int | None = None

    def __call__(self) -> int | None:
        return self.now

    def track(self, model: torch.nn.Module) -> tuple[torch.utils.hooks.RemovableHandle, ...]:
        def start(_module, args: tuple, kwargs: dict) -> None:
            first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim()), None)
            self.now = None if first is None else int(first.shape[0])

        def end(_module, _args, _output) -> None:
            self.now = None  # a forward cut short by a BaseException (EnoughSeen) is overwritten by the next one
        return (model.register_forward_pre_hook(start, with_kwargs=True),
                model.register_forward_hook(end, always_call=True))


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
    before, after = before.detach(), after.detach()
    rtol = RELATIVE_TOLERANCE.get(before.dtype, 1e-4)  # batch order moves a float computation by a few ulps
    atol = rtol * (1.0 + float(before.abs().amax())) if before.numel() else 0.0
    for layout in candidates(tuple(before.shape), batch):
        ours, theirs = layout.samples_first(before, batch), layout.samples_first(after, batch)
        if torch.allclose(theirs, ours[order], rtol=rtol, atol=atol) and not torch.allclose(
                theirs, ours, rtol=rtol, atol=atol):
            return layout
    return None


#: The relative tolerance of :func:`verified_layout` per dtype (1e-4 otherwise): a few hundred ulps of the format.
RELATIVE_TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float64: 1e-8}
