"""``evaluate``: one stochastic code per image over a split, then every validation metric (original:
jadex/base/base_trainer.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from daps.data import EvalSet, ExampleMetrics, Standardize
from daps.errors import UserError
from daps.methods.types import Method
from daps.metrics.codes import code_perplexity, codebook_utilization, position_code_entropy
from daps.metrics.image import l2_distance, mse_per_image, psnr_per_image, ssim_per_image
from daps.precision import float32_kernels
from daps.progress import progress_bar

log = logging.getLogger(__name__)

FID_PROTOCOLS = ("val-pairs", "reference")


@dataclass
class FIDSetup:
    """How FID is measured during an evaluation (original: utils/fidjax.py).

    ``val-pairs``: the reconstructions against the very validation images they reconstruct (both through the
    same network, same count). ``reference``: the reconstructions against fixed statistics ``reference``
    (mu, sigma) from ``daps fid-stats`` or an ADM reference batch, named by ``reference_name``.
    """

    net: nn.Module
    protocol: str
    reference: tuple[np.ndarray, np.ndarray] | None = None
    reference_name: str = ""
    batch_size: int = 50


def fid_setup(
    protocol: str,
    weights: str | Path | None = None,
    reference: str | Path | None = None,
    device: torch.device | str | None = None,
    data: Any = None,
    reference_stats: tuple | None = None,
) -> FIDSetup | None:
    """Load the FID network (on ``device``) and reference statistics for ``protocol``; None, with a logged reason,
    when no ``weights`` path is given and none are found in the default places (FID is then skipped; nothing is
    downloaded). A given ``weights`` path that does not exist raises FileNotFoundError. With ``data`` (the
    :class:`daps.config.DataConfig` of the images compared), statistics recorded for images of another size are
    refused and those of another dataset warned about (files without a record, such as ADM's, are taken as they
    are). ``reference_stats``: what :func:`daps.metrics.fid.load_fid_stats` returned for ``reference``, when the
    caller read it already (``daps eval`` does, to refuse a foreign file before the model and the data load)."""
    from daps.metrics.fid import load_fid_stats
    from daps.nets.inception import load_fid_inception

    if protocol == "none":
        return None
    if protocol not in FID_PROTOCOLS:
        raise UserError(f"unknown FID protocol {protocol!r}; choose one of: {', '.join(FID_PROTOCOLS)}")
    ref = None
    if protocol == "reference":
        if not reference:
            raise UserError("FID protocol 'reference' needs a statistics file (daps fid-stats ... --out stats.npz)")
        mu, sigma, num, meta = reference_stats if reference_stats is not None else load_fid_stats(reference)
        ref = (mu, sigma)
        described = ", ".join(f"{k} {meta[k]}" for k in ("dataset", "split", "image_shape") if k in meta)
        log.info("FID reference %s: %s images%s", reference, num if num is not None else "an unknown number of",
                 f" ({described})" if described else "")
        if data is not None:
            check_reference_matches(reference, meta, data)
    try:
        net = load_fid_inception(weights or None, device)
    except FileNotFoundError as err:
        if weights:  # asked for by path: a mistake to report, not to skip
            raise
        log.warning("FID skipped: %s", err)
        return None
    return FIDSetup(net, protocol, ref, str(reference or ""))


SAME_IMAGES = ({"imagenet256", "imagenet256-sample"}, {"cifar10", "cifar10-jpeg"})
"""Datasets whose images are the same kind (a sample of the other, a lossy copy): no warning between them."""


def check_reference_matches(reference: str | Path, meta: dict, data: Any) -> None:
    """UserError when FID statistics were recorded (``meta``, as ``daps fid-stats`` writes it) for images of another
    size than ``data``'s; a warning when for another dataset."""
    shape, dataset = meta.get("image_shape"), meta.get("dataset")
    if shape is not None and tuple(shape) != tuple(data.image_shape):
        raise UserError(f"FID reference {reference} holds statistics of {dataset or 'some'} images of shape "
                        f"{tuple(shape)}, but these images are {tuple(data.image_shape)}: make statistics at this "
                        f"size (daps fid-stats {data.name} ...)")
    if dataset and dataset != data.name and {dataset, data.name} not in SAME_IMAGES:
        log.warning("FID reference %s holds statistics of %s images; these are %s images: the FID compares two "
                    "datasets", reference, dataset, data.name)


