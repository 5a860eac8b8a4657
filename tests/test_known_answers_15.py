"""Known answers for behaviour that a fifteenth mutation sweep, of the training loop (daps/train.py), checkpoints
(daps/checkpoint.py), codes files (daps/codes.py), the priors (daps/prior/nets.py, daps/prior/run.py), the TF32
switch (daps/precision.py), provenance (daps/provenance.py) and image inputs (daps/inputs.py), found no test
guarding: the CPU's bfloat16 flags and a model name holding a colon; a checkpoint file cut short, a ``latest`` that
climbs out of its folder, the dtype in the weights digest and the marker of a checkpoint folder's run; the shapes in a
codes file's content hash, a quantizer's single draw, headers of zero tokens, a boolean vocabulary or no format; image
folders' subfolders and oblong models; metrics rows without a step; the AR prior's loss per token, the adaLN gates,
the flow prior's time features and positions; the prior's settings, its held-out share, held-out codes of other
weights and ``--resume --overwrite``. Each test names the plausible slip it fails on (each checked against its
mutant)."""

from __future__ import annotations

import io

import pytest
import torch

# --------------------------------------------------------------------------------------------------
# Provenance


def _fake_cpuinfo(monkeypatch, text: str) -> None:
    from daps import provenance as prov

    monkeypatch.setattr(prov, "open", lambda path, *a, **k: io.StringIO(text), raising=False)


def test_amx_alone_counts_as_native_bfloat16(monkeypatch):
    """``cpu_bf16`` reads /proc/cpuinfo's first ``flags`` line: AMX-BF16 alone (a Sapphire Rapids part without the
    AVX512-BF16 flag listed) is native bfloat16, AVX512F alone is not, no flags line is None. Fails on: only
    ``avx512_bf16`` looked for."""
    from daps.provenance import cpu_bf16

    _fake_cpuinfo(monkeypatch, "processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_tile amx_bf16\n")
    assert cpu_bf16() is True
    _fake_cpuinfo(monkeypatch, "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni\n")
    assert cpu_bf16() is False
    _fake_cpuinfo(monkeypatch, "processor\t: 0\n")
    assert cpu_bf16() is None


def test_a_cpu_model_name_keeps_a_colon_of_its_own(monkeypatch):
    """The value of a /proc/cpuinfo line is everything after its first colon, colons of the value kept (``model
    name : QEMU Virtual CPU version 2.5+: host``). Fails on: the text after the last colon only."""
    from daps.provenance import cpu_name

    _fake_cpuinfo(monkeypatch, "processor\t: 0\nmodel name\t: QEMU Virtual CPU: host model\nflags\t\t: fpu\n")
    assert cpu_name() == "QEMU Virtual CPU: host model"


# --------------------------------------------------------------------------------------------------
# Checkpoints


def _save(run_dir, step: int, keep: int = 5, value: float = 0.0):
    """A checkpoint of a 2 x 3 linear layer (weights ``value``) with a prior-style dict config."""
    from daps.checkpoint import save_checkpoint

    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, value)
    return save_checkpoint(run_dir, step, model, {"prior": {"seed": 0}}, {"step": step}, keep=keep)


def test_a_checkpoint_file_cut_short_is_named_with_its_sizes(tmp_path):
    """A file shorter than ``checksums.json`` records is reported by its two sizes (what a full disk or a killed copy
    leaves), not as a mere checksum mismatch. Fails on: the size check skipped (the SHA-256 check then reports it
    without the sizes)."""
    from daps.checkpoint import CheckpointError, verify_checkpoint

    ckpt = _save(tmp_path, 1)
    path = ckpt / "state.pt"
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(CheckpointError, match=f"{len(data) - 7} bytes, {len(data)} expected"):
        verify_checkpoint(ckpt)


