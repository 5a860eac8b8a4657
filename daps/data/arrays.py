"""``arrays``: one's own images from a NumPy ``.npz`` file, held in memory like CIFAR-10.

The file (``data.data_dir``, or ``--data-dir`` for the commands that read data) holds

- ``train`` and ``test``: uint8 pixels, ``(N, H, W)`` (grey), ``(N, C, H, W)`` or ``(N, H, W, C)`` with C = 1 or 3
  (read as channels-first when the second axis is 1 or 3, else channels-last);
- optionally ``train_labels`` and ``test_labels`` (integers >= 0, one per image; zeros when absent) and
  ``class_names`` (strings, one per label value), which ``daps export-codes`` carries with the codes.

Pixels are mapped to [-1, 1] (``(p - 127.5) / 127.5``) and modelled with the learned-variance Gaussian of the
image datasets. The file is read with ``allow_pickle=False``: it can hold no code. A run records the file's SHA-256
and shapes (``arrays_data.json``), and ``train --resume``, ``eval``, ``export-codes`` refuse a run whose file has
changed since.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch

from daps.data.paths import NPZ_ERRORS, ImageSet, PathLike, check_recorded_file, check_split, named_npz, read_npz
from daps.errors import UserError
from daps.runfolder import file_digest

if TYPE_CHECKING:
    from daps.config import DataConfig

log = logging.getLogger("daps")

RUN_FILE = "arrays_data.json"
"""What an ``arrays`` run saves about its file."""
MAX_CLASSES = 1_000_000
"""The most label values an ``arrays`` file may have (labels are class indices 0..K-1, each given a name)."""


def arrays_file(data_dir: PathLike | None) -> Path:
    """The ``.npz`` file named by ``data_dir`` (see :func:`daps.data.paths.named_npz`)."""
    return named_npz(data_dir, "arrays", "images")


def nchw_shape(shape: tuple[int, ...] | list[int], where: str) -> tuple[int, int, int]:
    """The ``(C, H, W)`` of one image of an array of shape ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)``
    (C = 1 or 3; channels-first when the second axis is 1 or 3)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 3:
        return (1, shape[1], shape[2])
    if len(shape) == 4 and shape[1] in (1, 3):
        return (shape[1], shape[2], shape[3])
    if len(shape) == 4 and shape[3] in (1, 3):
        return (shape[3], shape[1], shape[2])
    raise UserError(f"{where} has shape {shape}; arrays needs (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3")


def to_nchw(images: np.ndarray, where: str) -> np.ndarray:
    """uint8 images ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` (C = 1 or 3) as ``(N, C, H, W)``."""
    if images.dtype != np.uint8:
        raise UserError(f"{where} has dtype {images.dtype}; arrays needs uint8 pixels (0-255)")
    shape = nchw_shape(images.shape, where)
    if images.ndim == 3:
        return images[:, None]
    return images if images.shape[1:] == shape else images.transpose(0, 3, 1, 2)


def image_shape(split: str, data_dir: PathLike | None = None) -> tuple[int, int, int]:
    """The ``(C, H, W)`` of split ``split``'s images, from the array's header (the images are not read)."""
    check_split(split)
    path = arrays_file(data_dir)
    shapes = _stored_shapes(path)
    if split not in shapes:
        _missing(path, split)
    return nchw_shape(shapes[split], f"arrays: {path}[{split!r}]")


def load_arrays(split: str, data_dir: PathLike | None = None) -> ImageSet:
    """Split ``train`` or ``test`` of the npz named by ``data_dir``: uint8 images ``(N, C, H, W)``, int64 labels."""
    check_split(split)
    path = arrays_file(data_dir)
    found = read_npz(path, "arrays", (split, f"{split}_labels"))
    if split not in found:
        _missing(path, split)
    images = to_nchw(found[split], f"arrays: {path}[{split!r}]")
    if len(images) == 0:
        raise UserError(f"arrays: {path}[{split!r}] holds no images")
    labels = _checked_labels(found.get(f"{split}_labels"), len(images), path, split)
    if split == "train":
        _check_splits_agree(path)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), "arrays")


