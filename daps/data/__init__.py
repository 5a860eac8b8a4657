"""Datasets: ``DATASETS`` names each one, its likelihood, its standardization and how it is read.

In-memory datasets (MNIST, CIFAR-10) load a whole split as a tensor; batches are drawn from it on the device,
uniformly with replacement as in the original. Folder datasets (ImageNet and any class-folder tree) are
streamed from disk by a multi-worker DataLoader with the original's ImageNet crops (data/utils/transforms.py). Either
way the training loop sees
raw batches (binary floats, or uint8 pixels) and :class:`Standardize` maps them to the model's scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import torch

from daps.data.arrays import arrays_run_files, check_run_arrays, load_arrays
from daps.data.arrays import class_names as arrays_class_names
from daps.data.cifar import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, load_cifar10, load_cifar10_jpeg
from daps.data.evalset import EvalSet, FolderEvalSet, TensorEvalSet
from daps.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset, ImageStream, class_folders
from daps.data.imagenet import require_imagenet_root, unpack_imagenet_sample
from daps.data.mnist import load_mnist, load_mnist5k
from daps.data.motion import (
    MotionMetrics,
    WindowImages,
    check_run_stats,
    lafan_run_files,
    lafan_windows,
    motion_data,
    plot_motion_reconstructions,
    read_saved_stats,
)
from daps.data.paths import (
    DATA_DIR_FIX,
    DATA_DIR_FLAGS,
    ENV_VAR,
    ImageSet,
    PathLike,
    cache_root,
    check_split,
    explicit_root,
    file_key,
    user_roots,
)
from daps.data.sequences import (
    SequenceMetrics,
    check_run_sequences,
    plot_sequence_reconstructions,
    read_sequence_stats,
    sequence_data,
    sequence_run_files,
    sequence_windows,
)
from daps.data.transforms import fixed_subset
from daps.errors import UserError

__all__ = [
    "check_fid_images",
    "check_folder_shape",
    "DATASETS",
    "DatasetSpec",
    "ImageSet",
    "Standardize",
    "TrainBatches",
    "check_model_data",
    "check_run_data",
    "dataset_spec",
    "folder_dataset",
    "load_dataset",
    "load_mnist",
    "load_mnist5k",
    "train_batches",
    "eval_set",
    "EvalSet",
    "ExampleMetrics",
    "FolderEvalSet",
    "TensorEvalSet",
]

if TYPE_CHECKING:
    from daps.config import DataConfig

log = logging.getLogger(__name__)


class ExampleMetrics(Protocol):
    """Per-example quality metrics of reconstructions: ``(x, x_hat)`` at the model's scale -> name -> ``(B,)``.
    :func:`daps.metrics.evaluate` averages each over examples, except a metric named in an optional attribute
    ``weighted_by`` (metric -> the key of its per-example weights, also returned): that one is the weighted mean
    (0 when the weights sum to 0), and the weights are not reported (e.g. a ratio pooled over frames)."""

    def __call__(self, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]: ...



@dataclass(frozen=True)
class Standardize:
    """Raw pixels -> the model's scale, and back to [0, 1] for PSNR / SSIM / FID (original: data/datasets/cifar.py,
    imagenet.py).

    With per-channel ``mean`` and ``std`` on the 0-255 scale: ``x = (pixels - mean) / std``. Without them
    (binarized MNIST) the data are already the model's input and their own [0, 1] version; ``shown`` (standardized
    features, e.g. motion) instead names the range of the model's scale that figures stretch over [0, 1].
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    shown: tuple[float, float] | None = None

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean, std (C, 1, 1)`` float32 on ``like``'s device, made once per device (not a host-to-device copy,
        which waits for the GPU, at every batch)."""
        from daps.functional import _constant

        assert self.mean is not None and self.std is not None
        shape = (-1, 1, 1)
        return (_constant(self.mean, torch.float32, like.device).view(shape),
                _constant(self.std, torch.float32, like.device).view(shape))

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` uint8 pixels (or binary floats) -> float32 model inputs."""
        if self.mean is None:
            return raw.float()
        mean, std = self._stats(raw)
        return (raw.float() - mean) / std

    def to_unit(self, x: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """Model-scale ``(N, C, H, W)`` (data or decoder means) -> [0, 1], clipped (with ``clip``)."""
        if self.mean is None and self.shown is not None:
            low, high = self.shown
            unit = (x.float() - low) / (high - low)
        elif self.mean is None:
            unit = x.float()
        else:
            mean, std = self._stats(x)
            unit = (x.float() * std + mean) / 255.0
        return unit.clamp(0, 1) if clip else unit


def _sample_root(data_dir: PathLike | None) -> Path:
    """The 1,000-image ImageNet sample, unpacked (once) into a class-folder tree in the cache."""
    name = "imagenet_1k_sample_256_q90.tar"
    candidates = []
    for root in user_roots(data_dir):
        candidates += [root / name, root / "imagenet_sample_256" / name]
    tar = next((p for p in candidates if p.is_file()), None)
    if tar is None:
        looked = ", ".join(str(p.parent) for p in candidates) or f"(no data folder given and ${ENV_VAR} unset)"
        raise FileNotFoundError(f"imagenet256-sample: {name} not found in {looked}. Fix: {DATA_DIR_FIX}")
    # keyed by its whole content (28 MB; hashed in well under a second): a replaced tar (a fresh download of a
    # damaged copy) is unpacked anew, even where it differs only in the middle
    key = file_key(tar, whole_up_to=1 << 30)
    return unpack_imagenet_sample(tar, cache_root() / "imagenet_sample_256" / f"{tar.stem}.{key}")


def _given_root(data_dir: PathLike | None) -> Path:
    root = explicit_root(data_dir)
    if root is None:
        raise FileNotFoundError(
            "imagefolder: name the folder with train/<class>/ and val/<class>/ images "
            f"({DATA_DIR_FLAGS})"
        )
    return root


@dataclass(frozen=True)
class DatasetSpec:
    """What the library needs to know about a dataset.

    ``load`` (in-memory datasets) returns a whole split; ``windows`` (motion) an indexable split of windows
    gathered on demand; ``root`` (folder datasets) returns the folder holding ``train/`` and ``val/`` class
    folders, or, with ``same_splits``, one class-folder tree used for both. ``example_metrics`` builds the
    per-example quality metrics of evaluation (default: the image metrics MSE, PSNR, SSIM); ``run_files`` what a
    run saves beside its checkpoints (file name -> JSON), and ``check_run`` refuses (:class:`UserError`) a run
    folder whose saved files disagree with the data as they are now (eval, export-codes, render, resume).
    ``stats`` and ``run_stats``, for data standardized per feature by statistics of its training split (motion,
    one's own sequences): the statistics (a :class:`~daps.motion.dataset.Standardizer`) of the data as they are now,
    and those a run folder saved (raises when unreadable); a model loaded from a run carries the latter, a
    pretrained model its own copy, and each is checked against the former (:func:`check_model_data`).
    """

    name: str
    likelihood: str  # "bernoulli", "gaussian" (learned variance) or "gaussian-fixed" (decoder.fixed_variance)
    standardize: Standardize = field(default_factory=Standardize)
    image_shape: tuple[int, int, int] | None = None  # fixed by the files; None: any size (folder datasets)
    load: Callable[[str, PathLike | None, bool], ImageSet] | None = None  # (split, data_dir, download)
    downloads: bool = False  # has a download source (``load`` reads data.download); the others are found locally
    root: Callable[[PathLike | None], Path] | None = None  # (data_dir)
    windows: Callable[[str, DataConfig], WindowImages] | None = None  # (split, data)
    same_splits: bool = False
    note: str = ""  # said in the log and the run summary, e.g. that the data are a lossy copy
    example_metrics: Callable[[DataConfig], ExampleMetrics] | None = None
    run_files: Callable[[DataConfig], dict[str, Any]] | None = None
    check_run: Callable[[Path, DataConfig], None] | None = None  # (run folder, data)
    stats: Callable[[DataConfig], Any] | None = None  # None: a scale fixed by the dataset (images)
    run_stats: Callable[[Path], Any] | None = None  # (run folder)
    plot_reconstructions: Callable[[DataConfig, torch.Tensor, torch.Tensor, Path, str], None] | None = None
    examples: str = "images"  # what one example is called in logs and titles
    class_names: Callable[[DataConfig], tuple[str, ...]] | None = None  # of the labels; None: the digits 0-9

    @property
    def in_memory(self) -> bool:
        return self.load is not None or self.windows is not None

    def save_reconstructions(
        self, data: DataConfig, x: torch.Tensor, x_hat: torch.Tensor, path: Path, title: str
    ) -> None:
        """A figure of inputs ``x`` and their reconstructions ``x_hat`` (model scale) written atomically to ``path``:
        the dataset's own (``plot_reconstructions``), else an image grid."""
        if self.plot_reconstructions is not None:
            self.plot_reconstructions(data, x, x_hat, path, title)
            return
        from daps.plots import save_reconstruction_grid

        save_reconstruction_grid(self.standardize.to_unit(x), self.standardize.to_unit(x_hat), path, title=title)


_IMAGENET = Standardize(IMAGENET_MEAN, IMAGENET_STD)

def _offline(load: Callable[[str, PathLike | None], ImageSet]) -> Callable[[str, PathLike | None, bool], ImageSet]:
    """The loader of a dataset without a download source, for :attr:`DatasetSpec.load`."""
    return lambda split, data_dir, download: load(split, data_dir)


def _cifar10_classes(data: DataConfig) -> tuple[str, ...]:
    return tuple(CIFAR10_CLASSES)


_FEATURES_SHOWN = Standardize(shown=(-3.0, 3.0))
"""Standardized features (motion, sequences): figures of them show -3 standard deviations black, 0 mid-grey, +3
white."""

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "bernoulli", image_shape=(1, 28, 28), load=load_mnist, downloads=True),
    "mnist5k": DatasetSpec("mnist5k", "bernoulli", image_shape=(1, 28, 28), load=_offline(load_mnist5k)),
    "cifar10": DatasetSpec(
        "cifar10", "gaussian", Standardize(CIFAR10_MEAN, CIFAR10_STD), (3, 32, 32), load=load_cifar10,
        downloads=True, class_names=_cifar10_classes,
    ),
    "cifar10-jpeg": DatasetSpec(
        "cifar10-jpeg", "gaussian", Standardize(CIFAR10_MEAN, CIFAR10_STD), (3, 32, 32),
        load=_offline(load_cifar10_jpeg), class_names=_cifar10_classes,
        note="cifar10-jpeg is a JPEG quality-75 re-encoding of CIFAR-10, not the original pixels: "
        "numbers are not comparable with published CIFAR-10 results",
    ),
    "imagenet256": DatasetSpec("imagenet256", "gaussian", _IMAGENET, root=require_imagenet_root),
    "imagenet256-sample": DatasetSpec(
        "imagenet256-sample", "gaussian", _IMAGENET, root=_sample_root, same_splits=True,
        note="imagenet256-sample is 1,000 ImageNet images (one per class); train and test are the same images",
    ),
    "imagefolder": DatasetSpec("imagefolder", "gaussian", _IMAGENET, root=_given_root),
    "arrays": DatasetSpec(
        "arrays", "gaussian", Standardize((127.5,), (127.5,)), load=_offline(load_arrays), run_files=arrays_run_files,
        check_run=check_run_arrays, class_names=lambda data: arrays_class_names(data.data_dir or None),
    ),
    "lafan1-h1": DatasetSpec(
        "lafan1-h1", "gaussian-fixed", _FEATURES_SHOWN, windows=lafan_windows, example_metrics=MotionMetrics,
        run_files=lafan_run_files, check_run=check_run_stats, plot_reconstructions=plot_motion_reconstructions,
        examples="windows", stats=lambda data: motion_data(data).stats, run_stats=read_saved_stats,
    ),
    "sequences": DatasetSpec(
        "sequences", "gaussian-fixed", _FEATURES_SHOWN, windows=sequence_windows, example_metrics=SequenceMetrics,
        run_files=sequence_run_files, check_run=check_run_sequences, plot_reconstructions=plot_sequence_reconstructions,
        examples="windows", stats=lambda data: sequence_data(data).stats, run_stats=read_sequence_stats,
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def check_folder_shape(name: str, image_shape: tuple[int, ...] | list[int]) -> None:
    """A :class:`UserError` when ``name`` is a folder dataset (read from image files) and ``image_shape`` is not the
    (3, R, R) its RGB images are cropped and resized to."""
    if dataset_spec(name).root is not None and (len(image_shape) != 3 or image_shape[0] != 3
                                                 or image_shape[1] != image_shape[2]):
        raise UserError(f"{name}: data.image_shape must be (3, R, R) for a folder dataset, got {tuple(image_shape)}")


def check_fid_images(name: str, image_shape: tuple[int, ...] | list[int] | None, setting: str) -> None:
    """A :class:`UserError` naming ``setting`` (e.g. ``--fid val-pairs``) when dataset ``name`` with examples of
    ``image_shape`` cannot have an FID: it holds no images (motion, features) or no RGB ones (not checked while
    the shape is unknown: None)."""
    spec = dataset_spec(name)
    if spec.examples != "images":
        raise UserError(f"{setting}: FID compares images; {name} holds {spec.examples} of motion or features")
    if image_shape is not None and tuple(image_shape)[0] != 3:
        raise UserError(f"{setting} needs RGB images; {name} has {image_shape[0]} channel(s)")


def check_run_data(run_dir: PathLike, data: DataConfig) -> None:
    """A :class:`UserError` when the files a run saved about its data (``DatasetSpec.run_files``, e.g. the motion
    statistics) disagree with ``data`` as it is now; nothing for datasets that save none."""
    check = dataset_spec(data.name).check_run
    if check is not None:
        check(Path(run_dir), data)


def model_data(model: Any, origin: dict[str, Any], data_dir: str | None, source: PathLike) -> DataConfig:
    """The data config ``model`` reads (from :func:`daps.hub.open_model`, with its ``origin``), its folder replaced by
    ``data_dir`` when given, and checked against what was recorded about the data it was trained on: its run's
    files (:func:`check_run_data`), or the statistics a pretrained model carries (:func:`check_model_data`). A
    pretrained model's config holds only the name of its trainer's data folder: without ``data_dir`` the data are
    found as for any command (``$DAPS_DATA_DIR``, the default place, the download)."""
    from daps.checkpoint import run_folder

    data = model.config.data
    pretrained = origin["step"] is None
    if data_dir or pretrained:
        data.data_dir = data_dir or ""
    if pretrained:
        check_model_data(model, data, source)
    else:
        check_run_data(run_folder(Path(origin["checkpoint"])), data)
    return data


def check_model_data(model: Any, data: DataConfig, source: PathLike) -> None:
    """For a pretrained model, which carries the statistics it was trained with (``model.standardization``) but no
    run folder: a :class:`UserError` when they differ from those of ``data`` as it is now (other clips or another
    file, or other feature code), since its codes would be read from inputs on the wrong scale."""
    import numpy as np

    stats, data_stats = getattr(model, "standardization", None), dataset_spec(data.name).stats
    if data_stats is None:
        return
    if stats is None:
        raise UserError(f"{source} holds no standardization.json: the feature statistics it was trained with are "
                        f"needed to read {data.name}")
    current = data_stats(data)
    if not (stats.mean.shape == current.mean.shape and np.allclose(stats.mean, current.mean)
            and np.allclose(stats.scale, current.scale)):
        raise UserError(f"{source} was trained on data with other feature statistics than {data.name} has now "
                        "(different clips, another file or other feature code)")


def run_standardization(run_dir: PathLike, dataset: str) -> Any:
    """The per-feature map from raw features to the model's scale that a run of a dataset standardized per feature
    (``DatasetSpec.run_stats``: ``lafan1-h1``, ``sequences``) trained with (:class:`~daps.motion.dataset.Standardizer`);
    None for the image datasets (their pixel scale is fixed by the dataset) and for a run folder without a readable
    file."""
    spec = DATASETS.get(dataset)
    if spec is None or spec.run_stats is None:
        return None
    try:
        return spec.run_stats(Path(run_dir))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, UserError):
        return None  # the data commands refuse such a run in one line (DatasetSpec.check_run); loading is not one


