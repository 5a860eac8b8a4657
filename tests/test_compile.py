"""The static-shape, compilable one-token sampling step gives the same codes as the default cached sampler."""

from __future__ import annotations

import json

import pytest
import torch

from daps import get_preset, parse_overrides
from daps.nets.ar_encoder import ARTransformerEncoder
from daps.nets.kv_cache import cache_buckets
from daps.train import train


def _encoder(num_tokens: int = 6) -> ARTransformerEncoder:
    torch.manual_seed(0)
    return ARTransformerEncoder(
        (1, 28, 28), num_tokens=num_tokens, vocab_size=16, width=16, num_layers=2, num_heads=2, mlp_ratio=2
    )


def test_cache_buckets():
    assert cache_buckets(6) == [6]
    assert cache_buckets(16) == [16]
    assert cache_buckets(49) == [16, 32, 49]
    assert cache_buckets(1024) == [16, 32, 64, 128, 256, 512, 1024]
    assert cache_buckets(64, smallest=64) == [64]
    assert cache_buckets(8192) == [128, 256, 512, 1024, 2048, 4096, 8192]  # never more than 7 graphs


@pytest.mark.parametrize("num_tokens, smallest", [(6, 16), (49, 16), (49, 49)])  # buckets: 6; 16, 32, 49; 49
def test_static_step_equals_the_cached_sampler_exactly(single_thread, num_tokens, smallest):
    enc = _encoder(num_tokens)
    x = (torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    reference = enc.sample(x, 4, torch.Generator().manual_seed(2))
    enc.compile_sampler(compile=False, smallest_bucket=smallest)
    static = enc.sample(x, 4, torch.Generator().manual_seed(2))
    assert torch.equal(static.indices, reference.indices)
    torch.testing.assert_close(static.token_log_q, reference.token_log_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(static.token_entropy, reference.token_entropy, atol=1e-6, rtol=0)


def test_compiled_sampler_gives_the_same_codes(single_thread):
    enc = _encoder(49)  # cache buckets 16, 32, 49: one graph each
    x = (torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    reference = enc.sample(x, 4, torch.Generator().manual_seed(2))
    enc.compile_sampler()
    compiled = enc.sample(x, 4, torch.Generator().manual_seed(2))
    assert torch.equal(compiled.indices, reference.indices)
    torch.testing.assert_close(compiled.token_log_q, reference.token_log_q, atol=1e-5, rtol=0)
    with torch._dynamo.config.patch(error_on_recompile=True):  # a second call reuses the three graphs
        again = enc.sample(x, 4, torch.Generator().manual_seed(3))
    assert again.indices.shape == (4, 5, 49)


@pytest.mark.usefixtures("offline", "no_plots")
def test_train_compile_gives_the_validation_of_an_eager_run(tmp_path, tiny_overrides):
    summaries = []
    for flag in ("false", "true"):
        cfg = parse_overrides(
            get_preset("mnist"),
            [*tiny_overrides, "train.steps=3", f"train.compile={flag}", f"train.out_dir={tmp_path / flag}"],
        )
        run = train(cfg)
        summaries.append(json.loads((run / "summary.json").read_text()))
    assert summaries[0]["log_p"] == pytest.approx(summaries[1]["log_p"], abs=1e-3)


def test_compiled_daps_step_matches_eager(single_thread):
    from daps.methods import build_method

    cfg = parse_overrides(
        get_preset("mnist"),
        ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
         "decoder.embed_dim=8", "decoder.hidden=16,16", "daps.num_samples=4", "daps.init_eta=1.0"],
    )
    x = (torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_method(cfg, (1, 28, 28))
        if compiled:
            model.compile_step()
        outs = []
        for step in (0, 50):  # two beta values: the graph must be reused, not wrong
            out = model(x, step, generator=torch.Generator().manual_seed(step))
            model.zero_grad(set_to_none=True)
            out.loss.backward()
            outs.append((out.loss.detach(), out.logs["ess"], {n: p.grad.clone() for n, p in model.named_parameters()}))
        results.append(outs)
    for (loss_e, ess_e, grads_e), (loss_c, ess_c, grads_c) in zip(*results):
        torch.testing.assert_close(loss_c, loss_e, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(ess_c, ess_e, atol=1e-5, rtol=1e-5)
        for name, g in grads_e.items():
            torch.testing.assert_close(grads_c[name], g, atol=1e-5, rtol=1e-3, msg=name)


def test_static_caches_are_reused_and_zeroed_between_calls(single_thread):
    # CUDA graphs need the compiled step's mutated caches at one address across calls; a reused cache must be
    # zeroed again, or stale keys leak into masked attention (a NaN left in it would poison every logit).
    enc = _encoder(49)
    x = (torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    reference = enc.sample(x, 4, torch.Generator().manual_seed(2))
    enc.compile_sampler(compile=False)
    enc.sample(x, 4, torch.Generator().manual_seed(5))
    (caches, *_), = enc._static_pool.values()
    pointers = [k.data_ptr() for k, _ in caches]
    for k, v in caches:
        k.fill_(float("nan"))
        v.fill_(float("nan"))
    again = enc.sample(x, 4, torch.Generator().manual_seed(2))
    assert torch.equal(again.indices, reference.indices)
    (caches_again, *_), = enc._static_pool.values()
    assert [k.data_ptr() for k, _ in caches_again] == pointers
    enc.sample(x[:3], 4)  # another batch size: a second entry; a third shape evicts the oldest
    enc.sample(x[:2], 4)
    assert len(enc._static_pool) == 2


def test_ppo_compile_step_covers_the_encoder_that_draws_its_training_codes(single_thread, monkeypatch):
    """PPO draws its training codes with the frozen theta_old, a copy made when the model is built: train.compile
    must give that copy the compiled one-token step too (eager static step here, to stay quick), and the recompile
    limit must leave room for both encoders' graphs. Fails on: only theta's sampler compiled (the training step
    then samples through the plain loop, 0 static steps)."""
    import torch._dynamo.config as dynamo_config

    import daps.methods.ppo as ppo_mod
    from daps.methods import build_method
    from daps.nets.ar_encoder import SAMPLER_RECOMPILE_LIMIT

    cfg = parse_overrides(
        get_preset("mnist", "ppo"),
        ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
         "decoder.embed_dim=8", "decoder.hidden=16,16"],
    )
    model = build_method(cfg, (1, 28, 28))
    monkeypatch.setattr(ppo_mod, "compile_sampler", lambda enc, mode: enc.compile_sampler(compile=False))
    model.compile_step()
    calls = {"old": 0, "new": 0}
    for name, enc in (("old", model.old_encoder), ("new", model.encoder)):
        step_fn = enc._static_step_fn
        if step_fn is None:  # not compiled: it samples through the plain loop and counts nothing
            continue

        def counted(*args, _fn=step_fn, _name=name, **kwargs):
            calls[_name] += 1
            return _fn(*args, **kwargs)

        enc._static_step_fn = counted
    x = (torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    model(x, 0, generator=torch.Generator().manual_seed(0)).loss.backward()
    assert calls["old"] == 4  # one static step per token of the training codes
    monkeypatch.setattr(dynamo_config, "recompile_limit", 8)
    model.encoder.compile_sampler(compile=True)  # wraps, compiles nothing until called
    assert dynamo_config.recompile_limit == SAMPLER_RECOMPILE_LIMIT >= 2 * 3 * 7
