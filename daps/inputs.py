"""Image files as a tokenizer's inputs, and its outputs as images: what ``encode`` and ``decode`` need around them.

    x = daps.load_images("photos/", model)      # (N, C, H, W) on the model's scale
    codes = model.encode(x)
    daps.save_images(model.decode(codes), model, "decoded/")
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch

from daps.errors import UserError, first_few

if TYPE_CHECKING:
    from daps.methods.types import Method

log = logging.getLogger(__name__)


def image_files(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """The image files of a folder (sorted by name, not recursive; the suffixes of the folder datasets, any case;
    hidden files such as macOS's ``._x.jpg`` left out, as there; subfolders and other files left out with a warning
    that names them) or the given paths."""
    from daps.data.imagefolder import IMAGE_EXTENSIONS, is_image_name

    if isinstance(source, (str, Path)):
        folder = Path(source)
        if folder.is_file():
            return [folder]
        if not folder.is_dir():
            raise UserError(f"{folder} is neither an image file nor a folder")
        files: list[Path] = []
        left_out: list[str] = []  # what a user may have meant as inputs: subfolders (not read), other suffixes
        for p in sorted(folder.iterdir()):
            if is_image_name(p.name) and p.is_file():
                files.append(p)
            elif not p.name.startswith("."):
                left_out.append(p.name + ("/" if p.is_dir() else ""))
        if not files:
            subfolders = [name for name in left_out if name.endswith("/")]
            hint = f"; subfolders are not read: name one of {first_few(subfolders)}" if subfolders else ""
            raise UserError(f"{folder} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}){hint}")
        if left_out:
            log.warning("%s: %d entr%s left out (only image files directly in the folder are read): %s",
                        folder, len(left_out), "y" if len(left_out) == 1 else "ies", first_few(left_out))
        return files
    files = [Path(p) for p in source]
    if not files:
        raise UserError("no image files given")
    return files


def _check_model(model: object, caller: str) -> None:
    """A daps model (what daps.load_model / daps.from_pretrained return), not e.g. the path of one."""
    if getattr(model, "input_spec", None) is None or getattr(model, "config", None) is None:
        raise UserError(f"{caller} takes a daps model as `model` (from daps.load_model or daps.from_pretrained), "
                        f"got {type(model).__name__}")


def load_images(source: str | Path | Iterable[str | Path], model: Method) -> torch.Tensor:
    """Image files as the model's inputs ``(N, C, H, W)``: read as stored, as the folder datasets read training
    and validation images (an EXIF orientation tag is not applied, as torchvision's loader does not: turn a
    phone's photos upright first), converted to its channels (grayscale or RGB), resized (shorter side) and
    center-cropped to its size, then brought to its dataset's scale: binarized by ``pixel > 127`` for binary
    (Bernoulli) models such as MNIST's, standardized as in training otherwise; on the model's device."""
    from PIL import Image, UnidentifiedImageError

    from daps.data import dataset_spec
    from daps.data.transforms import pil_to_uint8, resize_center_crop, to_rgb

    _check_model(model, "load_images")
    channels, height, width = model.input_spec.image_shape
    spec = dataset_spec(model.config.data.name)
    if spec.windows is not None or channels not in (1, 3) or height != width:
        raise UserError(f"a {model.config.data.name} model does not take images")
    pixels = []
    for path in image_files(source):
        try:
            with Image.open(path) as img:
                img = resize_center_crop(to_rgb(img), height)
                px = pil_to_uint8(img)  # (3, H, W)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise UserError(f"{path} is not a readable image ({err})") from None
        if channels == 1:  # ITU-R 601 luma (what PIL's "L" mode computes)
            weights = torch.tensor([0.299, 0.587, 0.114], device=px.device).view(3, 1, 1)
            luma = (weights * px.float()).sum(0, keepdim=True)
            px = luma.round().clamp(0, 255).to(torch.uint8)
        pixels.append(px)
    # on the model's device (encode refuses inputs elsewhere), as uint8: a quarter of the float32 copy
    param = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    raw = torch.stack(pixels).to(param.device if param is not None else "cpu")  # (N, C, H, W) uint8
    if spec.likelihood == "bernoulli":
        return (raw > 127).float()
    return spec.standardize(raw)


def save_images(x: torch.Tensor, model: Method, folder: str | Path, prefix: str = "image") -> list[Path]:
    """Model-scale ``x (N, C, H, W)`` (data or decoder means) as PNG files ``folder/<prefix>_0000.png``, ...
    (existing files of those names are refused)."""
    from PIL import Image

    from daps.data import dataset_spec
    from daps.metrics.fid import off_unit_scale
    from daps.plots import save_png
    from daps.runfolder import refuse_tilde

    _check_model(model, "save_images")
    channels = model.input_spec.image_shape[0]
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels or not x.is_floating_point():
        got = f"shape {tuple(x.shape)}, {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise UserError(f"save_images takes images (N, {channels}, H, W) on the model's scale, got {got}")
    if not bool(torch.isfinite(x).all()):
        raise UserError("save_images: the images have NaN or infinite values")
    folder = Path(folder)
    refuse_tilde(folder, "folder")
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        raise UserError(f"save_images: {folder} exists and is not a folder")
    standardize = dataset_spec(model.config.data.name).standardize
    unit = standardize.to_unit(x.detach().cpu(), clip=False)
    off = off_unit_scale(unit) if standardize.shown is None else None  # a feature map's colours are clipped by design
    if off is not None:  # (an empty batch has no extremes: it writes nothing, as before)
        raise UserError(f"save_images takes images on the model's scale; these would be pixels from "
                        f"{off[0] * 255:.4g} to {off[1] * 255:.4g} of 0..255 (most clipped): pass what "
                        "the model takes or gives (daps.load_images, reconstruct(x).x_hat)")
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (unit.clamp(0, 1) * 255).round().to(torch.uint8)
    paths = [folder / f"{prefix}_{i:04d}.png" for i in range(len(pixels))]
    existing = [p for p in paths if p.exists()]
    if existing:
        raise UserError(f"{existing[0]} exists; choose another folder or prefix")
    for path, px in zip(paths, pixels):
        array = px[0].numpy() if px.shape[0] == 1 else px.permute(1, 2, 0).numpy()
        save_png(Image.fromarray(array), path)
    return paths