@torch.no_grad()
@float32_kernels(tf32=False)  # validation in full float32 on CUDA, whatever the training step used
def evaluate(
    model: Method,
    images: EvalSet,
    generator: torch.Generator | None = None,
    standardize: Standardize | None = None,
    fid: FIDSetup | None = None,
    example_metrics: ExampleMetrics | None = None,
    progress: bool = False,
) -> dict[str, float | str]:
    """Reconstruct every image with ``model.reconstruct`` and average the metrics over images.

    Args:
        model: a trained method (``reconstruct``, ``final_beta``, ``vocab_size``).
        images: the validation set: raw batches ``(B, C, H, W)``, e.g. ``TensorEvalSet(images, batch_size)``
            or :func:`daps.data.eval_set`.
        standardize: raw -> model scale and back to [0, 1]; default: the identity (binarized MNIST).
        fid: also measure FID (original: utils/fidjax.py) under ``fid.protocol``.
        example_metrics: the per-example quality metrics in place of the image ones (``mse``, ``psnr``, ``ssim``),
            e.g. :class:`daps.data.motion.MotionMetrics` for motion windows.
        progress: a bar on a terminal (``daps eval``; not during training, which has its own).

    Returns (log-likelihood terms in nats, summed over data dims / tokens, averaged over images):
    ``log_p``, ``l2`` (model scale), ``mse``, ``psnr`` (dB), ``ssim`` (all on [0, 1], means of per-image
    values) and ``num_images``; for methods with a distribution q also ``elbo``, ``beta_elbo`` (final beta),
    ``kl`` (to the prior), ``log_q`` and ``token_entropy`` (categorical q only); for discrete codes also
    ``codebook_utilization``, ``code_perplexity`` and ``position_code_entropy``; with ``fid``: ``fid``,
    ``fid_protocol`` and ``fid_num_images``; ``skipped_files`` when unreadable files of a folder dataset were
    replaced by other images.
    """
    from daps.metrics.fid import FeatureStats, frechet_distance

    standardize = standardize or Standardize()
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    weighted_by: dict[str, str] = dict(getattr(example_metrics, "weighted_by", {}))  # metric -> its weights' key
    weight_sums = dict.fromkeys(weighted_by, 0.0)
    all_indices = []
    n = 0
    fake_stats = FeatureStats() if fid is not None else None
    real_stats = FeatureStats() if fid is not None and fid.protocol == "val-pairs" else None
    unit = "image" if example_metrics is None else "example"  # e.g. motion windows
    with progress_bar(images.num_images, "evaluating", unit, progress) as bar:
        for raw in images.batches():
            x = standardize(raw)  # (B, C, H, W) model scale
            if fid is not None and x.shape[1] != 3:
                raise UserError(f"FID needs RGB images; these have {x.shape[1]} channel(s)")
            rec = model.reconstruct(x, generator)
            x_unit, x_hat_unit = standardize.to_unit(x), standardize.to_unit(rec.x_hat)
            terms = {"log_p": rec.log_p, "l2": l2_distance(rec.x_hat, x)}
            if example_metrics is not None:
                per_example = example_metrics(x, rec.x_hat.float())
                weights = {key: per_example[w].double() for key, w in weighted_by.items()}
                for weight_key in set(weighted_by.values()):
                    per_example.pop(weight_key)
                for key, weight in weights.items():
                    per_example[key] = per_example[key].double() * weight
                    weight_sums[key] += float(weight.sum())
                terms.update(per_example)
            else:
                terms.update(mse=mse_per_image(x_hat_unit, x_unit), psnr=psnr_per_image(x_hat_unit, x_unit))
                if min(x.shape[-2:]) >= 11:  # SSIM's 11x11 window
                    terms["ssim"] = ssim_per_image(x_hat_unit, x_unit)
            if rec.kl is not None:
                terms.update(elbo=rec.log_p - rec.kl, kl=rec.kl)
                if model.final_beta is not None:
                    terms["beta_elbo"] = rec.log_p - model.final_beta * rec.kl
            if rec.log_q is not None:
                terms["log_q"] = rec.log_q
            if rec.token_entropy is not None:
                terms["token_entropy"] = rec.token_entropy.mean(1)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.double().sum())
            if rec.indices is not None:
                all_indices.append(rec.indices.cpu())
            if fid is not None and fake_stats is not None:
                _add_features(fid, fake_stats, x_hat_unit)
                if real_stats is not None:
                    _add_features(fid, real_stats, _real_images(raw, standardize))
            n += x.shape[0]
            bar.update(x.shape[0])
    model.train(was_training)
    if n == 0:
        raise UserError("evaluate: no images to evaluate")
    out: dict[str, float | str] = {
        key: (value / weight_sums[key] if weight_sums[key] else 0.0) if key in weight_sums else value / n
        for key, value in sums.items()
    }
    v = model.vocab_size
    if all_indices and v is not None:
        indices = torch.cat(all_indices)  # (N, T)
        out["codebook_utilization"] = codebook_utilization(indices, v)
        out["code_perplexity"] = code_perplexity(indices, v)
        out["position_code_entropy"] = position_code_entropy(indices, v)
    out["num_images"] = n
    skipped = images.num_skipped  # folder data: unreadable files replaced by other images
    if skipped:
        out["skipped_files"] = skipped
        log.warning("evaluation: %d unreadable file(s) were replaced by other images of the split", skipped)
    if fid is not None and fake_stats is not None:
        if n < 2:
            raise UserError("FID needs at least 2 images")
        if real_stats is not None:
            mu_ref, sigma_ref = real_stats.mu, real_stats.sigma
        elif fid.reference is not None:
            mu_ref, sigma_ref = fid.reference
        else:
            raise ValueError("FIDSetup: the reference protocol needs reference statistics")
        out["fid"] = frechet_distance(fake_stats.mu, fake_stats.sigma, mu_ref, sigma_ref)
        out["fid_protocol"] = fid.protocol if real_stats is not None else f"reference:{Path(fid.reference_name).name}"
        out["fid_num_images"] = n
    return out