def test_latest_may_not_climb_out_of_its_checkpoint_folder(tmp_path):
    """``latest`` naming ``step_2/../../../a/checkpoints/step_1`` (it starts with ``step_`` and leads to a real
    checkpoint of another run) is refused, not followed. Fails on: the ``/`` check dropped (only the ``step_`` prefix
    checked)."""
    from daps.checkpoint import CKPT_DIR, CheckpointError, resolve_checkpoint

    _save(tmp_path / "a", 1)
    _save(tmp_path / "b", 2)
    (tmp_path / "b" / CKPT_DIR / "latest").write_text("step_00000002/../../../a/checkpoints/step_00000001\n")
    with pytest.raises(CheckpointError, match="latest names"):
        resolve_checkpoint(tmp_path / "b")


def test_the_weights_digest_covers_each_tensors_dtype():
    """:func:`weights_digest` is SHA-256 over ``name|dtype|shape|`` and the bytes of each tensor in name order
    (checked against hashlib directly), so float32 zeros and int32 zeros of one shape, the same bytes, differ. Fails
    on: the dtype left out of each tensor's header."""
    import hashlib

    from daps.checkpoint import weights_digest

    tensors = {"b": torch.zeros(2, dtype=torch.int32), "a": torch.tensor([1.0, -2.0])}
    ref = hashlib.sha256()
    ref.update(b"a|torch.float32|(2,)|" + torch.tensor([1.0, -2.0]).numpy().tobytes())
    ref.update(b"b|torch.int32|(2,)|" + bytes(8))
    assert weights_digest(tensors) == ref.hexdigest()
    assert weights_digest({"w": torch.zeros(3)}) != weights_digest({"w": torch.zeros(3, dtype=torch.int32)})


def test_a_checkpoint_folder_of_a_prior_is_refused_as_a_training_run(tmp_path):
    """A checkpoint folder ``run/checkpoints/step_N`` is judged by its run folder's marker: a prior's is refused where
    a training run is expected, naming what it is. Fails on: the marker looked for in ``checkpoints/`` (the folder
    above the checkpoint), where there is none."""
    from daps.checkpoint import CheckpointError, refuse_other_kind
    from daps.runfolder import write_marker

    tmp_path.mkdir(exist_ok=True)
    write_marker(tmp_path, "prior")
    ckpt = _save(tmp_path, 3)
    with pytest.raises(CheckpointError, match="a prior over codes"):
        refuse_other_kind(ckpt)
    refuse_other_kind(ckpt, "prior", "a prior")  # its own kind passes


# --------------------------------------------------------------------------------------------------
# Codes files


def test_the_content_hash_covers_the_shapes_of_codes_and_labels():
    """:func:`content_sha256` hashes ``shape|`` then the int64 bytes of ``codes``, then of ``labels`` (checked
    against hashlib directly): codes (1, 2, 2) and (1, 1, 4) of the same values and label differ (K draws of T
    tokens, not one of K * T). Fails on: the shapes left out (only the bytes hashed)."""
    import hashlib

    from daps.codes import CodeSet, content_sha256

    codes, labels = torch.tensor([[[1, 2], [3, 4]]]), torch.tensor([0])
    ref = hashlib.sha256()
    ref.update(b"(1, 2, 2)|" + codes.numpy().astype("<i8").tobytes())
    ref.update(b"(1,)|" + labels.numpy().astype("<i8").tobytes())
    assert content_sha256(CodeSet(codes, labels, {})) == ref.hexdigest()
    assert content_sha256(CodeSet(codes.reshape(1, 1, 4), labels, {})) != ref.hexdigest()


def test_a_quantizer_allows_one_draw_per_input_and_refuses_two():
    """A quantizer's code is the same at every draw: 1 draw per input passes (not stochastic), 2 are refused naming
    the setting; an autoregressive encoder draws any number. Fails on: the refusal from 3 draws on (``> 2``)."""
    from daps.codes import check_draws
    from daps.errors import UserError

    assert check_draws("vqvae", 1, "samples=") is False
    for method in ("vqvae", "fsq", "vqvae-ema"):
        with pytest.raises(UserError, match="samples=2: .* deterministically"):
            check_draws(method, 2, "samples=")
    assert check_draws("daps", 2, "samples=") is True


