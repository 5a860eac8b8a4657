"""Evaluation metrics: pure functions on tensors, and :func:`evaluate` over a dataset."""

from daps.metrics.codes import code_perplexity, codebook_utilization, position_code_entropy
from daps.metrics.evaluate import evaluate
from daps.metrics.image import l2_distance, mse_per_image, psnr_per_image, ssim_per_image

__all__ = [
    "code_perplexity",
    "codebook_utilization",
    "evaluate",
    "l2_distance",
    "mse_per_image",
    "position_code_entropy",
    "psnr_per_image",
    "ssim_per_image",
]
