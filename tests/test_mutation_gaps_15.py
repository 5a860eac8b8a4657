"""Known answers for behaviour of the prior's scores (daps/prior/scores.py), the validation sets
(daps/data/evalset.py), the data paths (daps/data/paths.py) and the method specs (daps/methods/spec.py) that a
mutation sweep of those files found no test guarding. Each test names the slip it fails on; the references are
hand-worked cases on stand-in tokenizers, classifiers and tiny folders."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

# --------------------------------------------------------------------------- prior scores


def _indexed_judge(num: int = 12):
    """A :class:`~daps.prior.scores.Judge` over one-pixel images whose value is their index in the split (so the
    images a function reads say which examples it took); 3 classes in turn, identity scales."""
    from daps.prior.scores import Judge

    labels = torch.arange(num) % 3
    values = torch.arange(num, dtype=torch.float64).view(-1, 1, 1, 1)
    split = SimpleNamespace(labels=labels, raw=lambda idx: values[idx])
    judge = object.__new__(Judge)
    judge.device = "cpu"
    judge.spec = SimpleNamespace(standardize=SimpleNamespace(to_unit=lambda x: x))
    judge._examples = lambda split, idx: split.raw(idx)
    judge.train = judge.test = split
    judge.num_test = num
    return judge


def _stub_inception(monkeypatch):
    """Stand-ins for the Inception network: features ``(v, v^2)`` of the first pixel; every input recorded."""
    import daps.metrics.fid as fid
    import daps.nets.inception as inception

    seen = []

    def features(net, images):
        v = images.flatten(1)[:, :1].float()
        seen.append(v[:, 0].tolist())
        return torch.cat([v, v**2], 1)

    monkeypatch.setattr(inception, "load_fid_inception", lambda weights=None, device=None: None)
    monkeypatch.setattr(fid, "inception_features", features)
    return seen


def _embedded_by_seed(monkeypatch) -> list[list]:
    """What ``inception_fid`` of 6 samples (values 0..5) against the indexed judge embeds, in order, for the seeds
    0, 0, 1, 2, 3."""
    from daps.prior.scores import inception_fid

    seen = _stub_inception(monkeypatch)
    judge = _indexed_judge()
    images = torch.arange(6, dtype=torch.float64).view(-1, 1, 1, 1)
    runs = []
    for seed in (0, 0, 1, 2, 3):
        seen.clear()
        inception_fid(judge, images, 6, seed=seed)
        runs.append(list(seen))
    return runs


def test_inception_fid_compares_against_a_seeded_random_subset_of_the_test_split(monkeypatch):
    """``inception_fid`` compares against n test images, "a fixed random subset": the same n distinct test images
    for the same seed, another subset for another seed, and not simply the first n. Known answer on 12 test images
    whose value is their index, n = 6: the reference is 6 distinct indices in [0, 12); seeds 0 and 0 agree; seeds
    0..3 do not all give one subset (the chance that four independent draws of 6 of 12 agree is 1/924^3).
    Fails on: the first n test images every time (the subset ignoring the seed)."""
    subsets = [sorted(embedded[0]) for embedded in _embedded_by_seed(monkeypatch)]  # the test subset comes first
    for reference in subsets:
        assert len(set(reference)) == 6 and all(0 <= v < 12 for v in reference)
    assert subsets[0] == subsets[1]
    assert len({tuple(s) for s in subsets[1:]}) > 1


def test_inception_fid_scores_at_most_n_samples_and_says_how_many(monkeypatch):
    """Of 12 generated images at n = 4, only the first 4 are embedded (the FID is "at the same n" as its floor),
    and the protocol says "4 samples vs 4 test images"; of 3 images at n = 6 all 3 are scored and the protocol says
    "3 samples vs 6 test images". Fails on: every image scored whatever n, or the protocol claiming n samples when
    fewer were given."""
    from daps.prior.scores import inception_fid

    seen = _stub_inception(monkeypatch)
    judge = _indexed_judge()
    many = torch.arange(100, 112, dtype=torch.float64).view(-1, 1, 1, 1)
    out = inception_fid(judge, many, 4)
    assert seen[1] == [100.0, 101.0, 102.0, 103.0]  # reference, samples, training floor: the samples are second
    assert out["inception_fid_protocol"].startswith("Inception pool3 FID, 4 samples vs 4 test images")
    seen.clear()
    out = inception_fid(judge, many[:3], 6)
    assert seen[1] == [100.0, 101.0, 102.0]
    assert out["inception_fid_protocol"].startswith("Inception pool3 FID, 3 samples vs 6 test images (fixed subset, "
                                                    "seed 0); real floor: 6 training images vs the same")


def test_score_prior_samples_at_the_guidance_asked_for_and_temperature_one(monkeypatch):
    """``score_prior(..., guidance=3.5, ...)`` draws its codes with classifier-free guidance 3.5 at temperature 1
    (``generate(model, labels, guidance, temperature, ...)``). Known answer: the stand-in generator is called with
    guidance 3.5 and temperature 1.0, with the Euler steps passed on (7). Fails on: guidance and temperature swapped
    (samples at temperature 3.5 without guidance)."""
    import daps.prior.run
    from daps.prior.scores import score_prior

    asked = []

    def generate(model, labels, guidance, temperature, generator, steps):
        asked.append((guidance, temperature, steps))
        return labels[:, None].repeat(1, 2)

    monkeypatch.setattr(daps.prior.run, "generate", generate)
    out = score_prior(SimpleNamespace(num_classes=3), 7, torch.zeros(1, 2, dtype=torch.long), 6, 3.5, 0)
    assert asked == [(3.5, 1.0, 7)]
    assert out["unique_fraction"] == pytest.approx(3 / 6)  # classes 0, 1, 2 in turn, each twice


def test_decoded_images_are_on_the_unit_scale():
    """A tokenizer of the ``arrays`` dataset (pixels standardized as ``(p - 127.5) / 127.5``) decodes means -1, 0,
    1 and 3 on the model's scale: on the unit scale (p / 255) they are 0, 0.5, 1 and 1 (clipped), as float32 on the
    CPU. Fails on: the model-scale decoder means returned (-1 shown as 0 by the clamp, 0 as black instead of grey)."""
    from daps.prior.scores import decoded_images

    means = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(-1, 1, 1, 1)
    model = SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(name="arrays")), decode=lambda codes: means)
    got = decoded_images(model, torch.zeros(4, 2, dtype=torch.long))
    torch.testing.assert_close(got, torch.tensor([0.0, 0.5, 1.0, 1.0]).view(-1, 1, 1, 1))


def test_reconstruction_accuracy_is_against_the_labels_of_the_examples_reconstructed():
    """``references`` scores the reconstructions of n class-balanced training examples against *their* labels. Known
    answer on a training split sorted by class (labels 0,0,0,0,1,1,1,1,2,2,2,2; one-pixel images whose value is the
    class; exact reconstructions; a classifier of the nearest class): ``recon_accuracy`` = 1 at n = 6. Fails on:
    the first n labels of the split taken instead (0,0,0,0,1,1 against classes in turn: 1/3 here)."""
    from daps.prior.scores import Judge, features, stats

    labels = torch.arange(12) // 4
    values = labels.double().view(-1, 1, 1, 1)
    split = SimpleNamespace(labels=labels, raw=lambda idx: values[idx])
    judge = object.__new__(Judge)
    judge.tokenizer = SimpleNamespace(
        vocab_size=4, input_spec=SimpleNamespace(num_tokens=2),
        reconstruct=lambda b, g=None: SimpleNamespace(x_hat=b.clone()),
        decode=lambda codes: torch.zeros(len(codes), 1, 1, 1, dtype=torch.float64),
    )
    judge.classifier, judge.device = _NearestClass(), "cpu"
    judge.spec = SimpleNamespace(standardize=lambda x: x)
    judge.train = judge.test = split
    judge.real = stats(features(judge.classifier, values))
    judge.num_test = 12
    assert judge.references(6)["recon_accuracy"] == 1.0


class _NearestClass(torch.nn.Module):
    """A stand-in classifier of one-pixel images of 3 classes: the class nearest the pixel; features (v, v^2)."""

    def forward(self, b):
        v = b.flatten(1)[:, :1]
        return -(v - torch.arange(3, dtype=v.dtype)) ** 2

    def embed(self, b):
        v = b.flatten(1)[:, :1]
        return torch.cat([v, v**2], 1)


def test_the_inception_floor_takes_the_training_examples_of_its_seed(monkeypatch):
    """The real-vs-real floor of ``inception_fid(..., seed=s)`` embeds n class-balanced training examples drawn with
    seed s (as the reference points of the same seed). Known answer on 12 training images whose value is their index
    (3 classes in turn), n = 6: the floor's images are 6 distinct examples of classes 0, 1, 2, 0, 1, 2, the same for
    the same seed, and seeds 0..3 do not all draw the same ones. Fails on: the floor's examples drawn with seed 0
    whatever the seed."""
    floors = [[int(v) for v in embedded[2]] for embedded in _embedded_by_seed(monkeypatch)]  # after the reference
    for floor in floors:  # and the samples
        assert len(set(floor)) == 6 and [v % 3 for v in floor] == [0, 1, 2, 0, 1, 2]
    assert floors[0] == floors[1]
    assert len({tuple(f) for f in floors[1:]}) > 1


def test_a_refused_class_balanced_count_names_the_flag_that_asked_for_it():
    """``check_balanced(n, flag)`` names the command's own flag: 91 balanced examples of a split whose smallest class
    has 30 (3 classes) is refused as "--inception-fid 91: ... at most 90 class-balanced ..." when asked by
    ``--inception-fid``, and as "--n 91: ..." by default. Fails on: "--n" named whatever flag asked (the user told
    to lower a flag they did not set)."""
    from daps.errors import UserError
    from daps.prior.scores import Judge

    judge = object.__new__(Judge)
    judge.train = SimpleNamespace(labels=torch.tensor([0, 1, 2] * 30 + [1] * 10))
    with pytest.raises(UserError, match=r"^--inception-fid 91: the training split has 30 examples .* at most 90 "):
        judge.check_balanced(91, "--inception-fid")
    with pytest.raises(UserError, match=r"^--n 91: "):
        judge.check_balanced(91)
    judge.check_balanced(90, "--inception-fid")  # exactly 3 x 30: allowed


# --------------------------------------------------------------------------- validation sets


def test_a_tensor_eval_set_holds_its_first_dimension_of_images_and_replaces_none():
    """``TensorEvalSet`` of 5 images of shape (1, 2, 3): 5 images, 0 replaced files (tensors have no files), batches
    of 2, 2 and 1 covering all 5. Fails on: another dimension counted as the images (1, the channels), or a
    tensor set reporting a replaced file."""
    from daps.data.evalset import TensorEvalSet

    images = TensorEvalSet(torch.arange(30.0).view(5, 1, 2, 3), batch_size=2)
    assert images.num_images == 5 and images.num_skipped == 0
    assert torch.equal(torch.cat(list(images.batches())), images.images)


class _Passes:
    """A stand-in for :func:`~daps.data.imagefolder.eval_batches`' pass: two CPU batches, then ``num_skipped``."""

    def __init__(self, skipped: int):
        self.num_skipped, self._skipped = 0, skipped

    def __iter__(self):
        yield torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
        yield torch.ones(1, 1, 2, 2, dtype=torch.uint8)
        self.num_skipped = self._skipped