def _check_splits_agree(path: Path) -> None:
    """What only both splits together can tell, checked when training reads the file rather than first when
    ``export-codes`` does: images of one size, class names for every label; a warning when only one split has
    labels (the other's images are all labelled 0)."""
    shapes = _stored_shapes(path)
    if "test" in shapes and shapes["train"][1:] != shapes["test"][1:]:
        raise UserError(f"arrays: {path} holds train images of shape {tuple(shapes['train'][1:])} and test images of "
                        f"shape {tuple(shapes['test'][1:])}: both splits must hold images of one size and layout")
    labelled = [split for split in ("train", "test") if f"{split}_labels" in shapes]
    if len(labelled) == 1:
        other = "test" if labelled == ["train"] else "train"
        log.warning("arrays: %s has %s_labels but no %s_labels: every %s image is labelled 0", path, labelled[0],
                    other, other)
    class_names(path)


def _missing(path: Path, split: str) -> NoReturn:
    has = ", ".join(_stored_shapes(path)) or "nothing"
    raise UserError(f"arrays: {path} has no array {split!r} (it holds {has}; needs 'train' and 'test')")


def _checked_labels(labels: np.ndarray | None, count: int, path: Path, split: str) -> np.ndarray:
    """A split's labels as int64 (zeros when the file has none), checked to be ``count`` integers >= 0."""
    if labels is None:
        return np.zeros(count, dtype=np.int64)
    if labels.shape != (count,) or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise UserError(f"arrays: {path}[{split + '_labels'!r}] must be {count} integers >= 0, one per image "
                        f"(it has shape {labels.shape} and dtype {labels.dtype})")
    return labels.astype(np.int64)


def class_names(data_dir: PathLike | None) -> tuple[str, ...]:
    """The file's ``class_names`` (checked to name every label), else the label values of both splits as strings
    (the same names for either split, so that codes of the two splits can be compared)."""
    path = arrays_file(data_dir)
    found = read_npz(path, "arrays", ("train_labels", "test_labels", "class_names"))
    shapes = _stored_shapes(path)  # the splits' image counts, from the headers: the images are not read
    labels = []
    for split in ("train", "test"):
        if split not in shapes:
            _missing(path, split)
        labels.append(_checked_labels(found.get(f"{split}_labels"), shapes[split][0], path, split))
    count = max((int(y.max()) + 1 for y in labels if y.size), default=0)
    if count > MAX_CLASSES:  # a name per value up to the largest: ids such as 20231105 would take gigabytes
        raise UserError(f"arrays: {path}'s labels go up to {count - 1}; labels are class indices 0..K-1 with K at most "
                        f"{MAX_CLASSES:,}: renumber them (np.unique(labels, return_inverse=True)) and give the "
                        "originals as class_names")
    names = found.get("class_names")
    if names is None:
        return tuple(str(i) for i in range(count))
    if names.ndim != 1 or names.dtype.kind != "U" or len(names) < count:
        raise UserError(f"arrays: {path}['class_names'] must be {count} or more strings, one per label value "
                        f"(it has shape {names.shape} and dtype {names.dtype})")
    return tuple(str(n) for n in names)


def arrays_run_files(data: DataConfig) -> dict[str, Any]:
    """What an ``arrays`` run saves beside its checkpoints: the file's SHA-256 and the shape of each split."""
    path = arrays_file(data.data_dir)
    record = {"file": str(path.resolve()), "sha256": file_digest(path, "sha256"), "shapes": _stored_shapes(path)}
    return {RUN_FILE: record}


def _stored_shapes(path: Path) -> dict[str, list[int]]:
    """The shape of each array in npz ``path``, read from the arrays' headers (nothing is loaded)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith(".npy"):
                    with archive.open(name) as f:
                        version = np.lib.format.read_magic(f)
                        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                  else np.lib.format.read_array_header_2_0)(f)
                    shapes[name.removesuffix(".npy")] = list(header[0])
    except NPZ_ERRORS as err:
        why = f"{type(err).__name__}: {err}"
        raise UserError(f"arrays: {path} is not a readable .npz of plain arrays ({why})") from None
    return shapes


def check_run_arrays(run_dir: Path, data: DataConfig) -> None:
    """UserError when the file a run was trained on (``arrays_data.json``) is not the file ``data`` names now:
    another file, or the same file changed since."""
    check_recorded_file(Path(run_dir) / RUN_FILE, arrays_file(data.data_dir))
