"""The method contract, checked for every method in ``METHODS`` on a tiny configuration.

Each method must: return a finite scalar loss and well-shaped ``Output``; give every parameter a finite
gradient from that one loss; decode its own codes to its reconstruction in eval mode; be deterministic
under a seed; survive a checkpoint round trip; and improve its reconstructions on a toy dataset.
"""

from __future__ import annotations

import pytest
import torch

from daps.checkpoint import load_model, save_checkpoint
from daps.config import get_preset, parse_overrides
from daps.methods import METHODS, build_method
from daps.optim import Optimizers

TINY = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
    "decoder.embed_dim=8", "decoder.hidden=32,32", "decoder.fsq_token_dim=8", "daps.num_samples=4",
    "reinforce.num_samples=4", "relaxed.num_rao_samples=5", "fsq.levels=4,3", "vae.hidden=32", "train.steps=100",
]
# Natural images: the cifar10 preset (ResNet decoder, Gaussian likelihood) shrunk to 16x16 and a 2x2 grid.
NATURAL = ["data.image_shape=3,16,16", "decoder.resnet_width=8", "decoder.resnet_blocks=1"]
IMAGE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 16, 16)}

pytestmark = pytest.mark.usefixtures("single_thread")


def _split(case: str) -> tuple[str, str]:
    """``"daps"`` -> (daps, mnist); ``"daps@cifar10"`` -> (daps, cifar10)."""
    method, _, preset = case.partition("@")
    return method, preset or "mnist"


def tiny(case: str, *extra: str, seed: int = 0):
    method, preset = _split(case)
    overrides = [*TINY, *(NATURAL if preset != "mnist" else []), *extra]
    cfg = parse_overrides(get_preset(preset, method), overrides)
    torch.manual_seed(seed)
    return build_method(cfg, IMAGE_SHAPES[preset]), cfg


def batch(case: str = "daps", b: int = 8, seed: int = 0) -> torch.Tensor:
    """Binary images for MNIST; standardized-scale Gaussian noise images for natural-image presets."""
    shape = IMAGE_SHAPES[_split(case)[1]]
    g = torch.Generator().manual_seed(seed)
    if shape[0] == 1:
        return (torch.rand(b, *shape, generator=g) > 0.8).float()
    return torch.randn(b, *shape, generator=g)


CASES = sorted(METHODS) + [f"{m}@cifar10" for m in sorted(METHODS) if m != "vae"]


@pytest.fixture(params=CASES)
def method(request) -> str:
    return request.param


def test_output_contract(method):
    model, _ = tiny(method)
    out = model(batch(method), step=3, generator=torch.Generator().manual_seed(0))
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert out.x_hat.shape == batch(method).shape and not out.x_hat.requires_grad
    assert torch.isfinite(out.x_hat).all()
    if out.indices is not None:
        assert out.indices.shape == (8, 4) and out.indices.dtype == torch.long
        assert 0 <= out.indices.min() and out.indices.max() < model.vocab_size
    assert "log_p" in out.logs
    for key, value in out.logs.items():
        assert value.shape == () and not value.requires_grad and torch.isfinite(value), key


def test_every_parameter_gets_a_finite_gradient(method):
    model, _ = tiny(method)
    out = model(batch(method), step=3, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{method}: no gradient for {missing}"
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    groups = {"encoder": 0.0, "decoder": 0.0}
    for name, p in model.named_parameters():
        for group in groups:
            if name.startswith(group + "."):
                groups[group] += float(p.grad.abs().sum())
    assert all(v > 0 for v in groups.values()), groups


def test_optimizer_specs_cover_every_parameter_once(method):
    model, cfg = tiny(method)
    specs = model.optimizer_specs(cfg.optim.lr, cfg.optim.grad_clip)
    seen = [id(p) for s in specs for p in s.params]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in model.parameters()}


def test_decode_of_encode_is_the_reconstruction(method):
    model, _ = tiny(method)
    model.eval()
    x = batch(method)
    codes = model.encode(x, torch.Generator().manual_seed(5))
    rec = model.reconstruct(x, torch.Generator().manual_seed(5))
    if rec.indices is not None:
        assert torch.equal(codes, rec.indices)
    torch.testing.assert_close(model.decode(codes), rec.x_hat)
    assert rec.x_hat.shape == x.shape and rec.log_p.shape == (8,)
    if _split(method)[1] == "mnist":  # a Bernoulli likelihood is a probability; a Gaussian density need not be
        assert (rec.log_p <= 0).all()
    for term in (rec.kl, rec.log_q):
        assert term is None or term.shape == (8,)
    if rec.kl is not None:
        assert (rec.kl >= 0).all()


def test_same_seed_same_result(method):
    losses = []
    for _ in range(2):
        model, _ = tiny(method, seed=7)
        out = model(batch(method), step=1, generator=torch.Generator().manual_seed(3))
        losses.append((out.loss.detach(), out.x_hat))
    assert torch.equal(losses[0][0], losses[1][0]) and torch.equal(losses[0][1], losses[1][1])


def test_checkpoint_round_trip(method, tmp_path):
    model, cfg = tiny(method)
    model(batch(method), step=0, generator=torch.Generator().manual_seed(0))  # let lazy state (EMA, k-means) initialize
    save_checkpoint(tmp_path, 1, model, cfg, {"step": 1}, keep=1)
    loaded = load_model(tmp_path)
    assert type(loaded) is type(model)
    reference = model.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, reference[key], msg=key)
    model.eval()
    x = batch(method)
    a = model.reconstruct(x, torch.Generator().manual_seed(1))
    b = loaded.reconstruct(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.x_hat, b.x_hat)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_training_improves_reconstructions_on_a_toy_dataset(method):
    """Four fixed binary patterns, 120 steps at a high learning rate: the validation log-likelihood of the
    patterns must rise well above its value at initialization (about -540 nats per 28x28 image)."""
    model, cfg = tiny(method, "train.steps=120", "daps.init_eta=1.0")
    g = torch.Generator().manual_seed(0)
    patterns = (torch.rand(4, *IMAGE_SHAPES["mnist"], generator=g) > 0.7).float()
    optimizers = Optimizers(model, model.optimizer_specs(3e-3, cfg.optim.grad_clip), 1e-4)

    def val_log_p() -> float:
        model.eval()
        rec = model.reconstruct(patterns, torch.Generator().manual_seed(0))
        model.train()
        return rec.log_p.mean().item()

    before = val_log_p()
    for step in range(120):
        out = model(patterns[torch.randint(4, (32,), generator=g)], step, generator=g)
        optimizers.zero_grad()
        out.loss.backward()
        optimizers.step()
    after = val_log_p()
    assert after > before + 150, (method, before, after)
