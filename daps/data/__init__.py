"""Datasets for daps: statically binarized 28x28 images.

``load_dataset(name, split)`` returns an :class:`ImageSet` with float32 images
``(N, 1, 28, 28)`` in {0, 1} and int64 labels ``(N,)``.
"""

from __future__ import annotations

import os
from typing import Callable, Union

from daps.data.mnist import SPLITS, ImageSet, load_mnist, load_mnist5k

__all__ = ["DATASETS", "ImageSet", "load_dataset", "load_mnist", "load_mnist5k"]

DATASETS: dict[str, Callable[..., ImageSet]] = {
    "mnist": load_mnist,
    "mnist5k": load_mnist5k,
}


def load_dataset(
    name: str,
    split: str,
    data_dir: Union[str, "os.PathLike[str]", None] = None,
    download: bool = True,
) -> ImageSet:
    """Load split ``"train"`` or ``"test"`` of dataset ``name`` (a key of :data:`DATASETS`).

    Returns:
        ImageSet: images float32 ``(N, 1, 28, 28)`` in {0, 1}, labels int64 ``(N,)``.

    Raises:
        ValueError: unknown dataset name or split.
        FileNotFoundError: the data files could not be found (or downloaded).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return DATASETS[name](split, data_dir=data_dir, download=download)
