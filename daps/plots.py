"""Figures a person looks at: a reconstruction grid and training curves (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from daps.runfolder import SOFTWARE, atomic_path


def save_figure(fig, path: Path, dpi: int) -> None:
    """Write a matplotlib figure as a PNG, atomically, tagged as daps's (``Software``: see
    :func:`daps.runfolder.is_daps_png`), and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", metadata={"Software": SOFTWARE})
    _pyplot().close(fig)


def plot_line(ax, xs: Sequence[float], ys: Sequence[float], *fmt: str, **kwargs: Any) -> None:
    """``ax.plot``, with a marker on a series of one point: a line through one point draws nothing (a run shorter than
    its logging interval logs one training row)."""
    if len(xs) == 1 and not fmt and "marker" not in kwargs:
        kwargs["marker"] = "o"
    ax.plot(xs, ys, *fmt, **kwargs)


def save_png(image, path: Path) -> None:
    """Write a PIL image as a PNG, atomically, tagged as daps's (``Software``: see
    :func:`daps.runfolder.is_daps_png`)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, img: torch.Tensor) -> None:
    """Draw one ``(C, H, W)`` image in [0, 1] without ticks (gray for one channel), each pixel a sharp block: the
    default resampling smooths a 32-pixel image drawn at under 3x its size, so originals look as blurred as their
    reconstructions."""
    img = img.detach().float().clamp(0, 1).cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def spread_indices(count: int, shown: int = 16) -> torch.Tensor:
    """Up to ``shown`` indices evenly spread over ``range(count)``, first and last included, on the host: examples to
    draw from a split that is often sorted by class (the first 16 of MNIST-5k's validation split are all zeros)."""
    return torch.linspace(0, count - 1, shown, device="cpu").long().unique()


def save_reconstruction_grid(x: torch.Tensor, x_hat: torch.Tensor, path: Path, title: str = "") -> None:
    """Originals (top row of each pair) above reconstructions: ``x, x_hat (N, C, H, W)`` in [0, 1]."""
    plt = _pyplot()
    n = min(x.shape[0], 16)
    fig, axes = plt.subplots(2, n, figsize=(n * 0.9, 2.2))
    axes = axes.reshape(2, n)
    for i in range(n):
        for row, img in enumerate((x[i], x_hat[i])):
            _show(axes[row, i], img)
    axes[0, 0].set_ylabel("data", fontsize=8)
    axes[1, 0].set_ylabel("recon", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def save_image_grid(images: torch.Tensor, path: Path, columns: int = 10, scale: int = 2,
                    row_labels: list[str] | None = None) -> None:
    """``images (N, C, H, W)`` in [0, 1] as one PNG grid of ``columns`` per row (1-pixel gaps, each pixel
    ``scale`` x ``scale``), written atomically; ``row_labels`` (one per row) are written in black on a white margin
    left of their rows, e.g. the class a prior sampled each row of."""
    from PIL import Image

    images = images.cpu()  # one copy from the device, not one per image
    n, c, h, w = images.shape
    rows = max(1, -(-n // columns))
    grid = torch.ones(c, rows * (h + 1) + 1, min(n, columns) * (w + 1) + 1, device="cpu")
    for i in range(n):
        r, col = divmod(i, columns)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = images[i]
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8)
    array = pixels[0].numpy() if c == 1 else pixels.permute(1, 2, 0).numpy()
    img = Image.fromarray(array)
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    if row_labels is not None:
        if len(row_labels) != rows:
            raise ValueError(f"{len(row_labels)} row labels for a grid of {rows} rows")
        img = _label_rows(img, row_labels, (h + 1) * scale, scale)
    save_png(img, path)


def _label_rows(img, labels: list[str], row_height: int, gap: int):
    """``img`` (a grid whose row r spans pixels ``gap + r * row_height`` on) on a white margin wide enough for the
    longest label, each label written in black, vertically centred on its row."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    labels = [label if len(label) <= 24 else label[:21] + "..." for label in labels]  # ImageNet's names run long
    boxes = [font.getbbox(label) for label in labels]
    pad = 4
    margin = math.ceil(max(right for _, _, right, _ in boxes)) + 2 * pad  # a FreeType font measures in floats
    white = 255 if img.mode == "L" else (255, 255, 255)
    labelled = Image.new(img.mode, (img.width + margin, img.height), white)
    labelled.paste(img, (margin, 0))
    draw = ImageDraw.Draw(labelled)
    black = 0 if img.mode == "L" else (0, 0, 0)
    for r, (label, (_, top, _, bottom)) in enumerate(zip(labels, boxes)):
        centre = gap + r * row_height + (row_height - gap) // 2
        draw.text((pad, centre - (top + bottom) // 2), label, fill=black, font=font)
    return labelled


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``; a last line cut off by a killed process, and any line that is not a JSON
    object (a hand edit, a damaged disk), is skipped."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def save_training_curves(metrics_path: Path, path: Path, title: str = "", quality: str = "l2") -> None:
    """Plot train/val log p, val L2 (or PSNR with ``quality="psnr"``), ESS fraction, eta and beta against
    steps from ``metrics.jsonl``."""
    plt = _pyplot()
    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]

    def series(rs: list[dict], key: str) -> tuple[list, list]:
        pts = [(r["step"], r[key]) for r in rs if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    ax = axes[0, 0]
    plot_line(ax, *series(train, "log_p"), label="train", alpha=0.7)
    ax.plot(*series(val, "log_p"), "o-", label="validation")
    ax.set_title("log p(x|z) [nats, higher is better]")
    ax.legend()
    ax = axes[0, 1]
    if quality == "psnr":
        ax.plot(*series(val, "psnr"), "o-", color="C3")
        ax.set_title("validation PSNR [dB, higher is better]")
    else:
        ax.plot(*series(val, "l2"), "o-", color="C3")
        ax.set_title("validation L2 [distance per example, model scale; lower is better]", fontsize=10)
    ax = axes[1, 0]
    if any("ess" in r for r in train):
        plot_line(ax, *series(train, "ess"), color="C2")
        ax.set_title("training ESS / K [effective fraction of the K samples]", fontsize=10)
    else:
        plot_line(ax, *series(train, "kl"), color="C2")
        ax.plot(*series(val, "kl"), "o-", color="C4")
        ax.set_title("KL(q || prior) [nats]")
    ax = axes[1, 1]
    for key in ("eta", "beta", "temperature", "kl_coeff"):
        xs, ys = series(train, key)
        if xs and min(ys) > 0:
            plot_line(ax, xs, ys, label=key)
            ax.set_yscale("log")
    ax.set_title("schedules and multipliers")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def save_comparison_curves(
    curves: dict[str, list[list[tuple[int, float]]]], path: Path, title: str = "",
    ylabel: str = "validation log p(x|z) [nats, higher is better]", log_y: bool = False,
) -> None:
    """One quantity against steps (by default validation log p), one line per arm (mean over seeds, band =
    min..max over seeds).

    ``curves[label]`` holds one list of ``(step, value)`` per seed; ``log_y``: a log axis where the values span
    more than a decade.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    low, high = math.inf, -math.inf  # of the values drawn (the axis adds margins, which may cross zero)
    for i, (method, runs) in enumerate(curves.items()):
        steps = sorted(set.intersection(*(set(s for s, _ in run) for run in runs))) if runs else []
        if not steps:
            continue
        per_seed = [dict(run) for run in runs]
        values = torch.tensor([[d[s] for s in steps] for d in per_seed], device="cpu")  # (seeds, points)
        low, high = min(low, values.min().item()), max(high, values.max().item())
        ax.plot(steps, values.mean(0).tolist(), "o-", ms=3, label=method, color=f"C{i % 10}")
        if values.shape[0] > 1:
            ax.fill_between(
                steps, values.min(0).values.tolist(), values.max(0).values.tolist(), alpha=0.2, color=f"C{i % 10}"
            )
    ax.set_xlabel("optimizer step")
    if log_y and low > 0 and high / low > 10:  # within a decade a log axis has almost no labelled ticks
        ax.set_yscale("log")
        ylabel += " (log scale)"
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    seeds = sorted({len(runs) for runs in curves.values() if runs})
    counts = " or ".join(str(n) for n in seeds)
    # what the line and the band are, where there is a band to explain
    ax.legend(fontsize=8, title=f"mean of {counts} seeds, band: min..max" if seeds and seeds[-1] > 1 else None,
              title_fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def save_comparison_reconstructions(
    x: torch.Tensor, recons: dict[str, torch.Tensor], path: Path, title: str = ""
) -> None:
    """The originals in the first row, then one row per method: ``x (N, C, H, W)``, ``recons[m] (N, C, H, W)``."""
    plt = _pyplot()
    n, rows = x.shape[0], 1 + len(recons)
    fig, axes = plt.subplots(rows, n, figsize=(n * 0.8 + 1.2, rows * 0.85), squeeze=False)
    for r, (label, imgs) in enumerate([("data", x), *recons.items()]):
        for i in range(n):
            _show(axes[r, i], imgs[i])
        axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
