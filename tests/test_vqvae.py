"""VQ-VAE (original: models/vqvae.py) and the EMA variant: nearest-neighbour lookup against brute force, where the
gradients go, the EMA update, k-means initialization and dead-code restarts, determinism and parameter counts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import daps
import daps.functional as DF
from daps import get_preset
from daps.methods import build_method
from daps.metrics.codes import code_perplexity
from daps.presets import configured

TINY = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
    "decoder.embed_dim=8", "decoder.hidden=32,32",
]


def tiny(method: str, *extra: str, seed: int = 0):
    cfg = configured("mnist", method, [*TINY, *extra])
    torch.manual_seed(seed)
    return build_method(cfg, (1, 28, 28))


def batch(b: int = 8, seed: int = 0) -> torch.Tensor:
    return (torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) > 0.8).float()


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------------
# Functions


@pytest.mark.parametrize("shape", [(50, 8), (4, 6, 8), (1, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vq_nearest_matches_brute_force(shape, dtype):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(*shape, generator=g, dtype=dtype)
    codebook = torch.randn(37, 8, generator=g, dtype=dtype)
    expected = ((z[..., None, :] - codebook) ** 2).sum(-1).argmin(-1)  # (..., V) differences, no expansion trick
    assert torch.equal(DF.vq_nearest(z, codebook), expected)
    assert torch.equal(DF.vq_nearest(codebook, codebook), torch.arange(37))  # each code is its own nearest


def test_vq_nearest_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="disagree"):
        DF.vq_nearest(torch.zeros(3, 4), torch.zeros(5, 3))


def test_empirical_perplexity():
    assert DF.empirical_perplexity(torch.arange(16).repeat(3), 16).item() == pytest.approx(16.0)
    assert DF.empirical_perplexity(torch.full((5, 4), 3), 16).item() == pytest.approx(1.0)
    indices = torch.randint(10, (64, 8), generator=torch.Generator().manual_seed(0))
    assert DF.empirical_perplexity(indices, 10).item() == pytest.approx(code_perplexity(indices, 10), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# Plain VQ-VAE (the original's)


def test_mnist_parameter_counts_match_the_original():
    """The original's counts: vqvae MNIST rec 160,512 / gen 250,960 (+ codebook 16,384); the EMA variant has the same
    networks and its codebook is a buffer."""
    for method in ("vqvae", "vqvae-ema"):
        torch.manual_seed(0)
        model = build_method(get_preset("mnist", method), (1, 28, 28))
        assert count(model.encoder) == 160_512 and count(model.decoder) == 250_960, method
        assert model.codebook.shape == (256, 64) and model.vocab_size == 256
    assert count(model) == 160_512 + 250_960  # vqvae-ema: no parameter outside encoder and decoder
    assert not model.codebook.requires_grad
    torch.manual_seed(0)
    plain = build_method(get_preset("mnist", "vqvae"), (1, 28, 28))
    assert count(plain) == 160_512 + 250_960 + 16_384
    assert plain.codebook.std().item() == pytest.approx(1 / 8, rel=0.05)  # N(0, 1/E) init


def test_loss_is_codebook_plus_commitment_plus_reconstruction():
    model = tiny("vqvae", "vq.commitment=0.25")
    x = batch()
    out = model(x, step=0)
    logs = out.logs
    torch.testing.assert_close(out.loss, logs["codebook_loss"] + 0.25 * logs["commitment_loss"] + logs["recon_loss"])
    torch.testing.assert_close(logs["codebook_loss"], logs["commitment_loss"])  # same value, different gradients
    rec = model.reconstruct(x)
    torch.testing.assert_close(logs["recon_loss"], -rec.log_p.mean() / 784)
    torch.testing.assert_close(out.x_hat, rec.x_hat)  # the straight-through value is exactly z_q


def _capture_decoder_input(model) -> list[torch.Tensor]:
    """Record the tensor the decoder reads, with its gradient retained."""
    seen: list[torch.Tensor] = []
    decode = model.decoder.decode_latents

    def spy(h: torch.Tensor) -> torch.Tensor:
        h.retain_grad()
        seen.append(h)
        return decode(h)

    model.decoder.decode_latents = spy
    return seen


@pytest.mark.parametrize("method", ["vqvae", "vqvae-ema"])
def test_straight_through_gradient_reaches_the_encoder(method):
    """Without a commitment term, the encoder output's gradient is exactly the decoder input's."""
    model = tiny(method, "vq.commitment=0")
    z_e_seen: list[torch.Tensor] = []

    def keep(module, args, out: torch.Tensor) -> None:
        out.retain_grad()
        z_e_seen.append(out)

    model.encoder.register_forward_hook(keep)
    decoder_inputs = _capture_decoder_input(model)
    model(batch(), step=0).loss.backward()
    (z_e,), (z,) = z_e_seen, decoder_inputs
    assert z.grad.abs().sum() > 0
    torch.testing.assert_close(z_e.grad, z.grad)


def test_codebook_gradient_comes_only_from_the_codebook_loss():
    """d/de_v mean((z_q - sg(z_e))^2) = 2 (n_v e_v - sum_{t: k_t = v} z_e,t) / (B T E); reconstruction and
    commitment add nothing."""
    model = tiny("vqvae", "vq.commitment=0.5")
    x = batch()
    out = model(x, step=0)
    out.loss.backward()
    with torch.no_grad():
        z_e = model.encoder(x).reshape(-1, 16)  # (B*T, E)
        onehot = F.one_hot(DF.vq_nearest(z_e, model.codebook), 16).float()  # (B*T, V)
        expected = 2 * (onehot.sum(0)[:, None] * model.codebook - onehot.T @ z_e) / z_e.numel()
    torch.testing.assert_close(model.codebook.grad, expected)


# --------------------------------------------------------------------------------------------------
# EMA variant


def test_ema_codebook_moves_toward_its_assigned_encoder_outputs_without_gradients():
    """One training step: e_v <- (g m_v + (1 - g) sum_assigned z_e) / (g N_v + (1 - g) n_v), starting from
    N_v = 1, m_v = e_v (the package's state without k-means); unused codes stay put."""
    decay = 0.9
    model = tiny("vqvae-ema", "vq.kmeans_init=false", "vq.dead_code_threshold=0", f"vq.ema_decay={decay}")
    x = batch()
    before = model.codebook.clone()
    with torch.no_grad():
        z_e = model.encoder(x).reshape(-1, 16)  # (B*T, E)
    onehot = F.one_hot(DF.vq_nearest(z_e, before), 16).float()  # (B*T, V)
    counts, sums = onehot.sum(0), onehot.T @ z_e  # (V,), (V, E)
    out = model(x, step=0, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    after = model.codebook
    assert not after.requires_grad and after.grad is None
    expected = (decay * before + (1 - decay) * sums) / (decay + (1 - decay) * counts)[:, None]
    torch.testing.assert_close(after, expected, rtol=1e-3, atol=1e-6)  # up to the package's Laplace smoothing
    used = counts > 0
    assert used.sum() >= 2 and (~used).sum() >= 1
    means = sums[used] / counts[used, None]
    assert ((after[used] - means).norm(dim=-1) < (before[used] - means).norm(dim=-1)).all()
    torch.testing.assert_close(after[~used], before[~used], rtol=1e-3, atol=1e-6)


def test_the_ema_quantizers_random_draws_follow_the_runs_generator():
    """k-means draws its initial centroids at random: the same weights and batch with generators seeded 3 and 4
    give different codebooks, and the same seed the same one (the package's own random state is seeded from the
    step's generator, not from a constant)."""
    x = batch()
    books = []
    for seed in (3, 4, 3):
        model = tiny("vqvae-ema", "vq.kmeans_init=true")
        model(x, step=0, generator=torch.Generator().manual_seed(seed))
        books.append(model.codebook.detach().clone())
    assert torch.equal(books[0], books[2]) and not torch.equal(books[0], books[1])


@pytest.mark.parametrize("method, buffers", [("vae", ("encoder.norm.running_mean",)),
                                             ("vqvae-ema", ("quantizer._codebook.embed",
                                                            "quantizer._codebook.initted"))])
def test_a_checkpoint_holds_every_buffer_as_well_as_the_parameters(tmp_path, method, buffers):
    """BatchNorm statistics and the EMA codebook are buffers, not parameters: after a training step moved them, a
    checkpoint loaded back gives every entry of the state dict exactly (``daps`` itself has no persistent buffer,
    so its checkpoint tests would not notice buffers left out)."""
    from daps.checkpoint import save_checkpoint

    extra = ("vq.kmeans_init=true",) if method == "vqvae-ema" else ()
    model = tiny(method, *extra)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(batch(), step=0, generator=torch.Generator().manual_seed(0))
    state = model.state_dict()
    for name in buffers:
        assert name in state and name not in dict(model.named_parameters())
        assert not torch.equal(state[name], before[name]), name  # the step moved it
    cfg = configured("mnist", method, [*TINY, *extra])
    save_checkpoint(tmp_path / "run", 1, model, cfg, {"step": 1}, keep=1)
    back = daps.load_model(tmp_path / "run")
    assert back.state_dict().keys() == state.keys()
    for name, value in back.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_kmeans_init_happens_on_the_first_training_batch_only(monkeypatch):
    import vector_quantize_pytorch.vector_quantize_pytorch as vqp

    calls: list[int] = []
    kmeans = vqp.kmeans

    def counting_kmeans(samples, *args, **kwargs):
        calls.append(samples.shape[-2])
        return kmeans(samples, *args, **kwargs)

    monkeypatch.setattr(vqp, "kmeans", counting_kmeans)
    model = tiny("vqvae-ema", "vq.kmeans_init=true")
    x = batch()
    model.eval()  # evaluating before training: read-only, no k-means
    model.reconstruct(x)
    model.encode(x)
    model(x, step=0)
    model.train()
    model.reconstruct(x)
    assert calls == [] and not model.quantizer._codebook.initted and (model.codebook == 0).all()
    generator = torch.Generator().manual_seed(0)
    model(x, step=0, generator=generator)
    assert calls == [8 * 4]  # every token of the first training batch
    assert model.quantizer._codebook.initted and (model.codebook.norm(dim=-1) > 0).all()
    for step in range(1, 3):
        model(batch(seed=step), step=step, generator=generator)
    assert calls == [8 * 4]


def test_dead_codes_are_restarted_from_the_batch():
    model = tiny("vqvae-ema", "vq.kmeans_init=true", "vq.dead_code_threshold=2")
    generator = torch.Generator().manual_seed(0)
    model(batch(), step=0, generator=generator)  # k-means init
    state = model.quantizer._codebook
    with torch.no_grad():  # make code 3 dead: far from every input, and unused
        state.embed[0, 3] = 1e3
        state.embed_avg[0, 3] = 0.0
        state.cluster_size[0, 3] = 0.0
    x = batch(seed=1)
    with torch.no_grad():
        z_e = model.encoder(x).reshape(-1, 16)  # (B*T, E)
    out = model(x, step=1, generator=generator)
    assert (out.indices != 3).all()  # it was dead for this batch's lookup ...
    distance = (model.codebook[3] - z_e).norm(dim=-1).min()  # ... and now is one of the batch's vectors
    assert distance < 1e-5
    assert state.cluster_size[0, 3] == 2.0  # usage reset to the threshold


def test_training_step_is_reproducible_from_the_generator_and_leaves_the_global_rng_alone():
    codebooks = []
    for global_seed in (1, 2):
        model = tiny("vqvae-ema", "vq.kmeans_init=true", seed=7)
        torch.manual_seed(global_seed)  # a different global state at the step
        state = torch.get_rng_state()
        model(batch(), step=0, generator=torch.Generator().manual_seed(3))
        assert torch.equal(torch.get_rng_state(), state)
        codebooks.append(model.codebook.clone())
    torch.testing.assert_close(codebooks[0], codebooks[1], rtol=0, atol=0)


def test_state_dict_is_plain_unshared_tensors():
    model = tiny("vqvae-ema")
    model(batch(), step=0, generator=torch.Generator().manual_seed(0))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    pointers = [v.untyped_storage().data_ptr() for v in state.values()]
    assert len(set(pointers)) == len(pointers)
    loaded = load_safetensors(save_safetensors(state))
    assert set(loaded) == set(state) and {"quantizer._codebook.embed", "quantizer._codebook.initted"} <= set(loaded)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_module_stays_plain_after_a_training_step():
    """The package flags an internal buffer requires_grad during forward; the method undoes it, so a trained
    model can still be moved and deep-copied."""
    model = tiny("vqvae-ema")
    model(batch(), step=0, generator=torch.Generator().manual_seed(0)).loss.backward()
    assert not any(b.requires_grad for b in model.buffers())
    clone = copy.deepcopy(model.to(torch.float64))
    assert torch.equal(clone.codebook, model.codebook)


def test_vqvae_ema_commitment_gradient_pulls_the_encoder_to_its_code():
    """The commitment term c ||z_e - sg(z_q)||^2 (mean) adds c * 2 (z_e - z_q) / numel to the encoder output's
    gradient: two models alike but for c differ by exactly that (an undetached z_q would cancel it)."""
    grads, seen = {}, {}
    for c in (0.0, 0.5):
        model = tiny("vqvae-ema", f"vq.commitment={c}")  # the same seed: the same weights and codebook

        def keep(module, args, out):
            out.retain_grad()
            seen["z_e"] = out

        model.encoder.register_forward_hook(keep)
        decode = model.decoder.decode_latents

        def spy(h, decode=decode):
            seen["z_q"] = h.detach().clone()
            return decode(h)

        model.decoder.decode_latents = spy
        model(batch(), step=0, generator=torch.Generator().manual_seed(0)).loss.backward()
        grads[c] = seen["z_e"].grad
    z_e, z_q = seen["z_e"].detach(), seen["z_q"]
    assert (z_e - z_q).abs().max() > 0
    torch.testing.assert_close(grads[0.5] - grads[0.0], 0.5 * 2 * (z_e - z_q) / z_e.numel())


@pytest.mark.parametrize("method", ["vqvae", "vqvae-ema"])
def test_commitment_weights_of_the_presets(method):
    assert get_preset("lafan1-h1", method).vq.commitment == 0.5  # the original's LAFAN configs
    assert get_preset("mnist", method).vq.commitment == 0.25
