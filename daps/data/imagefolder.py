"""Class-folder image datasets (ImageNet-style) and the streams that feed them; the crops are in
:mod:`daps.data.transforms`, the ImageNet files in :mod:`daps.data.imagenet`.

A dataset is a tree ``root/<class>/<image files>``; classes are the sorted folder names (label = rank), files
are sorted, so the order is deterministic. Training items get a random resized crop (scale (0.08, 1),
ratio (3/4, 4/3), bilinear) and a horizontal flip with p = 0.5; evaluation items get a resize of the shorter
side plus a center crop. Items are uint8 ``(3, R, R)`` tensors; standardize with :data:`IMAGENET_MEAN` /
:data:`IMAGENET_STD` (0-255 scale).

Randomness. No global RNG is used anywhere. A training item's augmentation comes from a fresh
``torch.Generator`` seeded with a hash of ``(seed, epoch, index)``; :class:`ImageStream` hands the epoch to the
dataset together with the index (its sampler yields ``(index, epoch)`` keys), so the same image of the same
epoch is cropped the same way whichever worker process decodes it, with or without workers, and after a
resume. The epoch order is a permutation drawn from a generator seeded with a hash of ``(seed, epoch)``, so
a stream resumed at batch ``k`` computes the permutation of its epoch directly, decoding nothing it skips.

Unreadable files. Opening an image that PIL cannot read (corrupt bytes, a text file named ``.JPEG``,
truncation) is not an error: the dataset substitutes the next index (up to ``max_attempts`` files) and returns
the paths it skipped as the third element of the item, ``(image, label, skipped_paths)``.
:func:`collate_images` gathers them per batch, and :class:`ImageStream` / :func:`eval_batches` keep the count
and the set of skipped paths in the main process and log a warning once per path. The dataset remembers the
unreadable paths of its process, so each is tried only once per process.

ILSVRC2012 itself: the official tar files are not handled here; give an extracted class-folder tree
(``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` -- val must already be sorted into class folders).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, get_worker_info

from daps.data.paths import PathLike
from daps.data.transforms import (
    epoch_permutation,
    fixed_subset,
    hash_seed,
    pil_to_uint8,
    random_horizontal_flip,
    random_resized_crop,
    resize_center_crop,
    to_rgb,
)
from daps.errors import UserError, first_few

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "EvalBatches",
    "ImageFolderDataset",
    "ImageStream",
    "collate_images",
    "eval_batches",
    "find_images",
]

log = logging.getLogger(__name__)

# Per-channel statistics of the ImageNet training set on the 0-255 scale (original: data/datasets/imagenet.py).
IMAGENET_MEAN = (123.095, 115.324, 102.224)
IMAGENET_STD = (68.819, 66.551, 69.687)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
)

# What PIL raises on unreadable files: UnidentifiedImageError and truncation are OSErrors; some broken
# PNG / GIF headers raise SyntaxError, struct.error, EOFError or ValueError; oversized images DecompressionBombError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


# --------------------------------------------------------------------------- finding files


def is_image_name(name: str) -> bool:
    """Whether a file of this name is read as an image: a suffix of :data:`IMAGE_EXTENSIONS` (any case), and not
    hidden (macOS's ``._x.jpg`` shadow files, ``.DS_Store``)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def class_folders(root: PathLike) -> list[str]:
    """The sorted names of the class folders of ``root`` (hidden ones left out; none when ``root`` is missing)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def find_images(root: PathLike, classes: Sequence[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """All images of a class-folder tree ``root/<class>/**/<file>`` (extensions: :data:`IMAGE_EXTENSIONS`,
    any case; hidden files and folders ignored).

    ``classes``: the class names to number (default: the sorted folder names of ``root``), e.g. those of both
    splits, so that a class missing from one split does not shift the labels of the others there.

    Returns:
        ``(paths, labels, classes)``: label = index in ``classes``, paths sorted by class, then by path. Class
        folders without images (named in a warning), or absent, keep their label.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no class folders, or no image files in them.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder (expected {root}/<class>/<image files>)")
    here = class_folders(root)
    if not here:
        raise UserError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    classes = list(classes) if classes is not None else here
    present = set(here)
    unknown = sorted(present - set(classes))
    if unknown:
        raise UserError(f"{root}: class folder {unknown[0]!r} is not one of the {len(classes)} classes given")
    paths: list[Path] = []
    labels: list[int] = []
    # files a user may have meant as images: images beside the class folders (not in one), files of another
    # suffix in a class folder (.jfif, .heic); a tree's own notes beside the class folders (labels.tsv) are not
    left_out = [str(f) for f in root.iterdir() if f.is_file() and is_image_name(f.name)]
    empty: list[str] = []  # class folders without images: a label that this split never shows
    for label, name in enumerate(classes):
        if name not in present:
            continue
        found: list[str] = []
        # Real folders walked, each once; a link back up the tree (``ln -s .. up``) is not followed: it would list
        # the class's files again, and other classes' files under this class.
        top = Path(os.path.realpath(root / name))
        visited: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in visited or (real != str(top) and top.is_relative_to(real)):
                dirnames[:] = []
                continue
            visited.add(real)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                if is_image_name(f):
                    found.append(os.path.join(dirpath, f))
                elif not f.startswith("."):
                    left_out.append(os.path.join(dirpath, f))
        if not found:
            empty.append(name)
        found.sort()
        paths += [Path(p) for p in found]
        labels += [label] * len(found)
    if not paths:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise UserError(f"{root}: {len(classes)} class folders but no image files in them (extensions: {exts})")
    if empty:
        log.warning("%s: %d class folder(s) hold no image files (their labels are kept, with no images here): %s",
                    root, len(empty), first_few(empty))
    if left_out:
        log.warning("%s: %d file(s) left out, images outside the class folders or files whose suffix is not an "
                    "image's (%s): %s",
                    root, len(left_out), ", ".join(sorted(IMAGE_EXTENSIONS)),
                    first_few(sorted(left_out)))
    return paths, labels, classes


# --------------------------------------------------------------------------- transforms



def _check_nonneg_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise UserError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class ImageFolderDataset(Dataset):
    """A class-folder tree (see :func:`find_images`) as uint8 ``(3, R, R)`` images.

    ``dataset[key]`` with ``key`` an index or an ``(index, epoch)`` pair returns
    ``(image uint8 (3, R, R), label int, skipped_paths tuple[str, ...])``. Training (``train=True``): random
    resized crop + flip drawn from a generator seeded by ``(seed, epoch, index)`` (a plain index means
    epoch 0), so an item is reproducible in any process. Evaluation: resize + center crop, no randomness.
    An unreadable file is replaced by the next index (wrapping; at most ``max_attempts`` files) and its path
    reported in ``skipped_paths``; OSError if all attempts fail.
    """

    def __init__(self, root: PathLike, resolution: int, train: bool, seed: int = 0, max_attempts: int = 16,
                 classes: Sequence[str] | None = None):
        if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 1:
            raise UserError(f"resolution must be a positive integer, got {resolution!r}")
        if int(max_attempts) < 1:
            raise UserError(f"max_attempts must be >= 1, got {max_attempts!r}")
        self.root = Path(root).expanduser()
        self.resolution = int(resolution)
        self.train = bool(train)
        self.seed = _check_nonneg_int("seed", seed)
        self.max_attempts = int(max_attempts)
        paths, labels, self.classes = find_images(self.root, classes)
        # Relative paths in one numpy bytes array and labels in one int array, not lists of Python objects:
        # forked DataLoader workers would otherwise copy the pages of millions of refcounted objects.
        self._rel = np.array([os.fsencode(p.relative_to(self.root)) for p in paths])
        self.labels = np.asarray(labels, dtype=np.int64)
        self.unreadable: dict[str, str] = {}  # path -> error, of this process
        self.warned: set[str] = set()  # paths that loader workers found unreadable, warned about in this process

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, index: int) -> Path:
        """Absolute path of file ``index``."""
        return self.root / os.fsdecode(self._rel[index])

    def _open(self, path: Path) -> Image.Image | None:
        """The image as RGB, or None when PIL cannot read it (remembered, warned about once)."""
        key = str(path)
        if key in self.unreadable:
            return None
        try:
            with Image.open(path) as im:
                # L / P / RGBA / CMYK converted, 16-bit scaled (to_rgb); RGB images are just loaded (no copy).
                if im.mode != "RGB":
                    return to_rgb(im)
                im.load()
                return im
        except _DECODE_ERRORS as e:
            self.unreadable[key] = f"{type(e).__name__}: {e}"
            if get_worker_info() is None:
                log.warning("skipping unreadable image file %s (%s)", key, self.unreadable[key])
            else:  # the main process logs it when the batch arrives (worker logging may not be set up)
                log.debug("skipping unreadable image file %s (%s)", key, self.unreadable[key])
            return None

    def _transform(self, img: Image.Image, generator: torch.Generator | None) -> torch.Tensor:
        r = self.resolution
        if generator is not None:
            img = random_horizontal_flip(random_resized_crop(img, r, generator), generator)
        else:
            img = resize_center_crop(img, r)
        return pil_to_uint8(img)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, tuple[str, ...]]:
        index, epoch = (key if isinstance(key, tuple) else (key, 0))
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        generator = None
        if self.train:
            generator = torch.Generator().manual_seed(hash_seed(b"daps-augment", self.seed, int(epoch), index))
        skipped: list[str] = []
        for attempt in range(min(self.max_attempts, n)):
            j = (index + attempt) % n
            path = self.path(j)
            img = self._open(path)
            if img is None:
                skipped.append(str(path))
                continue
            return self._transform(img, generator), int(self.labels[j]), tuple(skipped)
        raise OSError(
            f"{len(skipped)} consecutive unreadable image files starting at {self.path(index)} "
            f"(last: {self.unreadable.get(skipped[-1], '?')}); check the data folder {self.root}"
        )


