"""A bounded buffer of activation vectors to train dictionaries on: filled in one streamed pass, never larger
than its budget, and read back as a stream (see :mod:`.sae`) of shuffled chunks.

A real model's layers give millions of token vectors (2,048 samples x 128 tokens x 768 units: 800 MB in float32);
a dictionary needs a uniform sample of them, seen many times. :func:`fill_buffer` keeps at most ``max_values``
numbers (a seeded uniform subset of the vectors when there are more), held in memory up to ``memory_values`` and
otherwise in a disk-backed array (``numpy.memmap`` in a temporary directory, removed on :meth:`Buffer.close`),
so memory stays one chunk plus the buffer's in-memory part whatever the data. The vectors are stored in a seeded
random order, so that contiguous chunks read back are already mixed across samples and positions.

Example::

    with fill_buffer(layer_stream(...), total=n_vectors, width=384, max_values=2**24) as buffer:
        dictionary = train_dictionary(buffer.stream(), SAEConfig(features=1536, k=16))
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .sae import Stream


@dataclass
class Buffer:
    """Vectors (``count`` x ``width``, float32) in memory or on disk; :meth:`stream` reads them in chunks."""

    data: torch.Tensor | np.memmap
    count: int
    total: int                  #: vectors offered; ``count`` of them were kept
    on_disk: bool
    _directory: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def nbytes(self) -> int:
        return self.count * self.width * 4

    def stream(self, chunk: int = 8192) -> Stream:
        def chunks() -> Iterator[torch.Tensor]:
            for start in range(0, self.count, chunk):
                part = self.data[start:start + chunk]
                yield part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))
        return chunks

    def as_tensor(self, limit: int | None = None) -> torch.Tensor:
        """The first ``limit`` vectors (all by default) in memory: a random subset, since they are shuffled."""
        part = self.data[:limit or self.count]
        return part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))

    def describe(self) -> dict:
        return {"vectors": self.count, "offered": self.total, "width": self.width, "megabytes": round(
            self.nbytes / 2**20, 2), "storage": "disk (numpy memmap in a temporary directory)" if self.on_disk
            else "memory"}

    def close(self) -> None:
        if self._directory is not None:
            self.data = np.zeros((0, self.width), np.float32)
            self._directory.cleanup()
            self._directory = None

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def fill_buffer(stream: Stream, total: int, width: int, max_values: int, memory_values: int,
                seed: int = 0) -> Buffer:
    """One pass over ``stream`` (``total`` vectors of ``width`` in all): keep a seeded uniform subset of at most
    ``max_values // width`` vectors, in memory when they hold at most ``memory_values`` numbers, else on disk."""
    keep = max(1, min(total, max_values // max(width, 1)))
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[torch.randperm(total, generator=generator)[:keep]] = True
    slots = torch.full((total,), -1, dtype=torch.long)
    slots[chosen] = torch.randperm(keep, generator=generator)   # a random order of the kept vectors
    on_disk = keep * width > memory_values
    directory = tempfile.TemporaryDirectory(prefix="mechaudit-buffer-") if on_disk else None
    data: torch.Tensor | np.memmap = (
        np.memmap(Path(directory.name) / "vectors.f32", np.float32, "w+", shape=(keep, width)) if on_disk
        else torch.empty(keep, width))
    seen = 0
    try:
        for chunk in stream():
            chunk = chunk.float().cpu()
            where = slots[seen:seen + chunk.shape[0]]
            if where.shape[0] < chunk.shape[0]:
                raise ValueError(f"the stream holds more than the {total} vectors announced")
            mask = where >= 0
            if bool(mask.any()):
                rows, targets = chunk[mask[:chunk.shape[0]]], where[mask].numpy()
                if on_disk:
                    order = np.argsort(targets)  # sorted writes into the memmap
                    data[targets[order]] = rows.numpy()[order]
                else:
                    data[torch.from_numpy(targets)] = rows
            seen += chunk.shape[0]
    except BaseException:
        if directory is not None:
            directory.cleanup()
        raise
    if seen != total:
        if directory is not None:
            directory.cleanup()
        raise ValueError(f"the stream held {seen} vectors, not the {total} announced")
    return Buffer(data, keep, total, on_disk, directory)
