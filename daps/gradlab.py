"""``gradlab``: the encoder-gradient estimators of every method against the exact gradient.

On a model small enough to enumerate every code (by default T=2 tokens of V=4 codes: 16 codes per input; any
T and V with at most :data:`MAX_CODES` codes), the beta-ELBO of a batch of inputs,

    J(theta) = mean_b sum_z q_theta(z|x_b) [log p(x_b|z) - beta (log q_theta(z|x_b) - log U(z))],

and its exact gradient are computed by enumeration. Each estimator is the real method module (the
same code that trains), evaluated at the same encoder and decoder weights; one draw is one ``forward``
+ ``backward`` and its gradient with respect to the encoder parameters. Over many draws we report:

- ``cos(mean, exact)``: the direction of the estimator's expectation (1 = unbiased direction);
- ``|mean| / |exact|``: its scale (DAPS's weighted-MLE step is ~ 1/(eta + beta) times the gradient by
  construction, so only its direction is comparable);
- ``E cos(draw, exact)``: how well a single draw points the right way (bias and variance together);
- ``SNR``: ``|mean|^2 / E|draw - mean|^2`` (higher = less noise per draw);
- ``bias z``: the component of ``mean - exact`` along the exact gradient in standard errors, and
  ``chi``: ``|mean - exact|^2 / (trace Cov / draws)``, about 1 for an unbiased estimator.

Each method minimizes a loss, so estimators are compared with the gradient of ``-J``.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from daps import get_preset, parse_overrides
from daps.config_io import applicable_overrides
from daps.errors import UserError
from daps.methods import METHODS, build_method
from daps.optim import Optimizers
from daps.provenance import provenance
from daps.runfolder import (
    OutputFolderError,
    check_replaceable,
    has_content,
    prepare_output_folder,
    read_marker,
    refuse_existing,
    write_json_atomic,
    write_marker,
    write_text_atomic,
)

log = logging.getLogger("daps")

IMAGE_SHAPE = (1, 4, 4)
TINY = [
    "encoder.width=8", "encoder.num_heads=2", "encoder.num_layers=1", "encoder.mlp_ratio=2", "decoder.embed_dim=4",
    "decoder.hidden=16", "data.image_shape=1,4,4", "train.steps=1000",
]
MAX_CODES = 1 << 14
"""The most codes per input (``V ** T``) the exact gradient enumerates."""


def check_size(num_tokens: int, vocab_size: int) -> None:
    """A :class:`UserError` unless ``V ** T`` codes can be enumerated (T >= 1, V >= 2, at most :data:`MAX_CODES`)."""
    if num_tokens < 1 or vocab_size < 2:
        raise UserError(f"--num-tokens must be >= 1 and --vocab-size >= 2, got {num_tokens} and {vocab_size}")
    if num_tokens * math.log2(vocab_size) > math.log2(MAX_CODES) + 1e-9:  # not V ** T: T may be huge
        raise UserError(f"V^T = {vocab_size}^{num_tokens} codes per input is too many to enumerate (at most "
                        f"{MAX_CODES})")


@dataclass
class Estimator:
    """A named estimator: a method and the overrides that configure it."""

    name: str
    method: str
    overrides: tuple[str, ...] = ()
    compare_to: str | None = None
    """Another estimator's name: also report this one's bias and variance against that one's draws (resampled
    DAPS against the full-K DAPS update it estimates)."""


def default_estimators(num_samples: int, eta: float, temperature: float, rao_samples: int) -> list[Estimator]:
    t = f"relaxed.temperature.init={temperature}"
    return [
        Estimator(f"reinforce-loo (K={num_samples})", "reinforce", (f"reinforce.num_samples={num_samples}",)),
        Estimator(f"gumbel-st (tau={temperature})", "gumbel", (t,)),
        Estimator(
            f"grmck (tau={temperature}, k={rao_samples})", "grmck", (t, f"relaxed.num_rao_samples={rao_samples}")
        ),
        Estimator(
            f"grmck stop-grad (tau={temperature}, k={rao_samples})", "grmck",
            (t, f"relaxed.num_rao_samples={rao_samples}", "relaxed.rao_stop_gradient=true"),
        ),
        Estimator(
            f"daps (K={num_samples}, eta={eta:g})",
            "daps",
            (f"daps.num_samples={num_samples}", f"daps.init_eta={eta}"),
        ),
        Estimator(
            f"daps (K={num_samples}, eta={10 * eta:g})",
            "daps",
            (f"daps.num_samples={num_samples}", f"daps.init_eta={10 * eta}"),
        ),
        Estimator("ppo (first step, old = new)", "ppo", ()),
    ]


def resampled_estimators(num_samples: int, eta: float, sizes: tuple[int, ...]) -> list[Estimator]:
    """DAPS with resampled weighted maximum likelihood (``daps.resample=m``), each compared with the full-K DAPS
    estimator of the same K and eta (the first DAPS row of :func:`default_estimators`)."""
    full = f"daps (K={num_samples}, eta={eta:g})"
    base = (f"daps.num_samples={num_samples}", f"daps.init_eta={eta}")
    return [
        Estimator(f"daps resampled m={m} {scheme} (K={num_samples}, eta={eta:g})", "daps",
                  (*base, f"daps.resample={m}", f"daps.resample_scheme={scheme}"), compare_to=full)
        for m in sizes for scheme in ("systematic", "multinomial")
    ]


def compare_draws(draws: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Two estimators of one expectation: the z-score of the difference of their means along the reference mean
    (two-sample, so 0 +- 1 for the same expectation), the relative distance of the means, and the ratio of their
    total variances."""
    mean, ref_mean = draws.mean(0), reference.mean(0)
    unit = ref_mean / ref_mean.norm()
    a, b = draws @ unit, reference @ unit
    se = math.sqrt(float(a.var()) / len(a) + float(b.var()) / len(b))
    var = float(((draws - mean) ** 2).sum(1).mean())
    ref_var = float(((reference - ref_mean) ** 2).sum(1).mean())
    return {
        "bias_z_vs": float((mean - ref_mean) @ unit) / se if se > 0 else float("nan"),
        "rel_diff_vs": float((mean - ref_mean).norm() / ref_mean.norm()),
        "var_ratio_vs": var / ref_var if ref_var > 0 else float("nan"),
    }