def collate_images(
    batch: Sequence[tuple[torch.Tensor, int, tuple[str, ...]]],
) -> dict[str, torch.Tensor | list[str]]:
    """Items of :class:`ImageFolderDataset` -> ``{"image": uint8 (B, 3, R, R), "label": int64 (B,),
    "skipped": list[str]}`` (skipped: the unreadable paths replaced while making this batch)."""
    first = batch[0][0]
    images = torch.empty((len(batch), *first.shape), dtype=first.dtype, device="cpu")
    if get_worker_info() is not None:
        images.share_memory_()  # a worker's batch then reaches the main process without another copy
    # Stacked by numpy (single-threaded), for the same reason as in pil_to_uint8.
    np.stack([item[0].numpy() for item in batch], out=images.numpy())
    labels = torch.tensor([item[1] for item in batch], dtype=torch.int64, device="cpu")
    skipped = [path for item in batch for path in item[2]]
    return {"image": images, "label": labels, "skipped": skipped}


class _SkipTracker:
    """Main-process count of one pass's skipped files; warns once per path and dataset (not again at the next
    pass: a validation every 1,000 steps would repeat the same lines)."""

    def __init__(self, dataset: ImageFolderDataset):
        self.dataset = dataset
        self.num_skipped = 0
        self.skipped_paths: set[str] = set()

    def update(self, paths: list[str]) -> None:
        self.num_skipped += len(paths)
        for path in paths:
            self.skipped_paths.add(path)
            # With num_workers=0 the dataset (same process) has warned already, with the error. A worker's error
            # stays in the worker: the file is opened once more here, which warns with PIL's reason.
            if path not in self.dataset.unreadable and path not in self.dataset.warned:
                self.dataset.warned.add(path)
                if self.dataset._open(Path(path)) is not None:
                    log.warning("skipping image file %s: a DataLoader worker could not read it (it reads now)", path)


