"""Which kind of motion a window shows: a small classifier over standardized feature windows, for judging motion.

:class:`MotionClassifier` maps windows ``(B, 1, T, F)`` (the ``lafan1-h1`` dataset's standardized features) to
logits over :data:`daps.data.motion.MOTION_TYPES` (dance, fall, fight, jump, run, walk);
:meth:`~MotionClassifier.embed` gives its 128-d penultimate features (for distribution distances between real and
generated motion). It is trained on the training clips only (:func:`train_classifier`, run by
``scripts/train_motion_classifier.py``), with every kind of motion drawn equally often, and checked on the
original's four validation clips (dance, fight, run, walk). Weights are saved as safetensors with a JSON report
next to them, in the cache folder (LAFAN1's license, CC BY-NC-ND 4.0, forbids redistributing derivatives, so no
weights ship with daps); :func:`load_classifier` refuses weights of another feature version.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from daps.errors import UserError
from daps.motion.features import FEATURE_VERSION, NUM_FEATURES
from daps.runfolder import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = 1


def default_classifier_path() -> Path:
    """Where ``scripts/train_motion_classifier.py`` puts the classifier and :func:`load_classifier` looks for it:
    the cache folder (weights trained on LAFAN1, whose license forbids redistributing derivatives, are not shipped)."""
    from daps.data.paths import cache_root

    return cache_root() / "lafan1_h1" / "classifier.safetensors"


class MotionClassifier(nn.Module):
    """1-d convolutions over time (kernel 5, then two stride-2 layers), mean over time, dropout, a linear head."""

    def __init__(self, num_features: int = NUM_FEATURES, num_classes: int = 6, width: int = 128, dropout: float = 0.3):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv1d(num_features, width // 2, 5, padding=2), nn.GELU(),
            nn.Conv1d(width // 2, width, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1), nn.GELU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Windows ``(B, 1, T, F)`` or ``(B, T, F)`` -> features ``(B, width)``."""
        if x.dim() == 4:
            x = x[:, 0]
        return self.convs(x.transpose(1, 2)).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Windows -> logits ``(B, num_classes)``."""
        return self.head(self.embed(x))


@dataclass
class ClassifierReport:
    """How a trained classifier did: accuracy and per-kind recall on the validation clips, the training setup."""

    val_accuracy: float
    val_recall: dict[str, float]
    val_windows: dict[str, int]
    val_confusion: dict[str, dict[str, int]]
    train_accuracy: float
    steps: int
    batch_size: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CLASSIFIER_VERSION, "feature_version": FEATURE_VERSION, "val_accuracy": self.val_accuracy,
            "val_recall": self.val_recall, "val_windows": self.val_windows, "val_confusion": self.val_confusion,
            "train_accuracy": self.train_accuracy,
            "steps": self.steps, "batch_size": self.batch_size, "seed": self.seed,
        }


@torch.no_grad()
def accuracy_by_kind(model: MotionClassifier, images: Any, batch_size: int = 1024) -> tuple[float, dict, dict]:
    """Accuracy, per-kind recall and per-kind window counts of ``model`` on :class:`~daps.data.motion.WindowImages`."""
    accuracy, recall, counts, _ = confusion_by_kind(model, images, batch_size)
    return accuracy, recall, counts


@torch.no_grad()
def confusion_by_kind(model: MotionClassifier, images: Any, batch_size: int = 1024) -> tuple[float, dict, dict, dict]:
    """:func:`accuracy_by_kind` and the confusion counts: true kind -> predicted kind -> windows."""
    from daps.data.motion import MOTION_TYPES

    n = len(MOTION_TYPES)
    model.eval()
    conf = torch.zeros(n, n, dtype=torch.long, device="cpu")
    for start in range(0, len(images), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(images)), device="cpu")  # windows on the host
        pred = model(images[idx]).argmax(-1).cpu()
        conf += torch.bincount(images.labels[idx] * n + pred, minlength=n * n).view(n, n)
    total, correct = conf.sum(1), conf.diagonal()
    present = [i for i in range(n) if total[i] > 0]
    recall = {MOTION_TYPES[i]: float(correct[i] / total[i]) for i in present}
    counts = {MOTION_TYPES[i]: int(total[i]) for i in present}
    confusion = {MOTION_TYPES[i]: {MOTION_TYPES[j]: int(conf[i, j]) for j in range(n)} for i in present}
    return float(correct.sum() / total.sum()), recall, counts, confusion


def train_classifier(
    train: Any, val: Any, steps: int = 1500, batch_size: int = 256, lr: float = 1e-3, seed: int = 0
) -> tuple[MotionClassifier, ClassifierReport]:
    """Train on :class:`~daps.data.motion.WindowImages` ``train`` with every kind of motion equally likely per
    draw (the clips are mostly walking), AdamW with a cosine learning rate; evaluate on ``val``."""
    from daps.data.motion import MOTION_TYPES

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MotionClassifier(num_classes=len(MOTION_TYPES))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    counts = torch.bincount(train.labels, minlength=len(MOTION_TYPES)).float()
    weights = (1.0 / counts.clamp(min=1))[train.labels]  # each kind equally likely
    model.train()
    for step in range(steps):
        idx = torch.multinomial(weights, batch_size, replacement=True, generator=g)
        x = train[idx]
        x = x + 0.2 * torch.randn(x.shape, generator=g, device=g.device)  # noise against overfitting
        loss = F.cross_entropy(model(x), train.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps - 1:
            log.info("classifier step %d: loss %.4f", step, float(loss.detach()))
    subset = torch.randperm(len(train), generator=g, device=g.device)[:20_000].sort().values
    train_acc, _, _ = accuracy_by_kind(model, _Subset(train, subset))
    val_acc, recall, windows, confusion = confusion_by_kind(model, val)
    return model, ClassifierReport(val_acc, recall, windows, confusion, train_acc, steps, batch_size, seed)


class _Subset:
    """Some windows of a :class:`~daps.data.motion.WindowImages`, indexable the same way."""

    def __init__(self, images: Any, idx: torch.Tensor) -> None:
        self.images, self.idx, self.labels = images, idx, images.labels[idx]

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[self.idx[index]]


def save_classifier(model: MotionClassifier, report: ClassifierReport, path: str | Path) -> Path:
    """Weights (safetensors) at ``path`` and the report beside it (``.json``), both written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": str(CLASSIFIER_VERSION), "feature_version": str(FEATURE_VERSION)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    write_json_atomic(path.with_suffix(".json"), report.to_dict())
    return path


def load_classifier(path: str | Path | None = None) -> MotionClassifier:
    """A trained classifier (default: :func:`default_classifier_path`, where ``scripts/train_motion_classifier.py``
    writes it), in eval mode; UserError for a missing file or weights of another feature version."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_classifier_path()
    if not path.is_file():
        raise UserError(f"no motion classifier at {path} (train one: python scripts/train_motion_classifier.py)")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("feature_version") != str(FEATURE_VERSION):
        raise UserError(
            f"{path}: classifier for feature version {meta.get('feature_version')}, this daps computes "
            f"{FEATURE_VERSION}; retrain it (scripts/train_motion_classifier.py)"
        )
    from daps.data.motion import MOTION_TYPES

    model = MotionClassifier(num_classes=len(MOTION_TYPES))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def read_report(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).with_suffix(".json").read_text())