def _constant_schedules(beta: float, temperature: float, num_tokens: int = 2, vocab_size: int = 4) -> list[str]:
    """The lab's shared settings: constant β and temperature, and the code's size."""
    out = [f"encoder.num_tokens={num_tokens}", f"encoder.vocab_size={vocab_size}"]
    for section in ("daps", "relaxed", "ppo", "reinforce"):
        out += [f"{section}.beta.kind=constant", f"{section}.beta.init={beta}", f"{section}.beta.end={beta}"]
    return out + ["relaxed.temperature.kind=constant", f"relaxed.temperature.init={temperature}"]


CategoricalMethod = Any
"""A method with a categorical encoder (``log_prob``, ``num_tokens``, ``vocab_size``), a ``decoder`` and a
``likelihood`` (DAPS, the policy gradients, the relaxations); their attributes are not part of the typed
:class:`daps.methods.Method` contract."""


def _build(method: str, overrides: list[str], seed: int) -> CategoricalMethod:
    cfg = get_preset("mnist", method)
    cfg = parse_overrides(cfg, applicable_overrides(cfg, [*TINY, *overrides]))
    torch.manual_seed(seed)
    return build_method(cfg, IMAGE_SHAPE)


def _encoder_grad(model: CategoricalMethod) -> torch.Tensor:
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).flatten().double() for p in model.encoder.parameters()
    ])


def exact_gradient(model: CategoricalMethod, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, float]:
    """``grad(-J)`` with respect to the encoder parameters by enumerating all ``V^T`` codes, and ``J``."""
    t, v = model.encoder.num_tokens, model.encoder.vocab_size
    codes = torch.tensor(list(itertools.product(range(v), repeat=t)), device=x.device)  # (V^T, T)
    indices = codes[:, None, :].expand(-1, x.shape[0], -1)  # (V^T, B, T)
    model.zero_grad(set_to_none=True)
    log_q = model.encoder.log_prob(x, indices).sum(-1)  # (V^T, B)
    with torch.no_grad():
        params = model.decoder(codes)  # (V^T, C, H, W)
        log_p = model.likelihood.log_prob(params[:, None].expand(-1, x.shape[0], *params.shape[1:]), x)  # (V^T, B)
    q = log_q.exp()
    objective = (q * (log_p - beta * (log_q + t * math.log(v)))).sum(0).mean()
    (-objective).backward()
    return _encoder_grad(model), float(objective.detach())