# --------------------------------------------------------------------------- streams


def _pinned(pin_memory: bool | None) -> bool:
    """Whether a loader pins its batches: as asked, else when CUDA is available (callers that know where the batches
    go pass whether that is a CUDA device)."""
    return torch.cuda.is_available() if pin_memory is None else bool(pin_memory)


class _EpochBatchSampler(Sampler):
    """Endless batches of ``(index, epoch)`` keys: epoch by epoch, each a fresh permutation (no replacement
    within an epoch; the last partial batch dropped), starting at global batch ``start_batch``."""

    def __init__(self, n: int, batch_size: int, seed: int, start_batch: int):
        self.n, self.batch_size, self.seed, self.start_batch = n, batch_size, seed, start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_epoch = self.n // self.batch_size
        epoch, offset = divmod(self.start_batch, per_epoch)
        while True:
            order = epoch_permutation(self.n, self.seed, epoch).tolist()
            for b in range(offset, per_epoch):
                yield [(i, epoch) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
            epoch, offset = epoch + 1, 0


class ImageStream:
    """Endless training batches, uint8 ``(B, 3, R, R)``, from a :class:`ImageFolderDataset`.

    Epochs are seeded permutations (:func:`epoch_permutation`), each split into ``len(dataset) // B`` batches
    (last partial batch dropped). Batch ``k`` of the stream is the same for any ``num_workers`` and for any
    ``start_batch <= k``: a resumed run passes ``start_batch`` = batches already consumed, and the stream
    begins there without decoding the skipped images. Batches are pinned (page-locked) when ``pin_memory``
    (default: when CUDA is available; daps passes whether they go to a CUDA device, so ``--device cpu`` on a GPU
    machine neither pins nor opens a CUDA context on the GPU); workers persist across epochs. ``num_skipped``
    counts replaced unreadable files (each occurrence), ``skipped_paths`` holds the distinct paths. A batch larger
    than the folder is refused naming ``batch_flag`` (what the caller's user set: ``train.batch_size`` in daps train).
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        start_batch: int = 0,
        pin_memory: bool | None = None,
        batch_flag: str = "batch_size",
    ):
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.num_workers = _check_nonneg_int("num_workers", num_workers)
        self.seed = _check_nonneg_int("seed", seed)
        self.start_batch = _check_nonneg_int("start_batch", start_batch)
        self.pin_memory = _pinned(pin_memory)
        if len(dataset) < batch_size:
            raise UserError(f"{batch_flag} {batch_size} exceeds the {len(dataset)} images of {dataset.root}: lower "
                            "it, or add images")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.batches_per_epoch = len(dataset) // self.batch_size
        self.batch_index = self.start_batch  # global index of the next batch
        self._skips = _SkipTracker(dataset)
        self._iter: Iterator[dict] | None = None

    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self.batch_index // self.batches_per_epoch

    def _start(self) -> Iterator[dict]:
        sampler = _EpochBatchSampler(len(self.dataset), self.batch_size, self.seed, self.batch_index)
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_images,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
        return iter(loader)

    @property
    def num_skipped(self) -> int:
        """Unreadable files replaced so far (each occurrence)."""
        return self._skips.num_skipped

    @property
    def skipped_paths(self) -> set[str]:
        """The distinct unreadable paths met so far."""
        return self._skips.skipped_paths

    def __iter__(self) -> ImageStream:
        return self

    def __next__(self) -> torch.Tensor:
        if self._iter is None:  # started lazily: constructing a stream forks no workers
            self._iter = self._start()
        batch = next(self._iter)
        self.batch_index += 1
        self._skips.update(batch["skipped"])
        return batch["image"]

    def close(self) -> None:
        """Stop the worker processes (a later ``next`` restarts them at the current batch)."""
        self._iter = None


class EvalBatches:
    """One pass over the images ``indices`` in that order, uint8 ``(B, 3, R, R)`` batches (the last may be
    smaller); unreadable files are replaced by the next image and counted in ``num_skipped``; pinned as
    :class:`ImageStream`'s."""

    def __init__(self, dataset: ImageFolderDataset, batch_size: int, num_workers: int, indices: Sequence[int],
                 pin_memory: bool | None = None):
        self.dataset = dataset
        sampler = BatchSampler(indices, batch_size, drop_last=False)
        self._loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate_images,
            pin_memory=_pinned(pin_memory),
        )
        self._skips = _SkipTracker(dataset)
        self._iter: Iterator[dict] | None = None
        self.count = len(indices)

    @property
    def num_skipped(self) -> int:
        """Unreadable files replaced so far (each occurrence)."""
        return self._skips.num_skipped

    @property
    def skipped_paths(self) -> set[str]:
        """The distinct unreadable paths met so far."""
        return self._skips.skipped_paths

    def __iter__(self) -> EvalBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self._iter is None:
            self._iter = iter(self._loader)
        batch = next(self._iter)
        self._skips.update(batch["skipped"])
        return batch["image"]

    def labelled(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same pass as ``(images uint8 (B, 3, R, R), labels int64 (B,))``; a replaced unreadable file
        carries the class of the image that replaced it."""
        for batch in self._loader:
            self._skips.update(batch["skipped"])
            yield batch["image"], batch["label"]


def eval_batches(
    dataset: ImageFolderDataset, batch_size: int, num_workers: int = 0, max_images: int = 0,
    pin_memory: bool | None = None,
) -> EvalBatches:
    """Validation batches, uint8 ``(B, 3, R, R)``: all images in file order, or, with ``0 < max_images <
    len(dataset)``, a fixed random subset of ``max_images`` (seed 0, in file order; class folders are sorted,
    so the first files would all be of a few classes). See :class:`EvalBatches` for the skip count."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    _check_nonneg_int("num_workers", num_workers)
    _check_nonneg_int("max_images", max_images)
    indices = fixed_subset(len(dataset), max_images).tolist()
    return EvalBatches(dataset, int(batch_size), int(num_workers), indices, pin_memory)
