"""``evaluate``: one stochastic code per image over a split, then every validation metric (SPEC 8)."""

from __future__ import annotations

import torch
import torch.nn as nn

from daps.metrics.codes import code_perplexity, codebook_utilization, position_code_entropy
from daps.metrics.image import l2_distance, mse_per_image, psnr_per_image


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Reconstruct ``images (N, C, H, W)`` with ``model.reconstruct`` and average the metrics.

    ``model`` follows :class:`daps.methods.Method` (``reconstruct``, ``final_beta``, ``vocab_size``).

    Returns (nats for log-likelihood terms, summed over data dims / tokens, averaged over images):
    ``log_p``, ``l2``, ``mse``, ``psnr`` (dB, mean of per-image values) and ``num_images``; for methods
    with a distribution q also ``elbo``, ``beta_elbo`` (final beta), ``kl`` (to the prior), ``log_q`` and
    ``token_entropy`` (mean per-position entropy of q, categorical q only); for discrete codes also
    ``codebook_utilization``, ``code_perplexity`` and ``position_code_entropy``.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    all_indices = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        rec = model.reconstruct(x, generator)
        terms = {
            "log_p": rec.log_p,
            "l2": l2_distance(rec.x_hat, x),
            "mse": mse_per_image(rec.x_hat, x),
            "psnr": psnr_per_image(rec.x_hat, x),
        }
        if rec.kl is not None:
            terms.update(elbo=rec.log_p - rec.kl, beta_elbo=rec.log_p - model.final_beta * rec.kl, kl=rec.kl)
        if rec.log_q is not None:
            terms["log_q"] = rec.log_q
        if rec.token_entropy is not None:
            terms["token_entropy"] = rec.token_entropy.mean(1)
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.double().sum())
        if rec.indices is not None:
            all_indices.append(rec.indices)
    model.train(was_training)
    n = images.shape[0]
    out = {key: value / n for key, value in sums.items()}
    if all_indices:
        indices = torch.cat(all_indices)  # (N, T)
        v = model.vocab_size
        out["codebook_utilization"] = codebook_utilization(indices, v)
        out["code_perplexity"] = code_perplexity(indices, v)
        out["position_code_entropy"] = position_code_entropy(indices, v)
    out["num_images"] = n
    return out
