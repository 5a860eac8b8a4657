"""``train.precision=bfloat16``: matmuls in bf16 under autocast, while log q, log p, the importance weights and
the ESS stay float32 and (for the same codes) change by far less than they vary."""

from __future__ import annotations

import json

import pytest
import torch

import daps.functional as DF
from daps import get_preset, parse_overrides
from daps.methods import build_method
from daps.train import train


def _terms(model, x, indices, eta: float, beta: float):
    log_q = model.encoder.log_prob(x, indices).sum(-1)  # (K, B)
    params = model.decoder(indices.flatten(0, 1))
    log_p = model.likelihood.log_prob(params.view(*indices.shape[:2], *params.shape[1:]), x)  # (K, B)
    weights = DF.importance_weights(log_q.detach(), log_p.detach(), torch.tensor(eta), beta)
    return log_q, log_p, weights, DF.effective_sample_size(weights)


@pytest.mark.parametrize("method", ["daps", "dapsna"])
def test_bf16_autocast_keeps_weights_and_ess(method, single_thread):
    cfg = get_preset("mnist", method)  # the real MNIST architecture
    torch.manual_seed(0)
    model = build_method(cfg, (1, 28, 28))
    x = (torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.8).float()
    indices = model.encoder.sample(x, 8, torch.Generator().manual_seed(1)).indices  # (K, B, T)
    reference = _terms(model, x, indices, eta=1.0, beta=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = _terms(model, x, indices, eta=1.0, beta=0.5)
        samples = model.encoder.sample(x, 8, torch.Generator().manual_seed(1))
    for name, _, b in zip(("log_q", "log_p", "weights", "ess"), reference, mixed):
        assert b.dtype == torch.float32, name
    log_q, log_p, weights, ess = mixed
    torch.testing.assert_close(log_q, reference[0], atol=0.2, rtol=0)  # sums of 8 tokens of ~-5.5 nats
    torch.testing.assert_close(log_p, reference[1], atol=0.0, rtol=2e-3)
    torch.testing.assert_close(weights, reference[2], atol=0.02, rtol=0)  # weights are ~1/8 on average
    torch.testing.assert_close(ess, reference[3], atol=0.0, rtol=0.02)
    assert samples.token_log_q.dtype == torch.float32 and samples.token_entropy.dtype == torch.float32
    # Sampling under bf16 draws from nearly the same distribution: most codes agree under the same uniforms.
    assert (samples.indices == indices).float().mean() > 0.8


def test_precision_is_validated():
    with pytest.raises(ValueError, match="train.precision"):
        parse_overrides(get_preset("mnist"), ["train.precision=float16"])


@pytest.mark.usefixtures("offline", "no_plots")
def test_a_bf16_training_run_completes(tmp_path, tiny_overrides):
    cfg = parse_overrides(
        get_preset("mnist"), [*tiny_overrides, "train.precision=bfloat16", f"train.out_dir={tmp_path / 'r'}"]
    )
    run = train(cfg)
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows and all(r["loss"] == r["loss"] and abs(r["loss"]) < 1e6 for r in train_rows)
    assert json.loads((run / "summary.json").read_text())["log_p"] < 0


@pytest.mark.parametrize("method", ["daps", "ppo", "vqvae", "fsq", "gumbel"])
def test_bf16_autocast_on_the_resnet_decoder(method, single_thread):
    """Natural-image presets under autocast: BatchNorm keeps float32 statistics, the step stays finite."""
    from test_contract import batch, tiny  # tests/ is on sys.path (pytest rootdir-less "prepend" imports)

    case = f"{method}@cifar10"
    model, _ = tiny(case)
    x = batch(case)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, step=3, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(out.x_hat).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name, buf in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            assert buf.dtype == torch.float32 and torch.isfinite(buf).all(), name
