"""How float32 matrix products and convolutions are computed on CUDA: in full float32, or in TF32.

On NVIDIA GPUs from Ampere on, cuBLAS and cuDNN can compute float32 products on tensor cores in TF32 (inputs
rounded to a 10-bit mantissa, float32 accumulation): several times faster for large products, about 1e-3 relative
error per product. torch's own defaults differ between the two (matmuls in float32, cuDNN convolutions in TF32), and
JAX's default precision, under which the original code ran, uses TF32 for both on these GPUs (JAX's "Matmul
precision" notes). ``daps train`` makes the choice explicit: ``train.tf32`` (default off) for the training step,
full float32 for everything else (validation, ``daps eval``). On the CPU these settings change nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _saved() -> tuple[object, object]:
    """The process's current setting, read so that reading never fails: torch >= 2.9 refuses to read the legacy
    ``allow_tf32`` flags after its newer ``fp32_precision`` settings were used, never the other way round."""
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):
        return matmul.fp32_precision, conv.fp32_precision
    return matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _restore(saved: tuple[object, object]) -> None:
    matmul_value, conv_value = saved
    if isinstance(matmul_value, str):  # the newer settings, as read
        torch.backends.cuda.matmul.fp32_precision = matmul_value
        torch.backends.cudnn.conv.fp32_precision = conv_value  # type: ignore[attr-defined]  # torch's stubs lack it
    else:
        torch.backends.cuda.matmul.allow_tf32 = bool(matmul_value)
        torch.backends.cudnn.allow_tf32 = bool(conv_value)


@contextlib.contextmanager
def float32_kernels(tf32: bool) -> Iterator[None]:
    """Inside: CUDA float32 matmuls and cuDNN convolutions in TF32 (``tf32=True``) or in full float32 (``False``);
    the process's setting is restored after. A CUDA graph recorded inside keeps the kernels chosen then."""
    saved = _saved()
    # The legacy flags: readable afterwards through either interface (the newer one may refuse a mix).
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        _restore(saved)


def tf32_enabled() -> tuple[bool, bool]:
    """Whether CUDA float32 matmuls and cuDNN convolutions use TF32 now, ``(matmuls, convolutions)``."""
    matmul_value, conv_value = _saved()
    if isinstance(matmul_value, str):
        return matmul_value == "tf32", conv_value == "tf32"
    return bool(matmul_value), bool(conv_value)