def pretrain(model: CategoricalMethod, x: torch.Tensor, steps: int, seed: int) -> None:
    """A few DAPS steps at a high learning rate so the encoder and decoder are not at their random start."""
    optimizers = Optimizers(model, model.optimizer_specs(3e-3, 1.0), 1e-4)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        out = model(x, step, generator=g)
        optimizers.zero_grad()
        out.loss.backward()
        optimizers.step()


def estimator_draws(
    model: CategoricalMethod, x: torch.Tensor, num_draws: int, seed: int
) -> torch.Tensor:
    """``num_draws`` encoder gradients ``(num_draws, P)`` of ``model``'s loss at fixed weights."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():  # one call first: lets stateful methods (PPO's old policy) catch up to the weights
        model(x, 0, generator=torch.Generator().manual_seed(seed + 1))
    draws = []
    for _ in range(num_draws):
        model.zero_grad(set_to_none=True)
        model(x, 0, generator=g).loss.backward()
        draws.append(_encoder_grad(model))
    return torch.stack(draws)


def summarize_draws(draws: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """Bias and variance statistics of ``draws (N, P)`` against ``exact (P,)``."""
    n = draws.shape[0]
    mean = draws.mean(0)
    centered = draws - mean
    total_var = float((centered**2).sum(1).mean())  # E|draw - mean|^2
    unit = exact / exact.norm()
    along = draws @ unit  # (N,)
    se_along = float(along.std(unbiased=True)) / math.sqrt(n)
    cos = torch.nn.functional.cosine_similarity
    return {
        "cos_mean_exact": float(cos(mean, exact, dim=0)),
        "norm_ratio": float(mean.norm() / exact.norm()),
        "mean_cos_draw_exact": float(cos(draws, exact[None], dim=1).mean()),
        "snr": float(mean.norm() ** 2) / total_var if total_var > 0 else float("inf"),
        # |mean|^2 overstates |E draw|^2 by the mean's own variance, trace(Cov) / n: this one subtracts it (it can
        # come out <= 0 when the signal is below what n draws resolve, about 1 / n)
        "snr_unbiased": (float(mean.norm() ** 2) - total_var / (n - 1)) / (total_var * n / (n - 1))
        if total_var > 0 and n > 1 else float("inf") if total_var == 0 else float("nan"),
        "bias_z": float((mean - exact) @ unit) / se_along if se_along > 0 else float("nan"),
        "chi": float(((mean - exact) ** 2).sum()) / (total_var / n) if total_var > 0 else float("nan"),
        "num_draws": n,
    }


def run_gradlab(
    estimators: list[Estimator] | None = None,
    num_draws: int = 2000,
    beta: float = 0.5,
    temperature: float = 1.0,
    num_samples: int = 8,
    eta: float = 1.0,
    rao_samples: int = 10,
    batch_size: int = 4,
    pretrain_steps: int = 200,
    seed: int = 0,
    num_tokens: int = 2,
    vocab_size: int = 4,
) -> dict:
    """Compute every estimator's statistics on codes of ``num_tokens`` tokens of ``vocab_size`` values; returns
    ``{"setup": ..., "rows": [...]}``."""
    check_size(num_tokens, vocab_size)
    estimators = estimators or default_estimators(num_samples, eta, temperature, rao_samples)
    missing = sorted({e.method for e in estimators} - set(METHODS))
    if missing:
        raise UserError(f"gradlab: method(s) not available: {', '.join(missing)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only add synchronization
    try:
        return _run(estimators, num_draws, beta, temperature, batch_size, pretrain_steps, seed, num_tokens, vocab_size)
    finally:
        torch.set_num_threads(threads)


def _run(
    estimators: list[Estimator], num_draws: int, beta: float, temperature: float, batch_size: int,
    pretrain_steps: int, seed: int, num_tokens: int, vocab_size: int,
) -> dict:
    common = _constant_schedules(beta, temperature, num_tokens, vocab_size)
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch_size, *IMAGE_SHAPE, generator=g, device=g.device) > 0.5).float()

    reference = _build("daps", common, seed)
    pretrain(reference, x, pretrain_steps, seed)
    shared = {k: v for k, v in reference.state_dict().items() if k.startswith(("encoder.", "decoder."))}
    exact, objective = exact_gradient(reference, x, beta)
    log.info("gradlab: J = %.4f nats, |grad| = %.4g over %d encoder parameters", objective, exact.norm(), exact.numel())

    rows, kept = [], {}
    wanted = {e.compare_to for e in estimators if e.compare_to}
    for i, est in enumerate(estimators):
        model = _build(est.method, [*common, *est.overrides], seed)
        missing_keys = set(shared) - set(model.state_dict())
        if missing_keys:
            raise UserError(f"gradlab: {est.name} has a different encoder/decoder ({sorted(missing_keys)[:3]} ...)")
        model.load_state_dict(shared, strict=False)
        draws = estimator_draws(model, x, num_draws, seed + 100 * (i + 1))
        stats: dict[str, float | str] = {**summarize_draws(draws, exact)}
        if est.name in wanted:
            kept[est.name] = draws
        if est.compare_to:
            if est.compare_to not in kept:
                raise UserError(f"gradlab: {est.name} compares with {est.compare_to!r}, which must come before it")
            stats = {**stats, **compare_draws(draws, kept[est.compare_to]), "compared_to": est.compare_to}
        rows.append({"estimator": est.name, "method": est.method, **stats})
        log.info(
            "gradlab: %-40s cos(mean, exact) %+.3f  E cos %+.3f  SNR %.3g  bias z %+.1f",
            est.name, stats["cos_mean_exact"], stats["mean_cos_draw_exact"], stats["snr"], stats["bias_z"],
        )
    setup = {
        "image_shape": IMAGE_SHAPE, "num_tokens": num_tokens, "vocab_size": vocab_size, "batch_size": batch_size,
        "beta": beta,
        "temperature": temperature, "pretrain_steps": pretrain_steps, "seed": seed, "num_draws": num_draws,
        "objective": objective, "exact_grad_norm": float(exact.norm()), "num_params": exact.numel(),
        **provenance(),  # code, machine, torch, date
    }
    return {"setup": setup, "rows": rows}


REPORT_FILES = ("gradlab.md", "gradlab.json", "gradlab.png")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse ``out`` before the draws if the report could not be written there: an existing folder needs
    ``overwrite`` and must be a gradlab folder (the rule of :func:`daps.runfolder.prepare_output_folder`)."""
    if not has_content(out):
        check_replaceable(out, "gradlab", "--out")  # the current folder, a root, a file ...
        return
    legacy = out.is_dir() and not out.is_symlink() and read_marker(out) is None and \
        {p.name for p in out.iterdir()} == set(REPORT_FILES)  # a report written before the marker existed
    if not overwrite:
        if legacy:
            raise OutputFolderError(f"--out {out} already exists; pass --overwrite to replace it")
        refuse_existing(out, "gradlab", "--out")
    if legacy:
        write_marker(out, "gradlab")
    check_replaceable(out, "gradlab", "--out")