def load_dataset(
    name: str,
    split: str,
    data_dir: PathLike | None = None,
    download: bool = True,
) -> ImageSet:
    """Load split ``"train"`` or ``"test"`` of an in-memory dataset ``name`` (a key of :data:`DATASETS`).

    Returns:
        ImageSet: images ``(N, C, H, W)``: float32 in {0, 1} (MNIST) or uint8 pixels (CIFAR-10); int64 labels.

    Raises:
        ValueError: unknown dataset name or split, or a folder dataset (use :func:`folder_dataset`).
        FileNotFoundError: the data files could not be found (or downloaded).
    """
    spec = dataset_spec(name)
    check_split(split)
    if spec.load is None:
        raise UserError(f"{name} is streamed from a folder; use folder_dataset()")
    return spec.load(split, data_dir, download)


def folder_dataset(
    name: str, split: str, image_shape: tuple[int, ...], data_dir: PathLike | None, train: bool, seed: int = 0
) -> ImageFolderDataset:
    """Split ``train`` (``train/``) or ``test`` (``val/``) of a folder dataset, cropped to ``image_shape``:
    random resized crops and flips when ``train``, resize + center crop otherwise (paper App. J; original:
    data/utils/transforms.py)."""
    spec = dataset_spec(name)
    check_split(split)
    check_folder_shape(name, image_shape)
    if spec.root is None:
        raise UserError(f"{name} is held in memory; use load_dataset()")
    root = spec.root(data_dir or None)
    classes = None
    if not spec.same_splits:
        # the classes of both splits, numbered together: a class missing from val/ must not shift the others' labels
        classes = sorted(set(class_folders(root / "train")) | set(class_folders(root / "val")))
        root = root / ("train" if split == "train" else "val")
        if not root.is_dir():
            raise FileNotFoundError(f"{name}: {root} is missing (need train/ and val/ class folders)")
    return ImageFolderDataset(root, image_shape[1], train=train, seed=seed, classes=classes)  # R


