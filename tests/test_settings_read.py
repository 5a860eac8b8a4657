"""Every model setting ``daps train`` takes is read.

``daps train`` refuses an override of a setting the run would not read (:func:`daps.config_io.ignored_settings`),
so that nothing a user asks for is silently ignored. This checks the other side, for every method at ``mnist`` and
for the decoders of the other presets (ResNet at ``cifar10``, transformer at ``lafan1-h1``): each setting of the
encoder, decoder, optimizer and method sections that is *not* refused changes what training computes, the weights
after a few steps from the same seed (or their shapes). A setting found taken but without effect is one
``ignored_settings`` forgot (as ``decoder.embed_dim`` of the VQ-VAEs' MLP decoder was). Settings read elsewhere
than in the step are listed with the test that covers them.

Negative control: remove a key from a method's ``ignores`` (e.g. vqvae's ``vq.ema_decay``) and its case fails.
"""

from __future__ import annotations

import copy

import pytest
import torch

from daps.config import validate
from daps.config_io import _leaf_fields, ignored_settings
from daps.errors import UserError
from daps.methods import METHODS, build_method
from daps.optim import Optimizers
from daps.presets import configured

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
    "decoder.embed_dim=8", "decoder.hidden=16,16", "decoder.fsq_token_dim=8", "decoder.resnet_width=8",
    "decoder.resnet_blocks=1", "decoder.transformer_layers=1", "daps.num_samples=4", "reinforce.num_samples=4",
    "relaxed.num_rao_samples=3", "fsq.levels=4,3", "vae.hidden=16", "train.steps=8",
    "daps.init_eta=1.0",  # from the paper's eta = 100 the ESS target moves eta below float resolution in a few steps
    "vq.dead_code_threshold=0",  # 16 vectors a batch for 16 codes: restarts would overwrite the EMA every step
]
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 16, 16), "lafan1-h1": (1, 32, 86)}
OTHER_SHAPE = {"cifar10": ["data.image_shape=3,16,16"], "lafan1-h1": []}

READ_ELSEWHERE = {
    "optim.lr_schedule": "the training loop sets each step's rate (tests/test_known_answers_3.py)",
    "optim.lr_final": "the training loop sets each step's rate (tests/test_known_answers_3.py)",
    "encoder.share_prefixes": "a speed option: the same update (tests/test_shared_prefixes.py)",
    "daps.one_pass": "a speed option: the same update (tests/test_one_pass.py)",
    "reinforce.one_pass": "a speed option: the same update (tests/test_one_pass.py)",
    "decoder.min_variance": "bites only once the learned variance leaves the range (tests/test_known_answers_10.py)",
    "ppo.kl_target": "adapts the KL coefficient between epochs (tests/test_policy_gradient.py)",
    "ppo.kl_scale": "adapts the KL coefficient between epochs (tests/test_policy_gradient.py)",
    "ppo.min_kl_coeff": "bounds the adapted KL coefficient (tests/test_policy_gradient.py)",
    "ppo.max_kl_coeff": "bounds the adapted KL coefficient (tests/test_policy_gradient.py)",
}

CASES = [*(("mnist", m) for m in sorted(METHODS)),
         *(("cifar10", m) for m in ("daps", "vqvae", "fsq", "gumbel")),
         *(("lafan1-h1", m) for m in ("daps", "vqvae", "fsq"))]


def _weights_after_steps(cfg, preset: str) -> dict[str, torch.Tensor]:
    """The state after 3 training steps (indices 1-3 of 8) from seed 0 on fixed inputs."""
    shape = SHAPES[preset]
    torch.manual_seed(0)
    model = build_method(cfg, shape)
    model.train()
    optimizers = Optimizers(model, model.optimizer_specs(cfg.optim.lr, cfg.optim.grad_clip), cfg.optim.weight_decay)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4, *shape, generator=g) > 0.8).float() if preset == "mnist" else torch.randn(4, *shape,
                                                                                                  generator=g)
    generator = torch.Generator().manual_seed(2)
    for step in (1, 2, 3):
        out = model(x, step, generator=generator)
        optimizers.zero_grad()
        out.loss.backward()
        optimizers.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def _candidates(value, key: str) -> list:
    """Other values of a setting to try, nearest first (a bool's other value, integers up and down, floats scaled)."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value * 2, value + 1, value - 1] if key.endswith("num_tokens") else [value + 1, value * 2, value - 1]
    if isinstance(value, float):
        return [value * 0.5, value * 2, value * 10, value * 0.1] if value else [0.1, 1.0, 10.0]
    return []  # strings (kinds, choices) and tuples: the kinds are what ignored_settings reads, tested there


@pytest.mark.parametrize(("preset", "method"), CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_every_setting_daps_train_takes_changes_the_training(preset, method):
    base = configured(preset, method, [*TINY, *OTHER_SHAPE.get(preset, [])])
    reference = _weights_after_steps(base, preset)
    ignored = ignored_settings(base)
    sections = ("encoder", "decoder", "optim", base.options.section)
    unread, tried = [], 0
    for key, (owner, field) in _leaf_fields(base).items():
        if key in ignored or key in READ_ELSEWHERE or key.split(".")[0] not in sections:
            continue
        valid = 0
        for candidate in _candidates(getattr(owner, field.name), key):
            cfg = copy.deepcopy(base)
            target, leaf = _leaf_fields(cfg)[key]  # the copy's
            setattr(target, leaf.name, candidate)
            try:
                validate(cfg)
                changed = not _same(reference, _weights_after_steps(cfg, preset))
            except UserError:  # not a valid value here (a width the heads do not divide, ...): try the next one
                continue
            valid += 1
            if changed:
                break
        else:
            if valid:
                unread.append(key)
        tried += valid > 0
    assert tried >= 5, tried  # the loop ran: most settings had a valid other value
    assert not unread, (f"{method} at {preset} takes these settings but training did not change with any other "
                        f"value: {unread}; add them to ignored_settings (MethodSpec.ignores, or the settings' "
                        "unread(cfg)) or to READ_ELSEWHERE with the test that covers them")