def write_report(result: dict, out: Path, command: str | None = None, overwrite: bool = False) -> None:
    """``gradlab.md`` (table), ``gradlab.json`` (everything) and ``gradlab.png`` (bias and noise per estimator),
    each written atomically into ``out``; an existing ``out`` is replaced only with ``overwrite`` (and only a
    gradlab folder, see :func:`check_out`)."""
    check_out(out, overwrite)
    prepare_output_folder(out, "gradlab", overwrite, entries=REPORT_FILES)
    s, rows = result["setup"], result["rows"]
    lines = [
        "# Estimator lab: encoder gradients against the exact gradient",
        "",
        f"T={s['num_tokens']}, V={s['vocab_size']} ({s['vocab_size'] ** s['num_tokens']} codes per input), "
        f"{s['batch_size']} binary {s['image_shape'][1]}x{s['image_shape'][2]} inputs, beta={s['beta']}, "
        f"encoder and decoder after {s['pretrain_steps']} DAPS steps, {s['num_draws']} draws per estimator, "
        f"seed {s['seed']}, torch {s['torch']}. J = {s['objective']:.3f} nats, |grad J| = {s['exact_grad_norm']:.4g} "
        f"({s['num_params']} encoder parameters).",
    ]
    if "code" in s:  # reports written before these were recorded lack them
        lines += ["", f"Machine: {s['machine']}; code {s['code']}; {s['date']}."]
    if command:
        lines += ["", f"Command: `{command}`"]
    lines += [
        "",
        "| estimator | cos(mean, exact) | \\|mean\\| / \\|exact\\| | E cos(draw, exact) | SNR | SNR unbiased "
        "| bias z | chi |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['estimator']} | {r['cos_mean_exact']:+.3f} | {r['norm_ratio']:.3f} "
            f"| {r['mean_cos_draw_exact']:+.3f} "
            f"| {r['snr']:.3g} | {r['snr_unbiased']:.3g} | {r['bias_z']:+.1f} | {r['chi']:.2f} |"
        )
    compared = [r for r in rows if "bias_z_vs" in r]
    if compared:
        lines += [
            "", "Resampled weighted maximum likelihood against the full-K update it estimates (same K, eta; "
            "independent draws of both): the two-sample z-score of their means along the full-K mean, the distance "
            "of the means relative to the full-K mean, and the ratio of total variances (per draw).", "",
            "| estimator | compared to | bias z | relative distance of means | variance ratio |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {r['estimator']} | {r['compared_to']} | {r['bias_z_vs']:+.2f} | {r['rel_diff_vs']:.3f} "
                  f"| {r['var_ratio_vs']:.2f} |" for r in compared]
    lines += [
        "",
        "SNR is |mean|^2 / E|draw - mean|^2; |mean|^2 overstates the signal by the mean's own variance, about "
        "1 / draws in SNR, which 'SNR unbiased' subtracts (near 1 / draws or below 0: not resolved by this many "
        "draws). "
        "bias z is the distance of the mean from the exact gradient along the exact gradient's direction, in "
        "standard errors of the mean; chi is |mean - exact|^2 / (trace Cov / draws), the squared distance over all "
        "parameters in units of the mean's variance. "
        "An unbiased estimator has cos(mean, exact) -> 1, |mean|/|exact| -> 1, |bias z| of a few at most and chi "
        "about 1. DAPS's step is a weighted maximum-likelihood direction, about 1/(eta + beta) times the gradient "
        "for large eta: compare its direction, not its scale. Gumbel-ST and GR-MCK are biased by the relaxation "
        "(GR-MCK without the stop-gradient also by its gradient path). PPO differentiates its per-token KL penalty "
        "analytically "
        "along the sampled path, which omits the score-function term of later tokens' KL (a bias for an autoregressive "
        "q when beta > 0); with its untrained value baseline the noise of one sample per input hides that bias here.",
    ]
    write_text_atomic(out / "gradlab.md", "\n".join(lines) + "\n")
    write_json_atomic(out / "gradlab.json", result)

    from daps.plots import _pyplot, save_figure

    plt = _pyplot()
    names = [r["estimator"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.45 * len(rows) + 1.6), sharey=True)
    ys = range(len(rows))
    axes[0].barh(ys, [r["cos_mean_exact"] for r in rows], color="C0")
    axes[0].set_title("cos(mean estimate, exact)\n(bias in direction)")
    axes[0].set_xlim(min(-0.1, *(r["cos_mean_exact"] for r in rows)), 1.05)
    axes[1].barh(ys, [r["mean_cos_draw_exact"] for r in rows], color="C1")
    axes[1].set_title("E cos(single draw, exact)")
    axes[1].set_xlim(min(-0.1, *(r["mean_cos_draw_exact"] for r in rows)), 1.05)
    axes[2].barh(ys, [r["snr"] for r in rows], color="C2")
    axes[2].set_xscale("log")
    axes[2].set_title("SNR = |mean|^2 / E|draw - mean|^2")
    axes[0].set_yticks(list(ys), names, fontsize=8)
    axes[0].invert_yaxis()
    for ax in axes:
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"Encoder-gradient estimators, T={s['num_tokens']}, V={s['vocab_size']}, beta={s['beta']}, "
                 f"{s['num_draws']} draws", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out / "gradlab.png", dpi=120)


__all__ = [
    "Estimator", "check_out", "compare_draws", "default_estimators", "exact_gradient", "resampled_estimators",
    "run_gradlab", "summarize_draws", "write_report",
]