class TrainBatches:
    """An endless stream of raw training batches ``(B, C, H, W)`` on ``device``.

    In-memory data (``source`` a tensor of the whole split): B indices drawn uniformly with replacement from
    ``generator`` (its state is checkpointed, so a resumed run draws the same batches). Folder data (``source`` an
    :class:`ImageStream`): an epoch-shuffled DataLoader seeded by ``seed`` that starts at batch ``start`` (a
    resumed run sees the batches an uninterrupted one would).
    """

    def __init__(
        self,
        source: torch.Tensor | WindowImages | ImageStream,
        batch_size: int,
        generator: torch.Generator | None,
        device: torch.device,
    ):
        self.source, self.batch_size = source, batch_size
        self.generator, self.device = generator, device

    def __len__(self) -> int:
        return len(self.source.dataset) if isinstance(self.source, ImageStream) else len(self.source)

    @property
    def num_skipped(self) -> int:
        """Unreadable files skipped so far (folder data)."""
        return self.source.num_skipped if isinstance(self.source, ImageStream) else 0

    def close(self) -> None:
        """Stop the loader workers (folder data)."""
        if isinstance(self.source, ImageStream):
            self.source.close()

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        if isinstance(self.source, ImageStream):
            return next(self.source).to(self.device, non_blocking=True)
        idx = torch.randint(len(self.source), (self.batch_size,), generator=self.generator, device=self.device)
        return self.source[idx]  # (B, C, H, W)


