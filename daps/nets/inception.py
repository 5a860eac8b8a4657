"""Inception-v3 feature extractor for FID (pool3, 2048-d).

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium") is defined on the pool3 features of Inception-v3 (Szegedy et al. 2016, "Rethinking the
Inception Architecture for Computer Vision"). The layout here follows the TensorFlow "2015-12-05" FID
graph, which differs from the torchvision ImageNet model in three places that change the numbers:
bias-free convolutions with BatchNorm eps=1e-3, average pools that exclude padding, and a *max* pool in
the last block's pool branch. Parameter names follow torchvision / pytorch-fid so that their state dicts
(e.g. ``pt_inception-2015-12-05-6726825d.pth``) load strictly; the fc (logits) layer is not built.

Nothing is downloaded: :func:`load_fid_inception` reads local weights only.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from daps.errors import UserError

logger = logging.getLogger(__name__)

PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
_PYTORCH_FID_GLOB = "pt_inception-2015-12-05*.pth"


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU; the TF graph's conv unit."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's SAME average pooling divides by the number of valid (non-padded) inputs.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/5c/5d): 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1."""

    def __init__(self, in_ch: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35x35 -> 17x17 (Mixed_6a): 3x3/2 | 1x1->3x3->3x3/2 | maxpool/2."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, b3d, bp], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convs (Mixed_6b..6e); ``c7`` is the bottleneck width."""

    def __init__(self, in_ch: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = conv(b7d)
        bp = self.branch_pool(_avg_pool(x))
        return torch.cat([b1, b7, b7d, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17x17 -> 8x8 (Mixed_7a): 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool/2."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs (Mixed_7b, 7c). The FID graph's Mixed_7c uses a max pool in
    its pool branch (``pool="max"``); Mixed_7b an average pool that excludes padding."""

    def __init__(self, in_ch: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise UserError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_ch, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _avg_pool(x)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, b3d, bp], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 up to pool3. Input ``(N, 3, 299, 299)`` float in [-1, 1]; output ``(N, 2048)`` float32."""

    def __init__(self) -> None:
        super().__init__()
        self.weight_files: list[str] = []
        """The files :func:`load_fid_inception` read the weights from (absolute paths; merged in this order)."""
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise UserError(f"expected images (N, 3, H, W), got shape {tuple(x.shape)}")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3)).float()  # pool3: global average over the 8x8 grid


def _default_folders() -> list[Path]:
    """``$DAPS_DATA_DIR/fid_inception``, then ``$XDG_CACHE_HOME/daps/fid_inception`` (or ``~/.cache/...``)."""
    folders = []
    data_dir = os.environ.get("DAPS_DATA_DIR", "").strip()
    if data_dir:
        folders.append(Path(data_dir).expanduser() / "fid_inception")
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    cache = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    folders.append(cache / "daps" / "fid_inception")
    return folders


def _files_in(folder: Path) -> list[Path] | None:
    """The pytorch-fid single file if present (it is complete on its own), else all ``*.pth`` shards."""
    if not folder.is_dir():
        return None
    single = sorted(folder.glob(_PYTORCH_FID_GLOB))
    if single:
        return [single[-1]]
    shards = sorted(p for p in folder.glob("*.pth") if p.is_file())
    return shards or None


def find_fid_weights(weights: str | os.PathLike | None = None) -> list[Path] | None:
    """Weight files to merge, or None if nothing was found. ``weights``: a file, a folder of ``*.pth``
    shards, or None to search ``$DAPS_DATA_DIR/fid_inception`` then the cache folder."""
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_file():
            return [path]
        return _files_in(path)
    for folder in _default_folders():
        files = _files_in(folder)
        if files:
            return files
    return None


def _load_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # torch's text for it (several lines) suggests weights_only=False: unsafe
            raise UserError(f"{f}: not a readable PyTorch state dict (not a file torch.save wrote, or one holding "
                            "more than tensors; daps loads weights only)") from None
        except (RuntimeError, KeyError, EOFError) as err:  # truncated or not a torch file
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise UserError(f"{f}: not a readable PyTorch state dict ({type(err).__name__}: {detail})") from None
        if not isinstance(part, dict):
            # A wrong file is bad user input, reported like the key mismatches below.
            raise UserError(f"{f}: expected a state dict, got {type(part).__name__}")  # noqa: TRY004
        state.update(part)
    # The logits layer is not part of the feature extractor.
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_fid_inception(weights: str | os.PathLike | None = None, device: torch.device | str | None = None
                       ) -> FIDInceptionV3:
    """The FID Inception-v3 with local weights, in eval mode on ``device`` (default CPU).

    ``weights``: a state-dict file (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` works, its fc
    keys are ignored), a folder of ``*.pth`` shards merged in name order, or None to search
    ``$DAPS_DATA_DIR/fid_inception/`` then ``$XDG_CACHE_HOME/daps/fid_inception/`` (``~/.cache/...``).
    """
    files = find_fid_weights(weights)
    if not files:
        where = [str(Path(weights).expanduser())] if weights is not None else [str(p) for p in _default_folders()]
        raise FileNotFoundError(
            f"FID Inception weights not found (looked in: {', '.join(where)}); pass a file or folder of *.pth "
            "shards (--fid-weights, train.fid_weights), set DAPS_DATA_DIR to a folder containing fid_inception/, "
            f"or put pytorch-fid's {PYTORCH_FID_FILE} in {_default_folders()[-1]}")
    state = _load_state_dict(files)
    net = FIDInceptionV3()
    expected = set(net.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise UserError(
            f"FID Inception weights {[str(f) for f in files]} do not match the network: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    ref = net.state_dict()
    bad_shape = [f"{k}: {tuple(v.shape)} != {tuple(ref[k].shape)}" for k, v in state.items() if v.shape != ref[k].shape]
    if bad_shape:
        raise UserError(f"FID Inception weights have wrong shapes, e.g. {bad_shape[:3]}")
    net.load_state_dict(state, strict=True)
    net.weight_files = [str(f.resolve()) for f in files]
    logger.info("loaded FID Inception weights from %s", ", ".join(str(f) for f in files))
    net.requires_grad_(False)
    # channels_last weights make oneDNN convolutions ~1.6x faster on CPU (values equal to float rounding).
    # (torch's type hints of Module.to omit memory_format)
    net = net.to(  # type: ignore[call-overload]
        device=device if device is not None else "cpu", memory_format=torch.channels_last
    )
    return net.eval()