def test_a_folder_eval_set_passes_its_settings_on_and_moves_batches_to_its_device(monkeypatch):
    """A ``FolderEvalSet(dataset, batch_size=2, num_workers=3, count=3, device=meta)`` asks ``eval_batches`` for
    batches of 2 from 3 workers, at most 3 images, unpinned (not a CUDA device), and yields them on its device
    (here the ``meta`` device, which a CPU batch left as it is would not be on). Fails on: the workers not passed
    on (every validation decoded in the main process), or the batches left on the CPU for a GPU model."""
    import daps.data.evalset as evalset

    asked = []

    def eval_batches(dataset, batch_size, num_workers, max_images=None, pin_memory=False):
        asked.append((dataset, batch_size, num_workers, max_images, pin_memory))
        return _Passes(0)

    monkeypatch.setattr(evalset, "eval_batches", eval_batches)
    images = evalset.FolderEvalSet("DATASET", 2, 3, 3, torch.device("meta"))
    batches = list(images.batches())
    assert asked == [("DATASET", 2, 3, 3, False)]
    assert [b.shape[0] for b in batches] == [2, 1] and all(b.device.type == "meta" for b in batches)


def test_a_folder_eval_set_reports_the_files_replaced_in_its_last_pass_only(monkeypatch):
    """``num_skipped`` is the number of unreadable files replaced "during the last pass": 0 before any pass, and 1
    after each of two passes that each replaced one (the same broken file met again), not 2. Fails on: the count
    summed over passes (every validation reporting more broken files than the split holds)."""
    import daps.data.evalset as evalset

    monkeypatch.setattr(evalset, "eval_batches", lambda *a, **k: _Passes(1))
    images = evalset.FolderEvalSet("DATASET", 2, 0, 3, torch.device("cpu"))
    assert images.num_skipped == 0
    for _ in range(2):
        assert sum(b.shape[0] for b in images.batches()) == 3
        assert images.num_skipped == 1