def _examples(spec: DatasetSpec, data: DataConfig, split: str) -> torch.Tensor | WindowImages:
    """A whole split of an in-memory dataset: a tensor ``(N, C, H, W)``, or motion windows gathered on demand."""
    if spec.windows is not None:
        examples: torch.Tensor | WindowImages = spec.windows(split, data)
    else:
        examples = load_dataset(data.name, split, data.data_dir or None, data.download).images
        if spec.image_shape is None and tuple(examples.shape[1:]) != tuple(data.image_shape):  # e.g. arrays
            raise UserError(f"{data.name} {split} images are {tuple(examples.shape[1:])} (C, H, W) but "
                            f"data.image_shape is {tuple(data.image_shape)}; set data.image_shape="
                            + ",".join(map(str, examples.shape[1:])))
    if len(examples) == 0:  # e.g. windows longer than every clip: refused before a run folder is touched
        why = f" of {data.image_shape[1]} frames: no clip is that long (data.image_shape)" if spec.windows else ""
        raise UserError(f"{data.name} {split} has no {spec.examples}{why}")
    return examples


def train_batches(
    data, batch_size: int, seed: int, start_step: int, generator: torch.Generator, device: torch.device
) -> TrainBatches:
    """Training batches of ``data`` (a :class:`daps.config.DataConfig`)."""
    spec = dataset_spec(data.name)
    if spec.in_memory:
        return TrainBatches(_examples(spec, data, "train").to(device), batch_size, generator, device)
    seed %= 2**63  # a negative train.seed (allowed) names a valid stream seed; non-negative seeds are unchanged
    dataset = folder_dataset(data.name, "train", data.image_shape, data.data_dir or None, train=True, seed=seed)
    stream = ImageStream(dataset, batch_size, num_workers=data.num_workers, seed=seed, start_batch=start_step,
                         pin_memory=device.type == "cuda", batch_flag="train.batch_size")
    return TrainBatches(stream, batch_size, None, device)