def test_a_codes_header_of_zero_tokens_or_a_boolean_vocabulary_is_refused():
    """``vocab_size`` and ``num_tokens`` are positive integers: a header of 0 tokens (with codes of 0 tokens, which
    match it) and one whose vocab_size is ``true`` (a bool, which Python counts as the integer 1) are refused by name.
    Fails on: 0 allowed (``< 0``), bools taken as integers."""
    from daps.codes import CodeSet, check_codes
    from daps.errors import UserError

    labels = torch.zeros(2, dtype=torch.long)
    empty = CodeSet(torch.zeros(2, 1, 0, dtype=torch.long), labels, {"vocab_size": 4, "num_tokens": 0,
                                                                      "class_names": ["a"]})
    with pytest.raises(UserError, match="num_tokens is 0, not a positive integer"):
        check_codes(empty, "f")
    boolean = CodeSet(torch.zeros(2, 1, 3, dtype=torch.long), labels, {"vocab_size": True, "num_tokens": 3,
                                                                        "class_names": ["a"]})
    with pytest.raises(UserError, match="vocab_size is True, not a positive integer"):
        check_codes(boolean, "f")
    check_codes(CodeSet(torch.zeros(2, 1, 3, dtype=torch.long), labels, {"vocab_size": 1, "num_tokens": 3,
                                                                         "class_names": ["a"]}), "f")


def test_a_codes_file_without_a_format_is_refused(tmp_path):
    """A header without ``format`` (another tool's file that borrowed the key, or a hand-made one) is refused naming
    the format, as one of another format is. Fails on: a missing format let through as format 1."""
    import json

    from safetensors.torch import save_file

    from daps.codes import HEADER_KEY, load_codes
    from daps.errors import UserError

    meta = {"vocab_size": 4, "num_tokens": 2, "class_names": ["a"]}
    tensors = {"codes": torch.zeros(1, 1, 2, dtype=torch.long), "labels": torch.zeros(1, dtype=torch.long)}
    save_file(tensors, str(tmp_path / "c.safetensors"), metadata={HEADER_KEY: json.dumps(meta)})
    with pytest.raises(UserError, match="codes format None, this daps reads format 1"):
        load_codes(tmp_path / "c.safetensors")
    save_file(tensors, str(tmp_path / "d.safetensors"), metadata={HEADER_KEY: json.dumps({**meta, "format": 1})})
    assert load_codes(tmp_path / "d.safetensors").codes.shape == (1, 1, 2)


# --------------------------------------------------------------------------------------------------
# Image inputs


def test_a_folder_named_like_an_image_is_not_an_image_file(tmp_path):
    """``image_files`` of a folder takes its image *files*: a subfolder ``more.png`` is left out (reading it would
    fail). Fails on: the ``is_file`` check dropped."""
    from PIL import Image

    from daps.inputs import image_files

    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "more.png").mkdir()
    assert image_files(tmp_path) == [tmp_path / "a.png"]


def test_a_model_of_oblong_images_does_not_take_image_files(tmp_path):
    """Image files are resized and cropped to squares, so a model whose inputs are 28 x 32 is refused before any file
    is read. Fails on: the ``height != width`` check dropped (28 x 28 images returned for it)."""
    from types import SimpleNamespace

    from PIL import Image

    from daps.errors import UserError
    from daps.inputs import load_images

    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    model = SimpleNamespace(input_spec=SimpleNamespace(image_shape=(1, 28, 32)),
                            config=SimpleNamespace(data=SimpleNamespace(name="mnist")))
    with pytest.raises(UserError, match="does not take images"):
        load_images(tmp_path, model)


# --------------------------------------------------------------------------------------------------
# The training loop


def test_metrics_rows_without_a_step_are_kept_when_the_file_is_cut_back(tmp_path):
    """``truncate_metrics(path, 2)`` drops rows of steps after 2, a line cut off by a crash and JSON that is not a
    row, and keeps rows of steps up to 2 and rows that carry no step (nothing says they came later). Fails on: a
    missing step taken as later than any (such rows dropped)."""
    import json

    from daps.train import truncate_metrics

    rows = [{"note": "kept"}, {"split": "train", "step": 1}, {"split": "val", "step": 2}, {"step": 3}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "[1, 2]\n" + '{"split": "tr')
    truncate_metrics(path, 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]


