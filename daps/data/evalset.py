"""Validation sets: the fixed images that :func:`daps.metrics.evaluate` reconstructs at every evaluation.

An :class:`EvalSet` starts a fresh pass over the same raw batches each time :meth:`~EvalSet.batches` is called
and says how many images it holds. In-memory datasets give a :class:`TensorEvalSet` (a tensor split into
batches); folder datasets a :class:`FolderEvalSet`, which decodes and crops files on every pass and afterwards
reports how many unreadable files it replaced (``num_skipped``). :func:`eval_set` picks the right one for a
dataset config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from daps.data.imagefolder import ImageFolderDataset, eval_batches


class EvalSet(Protocol):
    """What :func:`daps.metrics.evaluate` consumes."""

    @property
    def num_images(self) -> int:
        """Images in one pass."""
        ...

    @property
    def num_skipped(self) -> int:
        """Unreadable files replaced by other images of the split during the last pass (0 for tensors)."""
        ...

    def batches(self) -> Iterator[torch.Tensor]:
        """A fresh pass over the raw batches (the same images in the same order every time)."""
        ...


@dataclass(frozen=True)
class TensorEvalSet:
    """Raw images ``(N, ...)`` already in memory (on any device), in batches of ``batch_size``."""

    images: torch.Tensor
    batch_size: int = 500

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    @property
    def num_skipped(self) -> int:
        return 0

    def batches(self) -> Iterator[torch.Tensor]:
        return iter(self.images.split(self.batch_size))


class FolderEvalSet:
    """``count`` images of a folder dataset's split (all of them, or a fixed random subset in file order: see
    :func:`~daps.data.imagefolder.eval_batches`), decoded by ``num_workers`` loader workers into uint8 batches on
    ``device``."""

    def __init__(
        self, dataset: ImageFolderDataset, batch_size: int, num_workers: int, count: int, device: torch.device
    ) -> None:
        self.dataset, self.batch_size, self.num_workers, self.count = dataset, batch_size, num_workers, count
        self.device = device
        self._skipped = 0

    @property
    def num_images(self) -> int:
        return self.count

    @property
    def num_skipped(self) -> int:
        return self._skipped

    def batches(self) -> Iterator[torch.Tensor]:
        passes = eval_batches(self.dataset, self.batch_size, self.num_workers, max_images=self.count,
                              pin_memory=self.device.type == "cuda")
        for batch in passes:
            yield batch.to(self.device, non_blocking=True)
        self._skipped = passes.num_skipped
