"""Resampled weighted maximum likelihood (``daps.resample=m``): the encoder's update equals the full-K one in
expectation, exactly (integrated over the systematic uniform), and a resampled run trains and resumes."""

from __future__ import annotations

import pytest
import torch

from daps import get_preset, parse_overrides
from daps.errors import UserError
from daps.methods import build_method

TINY = ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=8", "encoder.num_tokens=3",
        "decoder.embed_dim=8", "decoder.hidden=16,16", "daps.num_samples=6", "daps.init_eta=1.0"]


def _encoder_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.encoder.parameters()])


@pytest.mark.parametrize("m", [1, 3])
def test_systematic_resampling_is_the_full_update_in_expectation(m, single_thread):
    torch.manual_seed(0)
    model = build_method(parse_overrides(get_preset("mnist"), [*TINY, f"daps.resample={m}"]), (1, 28, 28))
    x = (torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    samples = model.encoder.sample(x, 6, torch.Generator().manual_seed(2))
    beta = torch.tensor(0.3)
    model.zero_grad(set_to_none=True)
    model._objective(x, samples.indices, beta, samples.log_q, None)[0].backward()
    full = _encoder_grads(model)
    grid = ((torch.arange(1000) + 0.5) / 1000).tolist()
    total = torch.zeros_like(full)
    for u in grid:  # E over the one uniform per input of systematic resampling, as a fine Riemann sum
        model.zero_grad(set_to_none=True)
        model._objective(x, samples.indices, beta, samples.log_q, torch.full((1, 4), u))[0].backward()
        total += _encoder_grads(model)
    mean = total / len(grid)
    assert (mean - full).norm() / full.norm() < 0.01, float((mean - full).norm() / full.norm())
    # a single draw is not the full update (the check can fail): resampling is noisy, only its mean is exact
    model.zero_grad(set_to_none=True)
    model._objective(x, samples.indices, beta, samples.log_q, torch.full((1, 4), 0.9))[0].backward()
    assert (_encoder_grads(model) - full).norm() / full.norm() > 0.05


def test_resample_settings_are_checked():
    with pytest.raises(UserError, match="daps.resample must be in"):
        parse_overrides(get_preset("mnist"), ["daps.resample=9"]).options.validate()
    with pytest.raises(UserError, match="resample_scheme"):
        parse_overrides(get_preset("mnist"), ["daps.resample_scheme=stratified"]).options.validate()


@pytest.mark.usefixtures("offline", "no_plots")
def test_a_resampled_run_trains_and_resumes_exactly(tmp_path, tiny_overrides):
    from safetensors.torch import load_file

    from daps.train import train

    def run(name: str, stop_after: int, resume: bool = False):
        overrides = [*tiny_overrides, "daps.resample=2", "daps.resample_scheme=multinomial", "train.steps=6",
                     f"train.stop_after={stop_after}", f"train.out_dir={tmp_path / name}"]
        cfg = parse_overrides(get_preset("mnist"), overrides)
        return train(cfg, resume=resume)

    straight = run("a", 0)
    run("b", 3)
    cfg_b = run("b", 0, resume=True)
    a = load_file(str(straight / "checkpoints/step_00000006/model.safetensors"))
    b = load_file(str(cfg_b / "checkpoints/step_00000006/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_daps_resamples_systematically(monkeypatch, single_thread):
    """With daps.resample=m each code is drawn floor(m w) or ceil(m w) times (systematic); multinomial draws, also
    unbiased, would often miss that (and are noisier)."""
    import daps.functional as DF

    torch.manual_seed(0)
    model = build_method(parse_overrides(get_preset("mnist"), [*TINY, "daps.resample=4"]), (1, 28, 28))
    seen = []
    real = DF.resample_indices

    def spy(weights, uniforms, scheme, m):
        chosen = real(weights, uniforms, scheme, m)
        seen.append((weights, chosen))
        return chosen

    monkeypatch.setattr(DF, "resample_indices", spy)
    x = (torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.8).float()
    model(x, step=0, generator=torch.Generator().manual_seed(0))
    (weights, chosen), = seen
    counts = torch.nn.functional.one_hot(chosen, 6).sum(0).T.double()  # (K, B)
    expected = 4 * weights.double()
    assert ((counts >= expected.floor() - 1e-6) & (counts <= expected.ceil() + 1e-6)).all()
