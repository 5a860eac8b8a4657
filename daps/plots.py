"""Figures a person looks at: a reconstruction grid and training curves (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_reconstruction_grid(x: torch.Tensor, x_hat: torch.Tensor, path: Path, title: str = "") -> None:
    """Originals (top row of each pair) above reconstructions: ``x, x_hat (N, C, H, W)`` in [0, 1]."""
    plt = _pyplot()
    n = min(x.shape[0], 16)
    fig, axes = plt.subplots(2, n, figsize=(n * 0.9, 2.2))
    axes = axes.reshape(2, n)
    for i in range(n):
        for row, img in enumerate((x[i], x_hat[i])):
            img = img.detach().float().clamp(0, 1).cpu()
            ax = axes[row, i]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("data", fontsize=8)
    axes[1, 0].set_ylabel("recon", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_metrics(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def save_training_curves(metrics_path: Path, path: Path, title: str = "") -> None:
    """Plot train/val log p, val L2, ESS fraction, eta and beta against steps from ``metrics.jsonl``."""
    plt = _pyplot()
    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]

    def series(rs: list[dict], key: str) -> tuple[list, list]:
        pts = [(r["step"], r[key]) for r in rs if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    ax = axes[0, 0]
    ax.plot(*series(train, "log_p"), label="train", alpha=0.7)
    ax.plot(*series(val, "log_p"), "o-", label="validation")
    ax.set_title("log p(x|z) [nats, higher is better]")
    ax.legend()
    ax = axes[0, 1]
    ax.plot(*series(val, "l2"), "o-", color="C3")
    ax.set_title("validation L2 [lower is better]")
    ax = axes[1, 0]
    ax.plot(*series(train, "ess"), color="C2")
    ax.set_title("ESS / K")
    ax = axes[1, 1]
    ax.semilogy(*series(train, "eta"), label="eta")
    ax.semilogy(*series(train, "beta"), label="beta")
    ax.set_title("trust-region eta and entropy weight beta")
    ax.legend()
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
