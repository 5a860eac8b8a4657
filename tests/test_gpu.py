"""CUDA-only checks (marker ``gpu``; skipped without a CUDA device): what ``train.compile`` promises on a GPU.

Run by ``benchmarks/gpu_check.py`` whenever a GPU is lent (``pytest -m gpu``).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from daps import get_preset, parse_overrides
from daps.nets.ar_encoder import ARTransformerEncoder
from daps.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_compiled_sampler_runs_under_cuda_graphs_and_gives_the_eager_codes():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    enc = ARTransformerEncoder(
        (1, 28, 28), num_tokens=49, vocab_size=16, width=32, num_layers=2, num_heads=2, mlp_ratio=2
    ).cuda()
    x = (torch.rand(8, 1, 28, 28, device="cuda") > 0.5).float()
    reference = enc.sample(x, 4, torch.Generator("cuda").manual_seed(2))
    enc.compile_sampler(mode="reduce-overhead")  # what train.compile does on CUDA
    counters.clear()
    for _ in range(3):  # the first call compiles and records, later calls replay
        compiled = enc.sample(x, 4, torch.Generator("cuda").manual_seed(2))
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    same = (compiled.indices == reference.indices).float().mean().item()
    assert same > 0.99, same  # equal up to rare float-rounding flips of the inverse-CDF draw
    torch.testing.assert_close(compiled.log_q, reference.log_q, atol=0.05, rtol=0)


def test_shared_prefixes_on_cuda_give_the_whole_pass_values():
    """``encoder.share_prefixes=on`` on CUDA (the default, ``cpu``, does not share there): the same codes and log q,
    and the same gradients up to float rounding, as the whole pass."""
    torch.manual_seed(0)
    enc = ARTransformerEncoder(
        (1, 28, 28), num_tokens=8, vocab_size=4, width=32, num_layers=2, num_heads=2, mlp_ratio=2, share_prefixes="on"
    ).cuda()
    x = (torch.rand(16, 1, 28, 28, device="cuda") > 0.5).float()
    results = []
    for mode in ("on", "off"):
        enc.share_prefixes = mode
        samples = enc.sample(x, 8, torch.Generator("cuda").manual_seed(2))
        enc.zero_grad()
        log_q = enc.log_prob(x, samples.indices)
        log_q.sum().backward()
        results.append((samples, log_q.detach(), torch.cat([p.grad.flatten() for p in enc.parameters()])))
    (shared, shared_log_q, shared_grad), (whole, whole_log_q, whole_grad) = results
    assert (shared.indices == whole.indices).float().mean().item() > 0.99  # up to rare rounding flips of a draw
    same = (shared.indices == whole.indices).all(-1)  # (K, B): codes drawn alike
    torch.testing.assert_close(shared_log_q[same], whole_log_q[same], atol=1e-5, rtol=0)
    if bool(same.all()):
        assert (shared_grad - whole_grad).norm() <= 1e-4 * whole_grad.norm()


@pytest.mark.usefixtures("offline", "no_plots")
def test_compiled_bf16_daps_run_trains_on_cuda(tmp_path, tiny_overrides):
    summaries = []
    for compile_, precision in (("false", "float32"), ("true", "bfloat16")):
        cfg = parse_overrides(
            get_preset("mnist"),
            [*tiny_overrides, "train.steps=4", f"train.compile={compile_}", f"train.precision={precision}",
             f"train.out_dir={tmp_path / compile_}"],
        )
        run = train(cfg, device="cuda")
        summaries.append(json.loads((run / "summary.json").read_text()))
    for summary in summaries:
        assert all(v == v for v in summary.values() if isinstance(v, float)), summary  # no NaN
    assert summaries[1]["log_p"] == pytest.approx(summaries[0]["log_p"], abs=5.0)


def test_batched_optimizer_step_on_cuda_follows_the_per_parameter_step():
    """The fused CUDA AdamW with the stacked unit-wise clip = the per-parameter step, and a non-finite gradient
    is skipped on the device (parameters and Adam state untouched, counted once)."""
    from daps.methods import build_method
    from daps.optim import Optimizers

    cfg = parse_overrides(get_preset("mnist"), ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16"])
    x = (torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.8).float().cuda()
    models = []
    for batched in (True, False):
        torch.manual_seed(0)
        model = build_method(cfg, (1, 28, 28)).cuda()
        opts = Optimizers(model, model.optimizer_specs(1e-2, 1.0), 1e-4, batched=batched)
        generator = torch.Generator("cuda").manual_seed(2)
        for step in range(4):
            out = model(x, step, generator=generator)
            opts.zero_grad()
            (out.loss * 1e4).backward()  # large enough for the clip to act
            opts.step()
        models.append((model, opts))
    for p, q in zip(models[0][0].parameters(), models[1][0].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    model, opts = models[0]
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    opts.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(v == 1 for v in opts.skipped.values())


@pytest.mark.parametrize("method, bf16", [("daps", False), ("daps", True), ("vqvae", False), ("gumbel", False),
                                         ("ppo", False), ("fsq", False)])
def test_graphed_step_trains_as_the_eager_step(method, bf16):
    """``train.cuda_graph``: the whole step recorded once and replayed gives the eager step's parameters and logs
    (same seeds; 8 steps: 3 eager warm-up steps on a side stream, the recording, replays), with beta and the
    learning rate moving at every step, so a value frozen at the recording would show; DAPS also under bf16 autocast.
    (On the CPU the same test runs with an emulated graph, ``tests/test_graphed.py``.)"""
    from graph_steps import train_steps

    from daps.graphed import GraphedStep

    wider = ("encoder.width=32", "encoder.num_tokens=16")
    eager_model, eager_logs, _ = train_steps(method, None, "cuda", steps=8, batch=32, overrides=wider, bf16=bf16)
    again, _, _ = train_steps(method, None, "cuda", steps=8, batch=32, overrides=wider, bf16=bf16)
    model, logs, step_fn = train_steps(method, GraphedStep, "cuda", steps=8, batch=32, overrides=wider, bf16=bf16)
    assert step_fn is not None and step_fn.graph is not None  # the last steps were replays
    # The eager CUDA step itself need not repeat bit for bit: with K > 1 (DAPS) two eager runs of these 8 steps
    # ended 2e-3 (float32 CDF) to 1e-2 apart on an H100 (2026-12-06), from the first backward on, as far apart as
    # the graphed run was; K = 1 methods repeated exactly. So the graphed run is held to the eager runs' own spread.
    spread = max(float((p - q).detach().abs().max()) for p, q in zip(eager_model.parameters(), again.parameters()))
    for p, q in zip(eager_model.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=max(1e-5, 3 * spread))
    for i, (eager, replayed) in enumerate(zip(eager_logs, logs)):
        assert eager.keys() == replayed.keys()
        for key in eager:  # the schedules at every step (a value frozen at the recording would show); the rest
            # where the eager runs repeat (the first step; every step of a method that repeats exactly)
            if key in ("beta", "lr") or i == 0 or spread == 0:
                assert replayed[key] == pytest.approx(eager[key], rel=1e-3, abs=1e-4), (i, key)
            assert math.isfinite(replayed[key]), (i, key)


@pytest.mark.usefixtures("offline", "no_plots")
def test_cuda_graph_run_resumes_to_the_uninterrupted_run(tmp_path, tiny_overrides):
    """``daps train train.cuda_graph=true``: a run stopped after 6 steps and resumed to 12 ends where the same run
    without the stop ends (the resumed process warms up and records again), and where the eager run ends."""
    from daps.checkpoint import load_model

    def run(name, extra, resume=False):
        cfg = parse_overrides(
            get_preset("mnist"),
            [*tiny_overrides, "train.steps=12", "train.log_every=1", f"train.out_dir={tmp_path / name}", *extra],
        )
        return train(cfg, resume=resume, device="cuda")

    whole = run("whole", ["train.cuda_graph=true"])
    run("split", ["train.cuda_graph=true", "train.stop_after=6"])
    split = run("split", ["train.cuda_graph=true"], resume=True)
    eager = run("eager", [])
    models = [load_model(path, device="cuda") for path in (whole, split, eager)]
    for p, q, r in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p, r, rtol=1e-3, atol=1e-4)


def test_compiled_kernels_recorded_as_one_graph_train_as_the_eager_step():
    """``train.compile`` with ``train.cuda_graph``: the compiled DAPS step (inductor's default mode) recorded into one
    CUDA graph and replayed trains as the eager step: the first step's logs (one forward of the same weights, up to
    the compiled kernels' rounding) and the parameters after 8 steps within the eager runs' own spread (K > 1 does
    not repeat bit for bit on CUDA) or 1e-2, with beta and the learning rate moving as in the eager run."""
    from graph_steps import train_steps

    from daps.graphed import GraphedStep

    wider = ("encoder.width=32", "encoder.num_tokens=16")
    eager_model, eager_logs, _ = train_steps("daps", None, "cuda", steps=8, batch=32, overrides=wider)
    again, _, _ = train_steps("daps", None, "cuda", steps=8, batch=32, overrides=wider)
    model, logs, step_fn = train_steps("daps", GraphedStep, "cuda", steps=8, batch=32, overrides=wider, compile=True)
    assert step_fn is not None and step_fn.graph is not None  # the last steps were replays
    spread = max(float((p - q).detach().abs().max()) for p, q in zip(eager_model.parameters(), again.parameters()))
    for p, q in zip(eager_model.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=max(1e-2, 3 * spread))
    for i, (eager, replayed) in enumerate(zip(eager_logs, logs)):
        for key in eager:
            if key in ("beta", "lr") or i == 0:
                assert replayed[key] == pytest.approx(eager[key], rel=1e-3, abs=1e-3), (i, key)
            assert math.isfinite(replayed[key]), (i, key)


@pytest.mark.usefixtures("offline", "no_plots")
def test_tf32_changes_the_products_of_the_training_step_only(tmp_path, tiny_overrides):
    """``train.tf32``: inside :func:`daps.precision.float32_kernels` a float32 matmul on this GPU rounds as TF32
    does (~1e-3 relative, against float64), outside as float32 (< 1e-5); a graphed ``daps train`` run with it
    trains (finite, log p(x|z) near the float32 run's)."""
    from daps.precision import float32_kernels

    a, b = torch.randn(512, 512, device="cuda"), torch.randn(512, 512, device="cuda")
    exact = (a.double() @ b.double()).float()
    errors = {}
    for tf32 in (True, False):
        with float32_kernels(tf32):
            errors[tf32] = float(((a @ b) - exact).abs().max() / exact.abs().max())
    assert errors[False] < 1e-5 < 1e-4 < errors[True], errors
    summaries = []
    for extra in ([], ["train.tf32=true", "train.cuda_graph=true"]):
        cfg = parse_overrides(get_preset("mnist"), [*tiny_overrides, "train.steps=8", *extra,
                                                    f"train.out_dir={tmp_path / str(len(extra))}"])
        summaries.append(json.loads((train(cfg, device="cuda") / "summary.json").read_text()))
    for summary in summaries:
        assert all(v == v for v in summary.values() if isinstance(v, float)), summary  # no NaN
    assert summaries[1]["log_p"] == pytest.approx(summaries[0]["log_p"], abs=5.0)


def test_sample_probs_on_cuda_never_draws_a_near_zero_token():
    """On CUDA, as on the CPU, none of 200,000 draws lands on one of 1,020 tokens of mass 1e-13 (a review feared
    that a parallel float32 scan would give them ulp-sized mass; on an H100 with torch 2.11 it drew none, 2026-12-06).
    Fails on: a CDF whose neighbouring sums differ by an ulp regardless of the mass between them."""
    from test_known_answers_10 import near_zero_draws

    assert near_zero_draws("cuda") == 0


PRIOR_TINY = ["steps=4", "batch_size=8", "width=16", "num_layers=1", "num_heads=2", "eval_every=2", "log_every=2"]


def commands_outside_training(device: str, run, tmp_path, capsys) -> None:
    """The commands and Python calls around a trained run on ``device``: evaluation with its figure, exporting codes,
    an ``ar`` and a ``dfm`` prior trained, sampled and scored, random codes decoded, and the Python
    API from image files to codes and back. Each command must exit 0; on CUDA, resuming a prior with ``--device cpu``
    must be one refusal (exit 2) naming the other kind of device."""
    import daps
    from daps.cli import main

    def ok(*argv) -> None:
        assert main([str(a) for a in argv]) == 0, argv

    codes = tmp_path / "codes.safetensors"
    ok("eval", run, "--max-images", "32", "--plot", tmp_path / "eval.png", "--device", device)
    ok("export-codes", run, "--out", codes, "--max-inputs", "64", "--device", device)
    for kind in ("ar", "dfm"):
        prior = tmp_path / f"prior-{kind}"
        ok("prior", "train", codes, "--kind", kind, "--out", prior, *PRIOR_TINY, "--device", device)
        ok("prior", "sample", prior, "--tokenizer", run, "--n", "4", "--out", tmp_path / f"{kind}.png",
           "--codes-out", tmp_path / f"{kind}.safetensors", "--device", device)
        ok("prior", "eval", prior, "--n", "8", "--json", "--no-classifier", "--device", device)
    if device != "cpu":
        capsys.readouterr()
        assert main(["prior", "train", str(codes), "--out", str(tmp_path / "prior-ar"), *PRIOR_TINY, "steps=6",
                     "--resume", "--device", "cpu"]) == 2
        assert "trained on another kind of device than cpu" in capsys.readouterr().err
    ok("decode-random", run, "--out", tmp_path / "random.png", "--n", "4", "--device", device)

    model = daps.load_model(run, device)
    x_hat = model.decode(torch.randint(0, model.vocab_size, (3, model.input_spec.num_tokens), device=device))
    daps.save_images(x_hat, model, tmp_path / "decoded")
    x = daps.load_images(tmp_path / "decoded", model)
    assert x.device == x_hat.device
    codes_again = model.encode(x, torch.Generator(x.device).manual_seed(0))
    assert codes_again.device == x.device and codes_again.shape == (3, model.input_spec.num_tokens)


@pytest.mark.usefixtures("offline")
def test_the_commands_outside_training_run_on_cuda(trained_run, tmp_path, capsys):
    """The first CUDA run of everything but the training step (a CPU-trained run, loaded onto the GPU)."""
    commands_outside_training("cuda", trained_run, tmp_path, capsys)