# --------------------------------------------------------------------------------------------------
# Priors


def test_an_ar_priors_loss_is_nats_per_token():
    """With its output head zeroed every conditional is uniform over V = 5, so the loss of any codes is log 5 nats per
    token, whatever T (= 3). Fails on: the loss summed over the tokens (3 log 5)."""
    import math

    from daps.prior.nets import ARPrior

    torch.manual_seed(0)
    prior = ARPrior(num_tokens=3, vocab_size=5, num_classes=2, width=16, num_layers=1, num_heads=2)
    torch.nn.init.zeros_(prior.head.weight)
    torch.nn.init.zeros_(prior.head.bias)
    codes, labels = torch.tensor([[0, 4, 2], [1, 1, 3]]), torch.tensor([0, 2])
    assert abs(prior.loss(codes, labels).item() - math.log(5)) < 1e-5


def test_an_adaln_blocks_two_gates_are_its_two_branches_own():
    """adaLN-Zero with the modulation's bias set so that gate 1 (attention) is 0 and gate 2 (MLP) is 1, shifts and
    scales 0: the block is ``x + mlp(layer_norm(x))`` (computed here with F.layer_norm). Fails on: the MLP branch
    gated by gate 1 (the block then returns x)."""
    import torch.nn.functional as F

    from daps.nets.layers import LN_EPS
    from daps.prior.nets import AdaLNBlock

    torch.manual_seed(0)
    width = 8
    block = AdaLNBlock(width, num_heads=2, mlp_ratio=2)
    with torch.no_grad():
        block.modulation.bias.zero_()
        block.modulation.bias[5 * width:] = 1.0  # (shift1, scale1, gate1, shift2, scale2, gate2): gate2 = 1
    x, c = torch.randn(2, 3, width), torch.randn(2, width)
    expected = x + block.mlp(F.layer_norm(x, (width,), eps=LN_EPS))
    assert torch.allclose(block(x, c), expected, atol=1e-6)


def test_a_flow_priors_time_features_are_sinusoids_of_1000_t():
    """DFMPrior's time features at t (E = 6, so 3 frequencies 10000^(-i/3)): ``sin(1000 t f_i)`` then ``cos(1000 t
    f_i)``, computed here with math; t = 0.001 puts sin(1) first. Fails on: t not scaled by 1000."""
    import math

    from daps.prior.nets import DFMPrior

    prior = DFMPrior(num_tokens=2, vocab_size=3, num_classes=2, width=6, num_layers=1, num_heads=2)
    t = torch.tensor([0.001, 0.25])
    freqs = [10_000.0 ** (-i / 3) for i in range(3)]
    expected = [[math.sin(1000 * s * f) for f in freqs] + [math.cos(1000 * s * f) for f in freqs]
                for s in (0.001, 0.25)]
    assert torch.allclose(prior.time_features(t), torch.tensor(expected), atol=1e-4)
    assert abs(prior.time_features(t)[0, 0].item() - math.sin(1.0)) < 1e-6


def test_a_flow_prior_tells_its_positions_apart():
    """Every token masked, at initialization (adaLN-Zero: the blocks start as the identity): the logits of the four
    positions differ, as the position table makes them. Fails on: the position table left out (a bidirectional
    network is then blind to order, and four equal tokens get four equal rows)."""
    from daps.prior.nets import DFMPrior

    torch.manual_seed(0)
    prior = DFMPrior(num_tokens=4, vocab_size=5, num_classes=2, width=16, num_layers=1, num_heads=2, source="mask")
    logits = prior(torch.full((1, 4), 5), torch.tensor([0.3]), torch.tensor([1]))[0]  # (T, V)
    assert min((logits[i] - logits[j]).abs().max().item() for i in range(4) for j in range(i)) > 1e-3