@dataclass(frozen=True)
class LabelledSplit:
    """A whole split of an in-memory dataset with its labels (what ``daps export-codes`` encodes)."""

    examples: torch.Tensor | WindowImages  # raw examples, indexed by a LongTensor of positions
    labels: torch.Tensor  # (N,) int64 class index of each example
    class_names: tuple[str, ...]

    def raw(self, idx: torch.Tensor) -> torch.Tensor:
        """The raw examples at positions ``idx`` (gathered where the examples are: CPU, or motion windows' device)."""
        device = getattr(self.examples, "device", None)
        return self.examples[idx.to(device if isinstance(device, torch.device) else "cpu")]


def labelled_split(data, split: str) -> LabelledSplit:
    """Split ``split`` of ``data`` (a :class:`daps.config.DataConfig`) with labels: the digit (MNIST), the CIFAR-10
    class, an ``arrays`` file's labels, the kind of motion of each window (LAFAN1,
    :data:`daps.data.motion.MOTION_TYPES`) or its clip (``sequences``); names from the dataset's ``class_names``
    (windows: their own)."""
    spec = dataset_spec(data.name)
    if not spec.in_memory:
        raise UserError(
            f"{data.name} is streamed from a folder; this needs a dataset held in memory "
            "(mnist, mnist5k, cifar10, cifar10-jpeg, arrays, lafan1-h1, sequences)"
        )
    if spec.windows is not None:
        windows = spec.windows(split, data)
        return LabelledSplit(windows, windows.labels.long(), tuple(windows.class_names))
    loaded = load_dataset(data.name, split, data.data_dir or None, data.download)
    names = spec.class_names(data) if spec.class_names is not None else tuple(str(d) for d in range(10))
    return LabelledSplit(loaded.images, loaded.labels.long(), names)


def eval_set(data, split: str, max_images: int, batch_size: int, device: torch.device) -> EvalSet:
    """The validation set of ``data`` (a :class:`daps.config.DataConfig`): all images of ``split``
    (``max_images=0``) or a fixed random subset of ``max_images`` (seed 0, kept in the split's order; the same
    subset in every run), in batches of ``batch_size`` on ``device``."""
    spec = dataset_spec(data.name)

    def note_all(size: int, where: str = "") -> None:
        if max_images > size:
            log.info("%s %s%s has %d %s, fewer than the %d asked for: all are used", spec.name, split, where, size,
                     spec.examples, max_images)

    if spec.in_memory:
        examples = _examples(spec, data, split)
        note_all(len(examples))
        return TensorEvalSet(examples[fixed_subset(len(examples), max_images)].to(device), batch_size)
    dataset = folder_dataset(data.name, split, data.image_shape, data.data_dir or None, train=False)
    note_all(len(dataset), f" split ({dataset.root})")  # the folder: the test split of a folder dataset is val/
    count = min(max_images, len(dataset)) if max_images > 0 else len(dataset)
    return FolderEvalSet(dataset, batch_size, data.num_workers, count, device)
