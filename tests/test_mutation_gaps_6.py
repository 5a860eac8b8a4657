"""Known answers for behaviour that a mutation sweep of the baselines and likelihoods (daps/methods/gumbel.py, fsq.py,
vqvae.py, vqvae_ema.py, vae.py, ppo.py, reinforce.py, common.py and daps/likelihoods.py) found no test guarding.
Each test names the slip it fails on; the references are closed forms, hand-worked cases and the methods' own
definitions of a code's decoding."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from daps.methods import build_method
from daps.presets import configured

TINY = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
    "decoder.embed_dim=8", "decoder.hidden=32,32", "reinforce.num_samples=4", "train.steps=100",
]

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny, latency-bound models


def tiny(method: str, *extra: str, seed: int = 0):
    cfg = configured("mnist", method, [*TINY, *extra])
    torch.manual_seed(seed)
    return build_method(cfg, (1, 28, 28))


def batch(b: int = 6, seed: int = 0) -> torch.Tensor:
    return (torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) > 0.8).float()


# --------------------------------------------------------------------------- REINFORCE


def test_reinforces_reconstruction_is_the_decoding_of_the_code_it_returns():
    """A training step returns one code per input (the first of its K samples) and ``x_hat``, the decoder mean of
    that same code: in eval mode (deterministic decoder) ``x_hat == decode(indices)``. The K = 4 samples of a
    16^4 code space differ, so a reconstruction taken from another sample shows. Fails on: ``x_hat`` from
    ``params[-1]`` (the last sample's decoding) while ``indices`` is the first sample's code."""
    model = tiny("reinforce").eval()
    x = batch()
    out = model(x, 0, torch.Generator().manual_seed(1))
    assert out.indices.shape == (6, 4)
    torch.testing.assert_close(out.x_hat, model.decode(out.indices), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- deterministic quantizers


@pytest.mark.parametrize("method", ["vqvae", "vqvae-ema", "fsq"])
def test_an_eval_mode_step_decodes_the_quantized_code(method):
    """In eval mode a quantizer's step scores the code it returns: ``x_hat`` is the decoder mean of the codebook
    rows (FSQ: grid points) of ``indices``, i.e. ``decode(indices)``, and the logged ``log_p`` is that of
    ``reconstruct`` (the same quantized decoding). vqvae-ema first takes one training-mode forward so that its
    k-means initialization has filled the codebook. Fails on: vqvae-ema's eval-mode forward decoding the
    unquantized encoder output z_e instead of z_q (a validation loss of an identity "quantizer")."""
    model = tiny(method)
    x = batch()
    if method == "vqvae-ema":
        model.train()(x, 0, torch.Generator().manual_seed(0))
    model.eval()
    out = model(x, 1, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.x_hat, model.decode(out.indices), rtol=0, atol=1e-6)
    rec = model.reconstruct(x)
    assert torch.equal(rec.indices, out.indices)
    torch.testing.assert_close(out.logs["log_p"], rec.log_p.mean(), rtol=1e-6, atol=1e-4)


def test_fsqs_logged_perplexity_is_that_of_its_implicit_codebook():
    """The logged perplexity is exp(H) of the empirical distribution of the step's codes over the prod(L) = 240
    codes of the implicit codebook, computed here by counting: with a small random encoder the 32 x 4 codes
    spread over several of them. Fails on: the perplexity of the codes folded into 16 bins (codes mod 16), which
    merges distinct codes."""
    model = tiny("fsq").eval()
    with torch.no_grad():  # spread the encoder's outputs so the codes are not all alike
        for p in model.encoder.parameters():
            p.mul_(3.0)
    out = model(batch(32), 0)
    counts = Counter(out.indices.flatten().tolist())
    assert int(out.indices.max()) < 240
    n = out.indices.numel()
    entropy = -sum(c / n * math.log(c / n) for c in counts.values())
    folded = Counter(i % 16 for i in out.indices.flatten().tolist())
    assert len(folded) < len(counts), "the check needs two codes that agree mod 16"
    assert float(out.logs["perplexity"]) == pytest.approx(math.exp(entropy), rel=1e-5)