def test_prior_settings_refuse_zero_counts_a_full_dropout_and_no_held_out_share():
    """``PriorConfig.validate``: counts such as ``steps`` and ``batch_size`` start at 1, ``label_dropout`` lies in
    [0, 1) (1 would leave no labelled example) and ``val_fraction`` in (0, 1); the edges 0 and 0.5 pass. Fails on:
    0 let through for a count (``< 0``), label_dropout 1 allowed, val_fraction 0 allowed."""
    from daps.errors import UserError
    from daps.prior.run import PriorConfig

    for bad, message in (({"steps": 0}, "steps must be at least 1, got 0"),
                         ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
                         ({"label_dropout": 1.0}, r"label_dropout must be in \[0, 1\), got 1.0"),
                         ({"val_fraction": 0.0}, r"val_fraction must be in \(0, 1\), got 0.0")):
        with pytest.raises(UserError, match=message):
            PriorConfig(**bad).validate()
    PriorConfig(label_dropout=0.0, val_fraction=0.5).validate()


def test_a_held_out_share_that_takes_every_input_is_refused():
    """Two inputs at ``val_fraction=0.75``: round(1.5) = 2 held out leaves none to train on, refused by name; at 0.5
    one of each. Fails on: the refusal only when more than all are held out (``>``)."""
    from daps.codes import CodeSet
    from daps.errors import UserError
    from daps.prior.run import PriorConfig, split_codes

    codes = CodeSet(torch.arange(4).reshape(2, 1, 2), torch.tensor([0, 1]), {})
    with pytest.raises(UserError, match="has 2 inputs: too few to hold out 75%"):
        split_codes(PriorConfig(codes="c.safetensors", val_fraction=0.75), codes)
    train, val = split_codes(PriorConfig(val_fraction=0.5), codes)
    assert (train.codes.shape[0], val.codes.shape[0]) == (1, 1)


def test_held_out_codes_of_other_tokenizer_weights_are_refused(tmp_path):
    """``val_codes`` of a tokenizer with the same V, T and classes but other weights (another seed, another
    checkpoint: ``model_sha256`` differs) are refused naming the key; the same weights pass. Fails on: the weights'
    hash left out of the keys compared."""
    from daps.codes import CodeSet, load_codes, save_codes
    from daps.errors import UserError
    from daps.prior.run import PriorConfig, split_codes

    meta = {"format": 1, "vocab_size": 4, "num_tokens": 2, "class_names": ["a", "b"], "model_sha256": "a" * 64}
    train = CodeSet(torch.tensor([[[0, 1]], [[2, 3]]]), torch.tensor([0, 1]), {**meta, "split": "train"})
    save_codes(train, tmp_path / "train.safetensors")
    for name, sha in (("same.safetensors", "a" * 64), ("other.safetensors", "b" * 64)):
        val = CodeSet(torch.tensor([[[3, 3]]]), torch.tensor([1]), {**meta, "split": "test", "model_sha256": sha})
        save_codes(val, tmp_path / name)
    cfg = PriorConfig(codes=str(tmp_path / "train.safetensors"), val_codes=str(tmp_path / "same.safetensors"))
    assert split_codes(cfg, load_codes(cfg.codes))[1].codes.tolist() == [[[3, 3]]]
    cfg = PriorConfig(codes=str(tmp_path / "train.safetensors"), val_codes=str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match=r"do not come from the tokenizer of .* \(model_sha256 differs\)"):
        split_codes(cfg, load_codes(cfg.codes))


def test_a_prior_run_refuses_resume_and_overwrite_together(tmp_path):
    """``--resume`` with ``--overwrite`` is a contradiction, refused before the folder is looked at (here a folder
    that does not exist yet, where either flag alone starts a new run). Fails on: the check dropped."""
    from daps.errors import UserError
    from daps.prior.run import PriorConfig, prepare_folder

    cfg = PriorConfig(out_dir=str(tmp_path / "new"))
    assert prepare_folder(cfg, resume=True, overwrite=False) is None
    assert prepare_folder(cfg, resume=False, overwrite=True) is None
    with pytest.raises(UserError, match="--resume and --overwrite cannot be combined"):
        prepare_folder(cfg, resume=True, overwrite=True)