def _real_images(raw: torch.Tensor, standardize: Standardize) -> torch.Tensor:
    """What FID sees of real images: stored uint8 pixels as they are (not a float round trip of them, which
    would truncate some levels by one), anything else mapped through the model's scale to [0, 1]."""
    return raw if raw.dtype == torch.uint8 else standardize.to_unit(standardize(raw))


def _add_features(fid: FIDSetup, stats, images: torch.Tensor) -> None:
    """Inception pool3 features of ``images (B, 3, H, W)`` (uint8, or float in [0, 1]), added to ``stats``."""
    from daps.metrics.fid import fid_preprocess

    device = next(fid.net.parameters()).device
    for chunk in images.split(fid.batch_size):
        stats.update(fid.net(fid_preprocess(chunk.to(device))).double().cpu())


@torch.no_grad()
def dataset_fid_stats(
    data,
    split: str,
    out: str | Path,
    weights: str | Path | None = None,
    max_images: int = 0,
    batch_size: int = 50,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
    command: str = "",
    progress: bool = False,
) -> dict:
    """Inception statistics (mu, sigma) of the real images of ``data`` (a :class:`daps.config.DataConfig`),
    split ``split``, as seen by :func:`evaluate` (same subset, same crops), written to ``out`` (npz); ``progress``:
    a bar on a terminal.

    Returns the metadata written with the statistics.
    """
    from daps.data import check_fid_images, dataset_spec, eval_set
    from daps.metrics.fid import FeatureStats, check_stats_out, save_fid_stats
    from daps.nets.inception import load_fid_inception

    out = check_stats_out(out, overwrite)  # before the images are read
    check_fid_images(data.name, data.image_shape, "FID")
    spec = dataset_spec(data.name)
    images = eval_set(data, split, max_images, batch_size, torch.device(device))  # missing data: said first
    net = load_fid_inception(weights or None, device)
    stats = FeatureStats()
    fid = FIDSetup(net, "reference", batch_size=batch_size)
    with progress_bar(images.num_images, "Inception features", "image", progress) as bar:
        for raw in images.batches():  # uint8 pixels as stored (in-memory sets) or as cropped (folders)
            _add_features(fid, stats, _real_images(raw, spec.standardize))
            bar.update(raw.shape[0])
    meta = {
        "dataset": spec.name, "split": split, "num_images": stats.num, "image_shape": list(data.image_shape),
        "skipped_files": images.num_skipped,
        "weights": net.weight_files, "command": command, "note": spec.note,
        "preprocessing": "as the original's fidjax: [0,1] -> uint8 (truncation) -> [-1,1] -> bilinear 299x299"
        " without antialiasing",
    }
    save_fid_stats(out, stats, stats.num, meta, overwrite=overwrite)
    return meta