# --------------------------------------------------------------------------- data paths


def test_a_data_folder_variable_starting_with_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch):
    """``DAPS_DATA_DIR=~/datasets`` (as a shell leaves it when quoted, or as written in a config file) names
    ``$HOME/datasets``, as an explicit ``--data-dir ~/datasets`` does. Known answer with ``HOME`` set to a temporary
    folder: ``env_root() == HOME/datasets`` and ``user_roots(None)`` is that one folder. Fails on: the variable
    taken literally (a folder named "~" in the working directory, never found)."""
    from daps.data.paths import env_root, user_roots

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DAPS_DATA_DIR", "~/datasets")
    assert env_root() == tmp_path / "datasets"
    assert user_roots(None) == [tmp_path / "datasets"]


def test_the_file_key_of_a_file_exactly_at_the_whole_content_limit_hashes_its_whole_content(tmp_path):
    """``file_key(path, whole_up_to)`` hashes the whole content of a file of "at most ``whole_up_to`` bytes": a file
    of exactly 10 bytes at ``whole_up_to=10`` is keyed by the first 16 hex digits of its SHA-256 (computed here with
    hashlib), as at ``whole_up_to=11``; at ``whole_up_to=9`` it is keyed by size and ends, another key. Fails on:
    the limit taken as exclusive (a tar of exactly the limit keyed by its ends only, blind to a change inside)."""
    import hashlib

    from daps.data.paths import file_key

    path = tmp_path / "ten"
    path.write_bytes(b"0123456789")
    whole = hashlib.sha256(b"0123456789").hexdigest()[:16]
    assert file_key(path, whole_up_to=10) == whole == file_key(path, whole_up_to=11)
    assert file_key(path, whole_up_to=9) != whole


# --------------------------------------------------------------------------- method specs


def test_a_method_spec_that_says_nothing_more_takes_the_documented_defaults():
    """A :class:`~daps.methods.spec.MethodSpec` given only its five required fields (as a plugin method may be): no
    preset adjustments, bits ``T log2 V`` (8 tokens over 16 codes of a stand-in config: 32 bits), a progress bar
    showing ``log_p`` only, defined for every preset (``only_presets`` None), not declared graph-safe, ignoring no
    setting, no cross-setting check. Fails on: another default progress key (a plugin's bar asking for a ``kl`` its
    method never logs), or a method graph-safe unless it says otherwise."""
    from daps.methods.spec import MethodSpec

    spec = MethodSpec("toy", "a toy", build=lambda cfg, shape: None, config_type=object, encoder="quantizer")
    cfg = SimpleNamespace(encoder=SimpleNamespace(num_tokens=8, vocab_size=16))
    assert spec.bits(cfg) == pytest.approx(32.0)
    assert spec.progress == ("log_p",)
    assert spec.only_presets is None and spec.cuda_graph is False and spec.check_config is None
    assert dict(spec.presets) == {} and dict(spec.ignores) == {}


def test_a_registered_method_spec_cannot_be_changed_in_place():
    """The specs in ``METHODS`` are shared by every caller of the process (train, compare, the hub), so they are
    frozen: setting ``METHODS["daps"].cuda_graph`` raises ``FrozenInstanceError`` and leaves it as it was. Fails on:
    a mutable spec (one test or caller switching a method's graph-safety for every later one)."""
    import dataclasses

    from daps.methods import METHODS

    before = METHODS["daps"].cuda_graph
    with pytest.raises(dataclasses.FrozenInstanceError):
        METHODS["daps"].cuda_graph = not before
    assert METHODS["daps"].cuda_graph is before
