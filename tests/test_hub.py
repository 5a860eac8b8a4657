"""Shareable tokenizers: ``daps export`` / ``save_pretrained`` folders reload with ``from_pretrained`` to the same
codes and reconstructions, offline; the model card's command rebuilds the config; the Hub side with the network
blocked and with a stand-in client."""

from __future__ import annotations

import json
import shlex
import socket
import sys
import types
from pathlib import Path

import pytest
import torch

import daps
from daps.cli import main
from daps.errors import UserError

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_export_reloads_to_the_same_codes_and_reconstructions(trained_run, tmp_path, no_network, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    # what --overwrite deletes; an image model has no standardization (the dataset fixes the pixel scale)
    assert {p.name for p in out.iterdir()} == {*daps.hub.FILES, ".daps", ".lock"} - {daps.hub.STANDARDIZATION}
    original, loaded = daps.load_model(trained_run), daps.from_pretrained(out)
    assert original.standardization is None and loaded.standardization is None
    x = (torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    codes = original.encode(x, torch.Generator().manual_seed(1))
    assert torch.equal(loaded.encode(x, torch.Generator().manual_seed(1)), codes)
    torch.testing.assert_close(loaded.decode(codes), original.decode(codes), rtol=0, atol=0)
    a = original.reconstruct(x, torch.Generator().manual_seed(2))
    b = loaded.reconstruct(x, torch.Generator().manual_seed(2))
    torch.testing.assert_close(b.log_p, a.log_p, rtol=0, atol=0)
    assert (out / "model.safetensors").stat().st_mode & 0o044  # readable by others: a file to share
    capsys.readouterr()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    assert main(["export", str(trained_run), "--out", str(mine)]) == 2  # never replaceable: --overwrite not suggested
    err = capsys.readouterr().err
    assert "not a daps pretrained folder" in err and "pass --overwrite" not in err


def test_eval_of_an_exported_folder_gives_its_runs_numbers(trained_run, tmp_path, no_network, capsys,
                                                           single_thread, monkeypatch):
    """``daps eval`` takes a pretrained folder as it takes the run (the model card promises the run's numbers): the
    same metrics to the last digit with the same seed, said to be of a pretrained model. The folder's config holds
    only the name of the data folder: the data are found by --data-dir, or as for any command ($DAPS_DATA_DIR).
    Fails on: the folder refused, or its data_dir (a bare folder name) used as a path."""
    out = tmp_path / "exported"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    data_dir = daps.load_model(trained_run).config.data.data_dir
    capsys.readouterr()
    results = []
    for source in (trained_run, out):
        assert main(["eval", str(source), "--json", "--max-images", "64", "--data-dir", data_dir, "--seed", "3"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    by_run, by_folder = results
    assert by_folder["checkpoint"] == str(out.resolve()) and "step" not in by_folder and by_run["step"] == 6
    for key in ("run", "checkpoint", "step"):
        by_run.pop(key, None), by_folder.pop(key, None)
    assert by_folder == by_run and by_run["num_images"] == 64
    assert main(["eval", str(out), "--max-images", "64", "--data-dir", data_dir]) == 0
    assert "test split, pretrained, seed 0" in capsys.readouterr().out
    monkeypatch.setenv("DAPS_DATA_DIR", data_dir)
    monkeypatch.chdir(tmp_path)  # where a folder of the config's bare name would be looked for
    assert main(["eval", str(out), "--json", "--max-images", "64", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["log_p"] == by_run["log_p"]


def test_model_card_says_where_the_exported_steps_were_trained(trained_run, tmp_path):
    import shutil

    from daps.provenance import JOBS_FILE, provenance, read_jobs

    step = json.loads((trained_run / "summary.json").read_text())["step"]
    card = (daps.hub.export_run(trained_run, tmp_path / "a") / "README.md").read_text()
    (job,) = read_jobs(trained_run)  # trained in one job, on this machine, with this torch
    here = provenance()
    assert (job["machine"], job["torch"]) == (here["machine"], here["torch"])
    # the code the job ran (HEAD may have moved since, when commits land while the suite runs)
    assert (f"- steps 0-{step}: cpu ({here['machine']}), torch {here['torch']}, daps code {job['code']}, "
            f"started {job['date']}") in card
    # A run resumed from a checkpoint taken before daps kept records, and a job after the exported checkpoint
    # (which trained none of its steps): the first steps are said to be unrecorded, the later job left out.
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    jobs = [{**job, "from_step": 1, "machine": "machine A"}, {**job, "from_step": step, "machine": "machine B"}]
    (run / JOBS_FILE).write_text(json.dumps({"format": 1, "jobs": jobs}))
    card = (daps.hub.export_run(run, tmp_path / "b") / "README.md").read_text()
    lines = card.split("Trained on:\n\n")[1].split("\n\n")[0].splitlines()
    assert lines[0] == "- steps 0-1: not recorded" and lines[1].startswith(f"- steps 1-{step}: cpu (machine A), ")
    assert len(lines) == 2 and "machine B" not in card
    # No record at all (lost, or garbage): the card says so rather than leaving the origin out.
    for record in (None, "garbage"):
        (run / JOBS_FILE).unlink(missing_ok=True)
        if record:
            (run / JOBS_FILE).write_text(record)
        card = (daps.hub.export_run(run, tmp_path / f"c{record}") / "README.md").read_text()
        assert card.split("Trained on:\n\n")[1].splitlines()[0] == f"- steps 0-{step}: not recorded"


def test_model_card_names_what_it_is_and_rebuilds_the_config(trained_run, tmp_path):
    from daps.config_io import config_differences

    folder = daps.hub.export_run(trained_run, tmp_path / "exported")
    card = (folder / "README.md").read_text()
    summary = json.loads((trained_run / "summary.json").read_text())
    assert "library_name: daps" in card and "# daps tokenizer for mnist5k" in card
    assert "T = 4 tokens of V = 16 codes (16 bits)" in card
    assert f"| log_p | {summary['log_p']:.6g} |" in card and "drawn token by token" in card
    command = card.split("```bash\n")[1].split("\n```")[0]
    words = shlex.split(command)
    assert words[:2] == ["daps", "train"]
    preset, method = words[words.index("--preset") + 1], words[words.index("--method") + 1]
    overrides = [w for w in words[2:] if "=" in w]
    rebuilt = daps.parse_overrides(daps.get_preset(preset, method), overrides)
    trained = daps.load_model(trained_run).config
    # the same config, but for the paths of the machine it was trained on: only their last part is shared
    assert config_differences(rebuilt, trained, ignore={"train.out_dir", "train.progress", "data.data_dir"}) == {}
    assert rebuilt.data.data_dir == Path(trained.data.data_dir).name and str(trained_run.parent) not in card


def test_the_card_says_how_daps_eval_gives_its_numbers(trained_run, tmp_path, capsys):
    folder = daps.hub.export_run(trained_run, tmp_path / "exported")
    card = (folder / "README.md").read_text()
    flags = shlex.split(card.split("gives the same numbers with `")[1].split("`")[0])
    summary = json.loads((trained_run / "summary.json").read_text())
    data_dir = daps.load_model(trained_run).config.data.data_dir  # (the folder's config holds only its name)
    for source in (trained_run, folder):  # "on this folder (or the run it was exported from)"
        assert main(["eval", str(source), "--json", *flags, "--data-dir", data_dir]) == 0
        evaluated = json.loads(capsys.readouterr().out)
        for key in ("log_p", "elbo", "kl"):
            assert f"| {key} | {evaluated[key]:.6g} |" in card
            assert evaluated[key] == pytest.approx(summary[key], rel=1e-6)


@pytest.mark.parametrize("method, encoding, usage", [
    ("fsq", "encoded deterministically", "codes = model.encode(x)"),
    ("dapsna", "drawn independently", "codes = model.encode(x)"),
    ("vae", "posterior mean", "z = model.encode(x)              # (B, D) posterior means"),
])
def test_the_card_fits_the_method_and_the_processes_that_trained_it(tiny_overrides_for, method, encoding, usage):
    from daps.methods import build_method

    cfg = daps.parse_overrides(daps.get_preset("mnist", method),
                               [*tiny_overrides_for(method),
                                "data.data_dir=/my data/mnist files"])
    model = build_method(cfg, tuple(cfg.data.image_shape))
    model.config = cfg
    card = daps.hub.model_card(model, {"log_p": -90.0, "num_images": 100}, step=6, world_size=2)
    assert encoding in card and usage in card
    assert ("A discrete autoencoder" in card) == (method != "vae")
    assert "6 optimizer steps at batch size 32 (2 processes of 16)" in card
    words = shlex.split(card.split("```bash\n")[1].split("\n```")[0])
    assert words[:4] == ["torchrun", "--nproc_per_node=2", "-m", "daps"]
    assert "data.data_dir=mnist files" in words  # quoted for the shell; the path of this machine cut off


def test_folders_are_never_replaced_unless_daps_wrote_them(trained_run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export", str(trained_run), "--out", str(mine), "--overwrite"]) == 2
    assert "not a daps pretrained folder" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    out = tmp_path / "exported"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    assert main(["export", str(trained_run), "--out", str(out)]) == 2  # exists: needs --overwrite
    assert main(["export", str(trained_run), "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["export", str(trained_run), "--out", str(tmp_path / "private"), "--private"]) == 2
    assert "--private is read only with --push-to-hub" in capsys.readouterr().err
    assert not (tmp_path / "private").exists()
    model = daps.from_pretrained(out)
    again = model.save_pretrained(tmp_path / "again")
    assert daps.from_pretrained(again).encode(torch.zeros(1, 1, 28, 28), torch.Generator()).shape == (1, 4)


def test_foreign_folders_and_repos_are_one_clear_error(tmp_path, no_network):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{\"hello\": 1}")
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    (bad / "model.py").write_text("raise SystemExit('executed!')")  # never imported
    with pytest.raises(UserError, match="not a daps config"):
        daps.from_pretrained(bad)
    with pytest.raises(UserError, match="neither a folder nor a Hub repo id"):
        daps.from_pretrained(tmp_path / "missing")
    pytest.importorskip("huggingface_hub")
    with pytest.raises(UserError, match="could not fetch someone/model"):
        daps.from_pretrained("someone/model")


def test_push_to_hub_sends_the_folder(trained_run, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("api", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message, allow_patterns):
            from pathlib import Path

            names = sorted(p.name for p in Path(folder_path).iterdir() if not p.name.startswith("."))
            calls.append(("upload", repo_id, names, sorted(allow_patterns)))

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=FakeApi))
    url = daps.load_model(trained_run).push_to_hub("someone/tiny-daps", private=True, token="t")
    assert url == "https://huggingface.co/someone/tiny-daps"
    files = ["README.md", "config.json", "model.safetensors"]
    assert calls == [("api", "t"), ("create", "someone/tiny-daps", True, True),
                     ("upload", "someone/tiny-daps", files, sorted(daps.hub.FILES))]
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(UserError, match=r"pip install 'daps\[hub\]'"):
        daps.from_pretrained("someone/tiny-daps")


def test_the_cards_eval_flags_repeat_training_validation_with_its_fid():
    from daps.hub import eval_flags

    cfg = daps.parse_overrides(daps.get_preset("cifar10", "daps"),
                               ["train.fid=reference", "train.fid_reference=/my data/ref.npz"])
    words = shlex.split(eval_flags(cfg))
    assert words[words.index("--fid") + 1] == "reference" and words[words.index("--fid-ref") + 1] == "/my data/ref.npz"
    assert words[words.index("--seed") + 1] == str(cfg.train.seed + 12345)
    assert "--fid" not in shlex.split(eval_flags(daps.get_preset("mnist", "daps")))


def test_a_model_built_in_python_saves_and_loads_and_its_card_does_not_invent_a_step_count(tmp_path,
                                                                                            tiny_overrides_for):
    """``build_method`` attaches its config, so a model trained in one's own loop can be saved (it refused: "needs
    the model's config"); its card says the step count is not known instead of "? optimizer steps"."""
    cfg = daps.parse_overrides(daps.get_preset("mnist", "vqvae"), tiny_overrides_for("vqvae"))
    model = daps.build_method(cfg, tuple(cfg.data.image_shape))
    assert model.config is cfg
    folder = model.save_pretrained(tmp_path / "mine")
    loaded = daps.from_pretrained(folder)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    card = (folder / "README.md").read_text()
    assert "?" not in card.split("## Training")[1] and "was not recorded" in card
    small = daps.build_method(cfg, (1, 8, 8))  # other inputs than the config's: the attached config says so
    assert small.config.data.image_shape == (1, 8, 8) and tuple(cfg.data.image_shape) == (1, 28, 28)
    reloaded = daps.from_pretrained(small.save_pretrained(tmp_path / "small"))
    assert reloaded.input_spec.image_shape == (1, 8, 8)


def test_an_unfinished_run_is_exported_with_a_warning_and_its_validation_at_that_step(tiny_overrides, tmp_path,
                                                                                        caplog):
    from daps.train import train

    cfg = daps.parse_overrides(daps.get_preset("mnist"), [*tiny_overrides, "train.stop_after=3",
                                                          f"train.out_dir={tmp_path / 'run'}"])
    run = train(cfg)  # stops after step 3 of 6, with a checkpoint and a validation there
    with caplog.at_level("WARNING"):
        card = (daps.hub.export_run(run, tmp_path / "exp") / "README.md").read_text()
    assert "is exported at step 3 of the 6 it was set to train" in caplog.text
    assert "3 optimizer steps (of a run set for 6, exported before it finished" in card
    val = [json.loads(line) for line in open(run / "metrics.jsonl") if '"val"' in line]
    assert val[-1]["step"] == 3 and f"| log_p | {val[-1]['log_p']:.6g} |" in card


@pytest.mark.parametrize("summary", ["garbage\n", "[1, 2]\n", ""])
def test_export_of_a_run_with_a_damaged_summary_reads_the_validation_row(copy_run, tmp_path, capsys, summary):
    """``summary.json`` damaged (a disk error, a hand edit; ``train`` treats it as missing): ``daps export`` takes the
    validation row logged at the checkpoint's step, as for an unfinished run (it gave a traceback)."""
    run = copy_run()
    (run / "summary.json").write_text(summary)
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0, capsys.readouterr().err
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "log p(x|z)" in card or "log_p" in card


def test_export_skips_metrics_lines_that_are_not_rows(copy_run, tmp_path, capsys):
    """A ``metrics.jsonl`` line that is JSON but not an object (``[1]``, ``"x"``) is skipped by ``read_metrics``,
    which export, the plots and compare read (it gave an AttributeError traceback)."""
    from daps.plots import read_metrics

    run = copy_run()
    (run / "summary.json").unlink()  # an unfinished run: export reads the validation row of metrics.jsonl
    rows = read_metrics(run / "metrics.jsonl")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('[1]\n"x"\n3\n')
    assert read_metrics(run / "metrics.jsonl") == rows
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0, capsys.readouterr().err


def test_every_entry_point_tells_a_pretrained_folder_from_a_run_by_the_same_rule(trained_run, data_dir, tmp_path,
                                                                                  capsys, no_network):
    """``from_pretrained`` (Python) and the commands that take a tokenizer (``open_model``: eval, render,
    export-codes, ...) decide "pretrained folder or run" by one rule (``is_pretrained``): an exported folder's
    ``model.safetensors`` or ``config.json`` stands for the folder in both (the commands refused the file as "an
    exported model", which they take), and a folder downloaded from the Hub (no marker) is named as a pretrained
    folder by ``load_model`` (it said "state.pt is missing"). Known answers: the export's weights are the run's; a
    folder holding neither, a daps folder of another kind and a missing path get the same message from both.
    Fails on: ``is_pretrained`` not taking a file for its folder; ``resolve_checkpoint`` not recognising a
    marker-less pretrained folder; ``from_pretrained`` deciding by its own rule (a comparison's folder read as a
    pretrained folder without weights)."""
    import shutil

    from daps.checkpoint import CheckpointError
    from daps.hub import is_pretrained, open_model
    from daps.runfolder import write_marker

    exported = tmp_path / "export"
    assert main(["export", str(trained_run), "--out", str(exported)]) == 0
    capsys.readouterr()
    reference = daps.load_model(trained_run).state_dict()
    downloaded = tmp_path / "downloaded"  # what snapshot_download leaves: the files, no marker, no lock
    downloaded.mkdir()
    for name in ("config.json", "model.safetensors", "README.md"):
        shutil.copy(exported / name, downloaded / name)
    for source in (exported, exported / "model.safetensors", exported / "config.json", downloaded,
                   downloaded / "model.safetensors"):
        assert is_pretrained(source), source
        for model in (daps.from_pretrained(source), open_model(source, "cpu")[0]):
            assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items()), source
        origin = open_model(source, "cpu")[1]
        assert origin["run"] == origin["checkpoint"] == str(Path(source if source.is_dir() else source.parent))
        assert origin["step"] is None
    out = tmp_path / "codes.safetensors"
    assert main(["export-codes", str(exported / "model.safetensors"), "--data-dir", str(data_dir), "--out",
                 str(out)]) == 0 and out.is_file()
    with pytest.raises(CheckpointError, match=f"^{downloaded} is an exported model .*not a training run$"):
        daps.load_model(downloaded)

    empty, comparison = tmp_path / "empty", tmp_path / "comparison"
    empty.mkdir()
    comparison.mkdir()
    write_marker(comparison, "compare")
    for source, message in ((empty, f"no model found at {empty} "),
                            (comparison, f"{comparison} is a daps compare folder, not a run with checkpoints")):
        assert not is_pretrained(source)
        for call in (daps.from_pretrained, lambda s: open_model(s, "cpu")):
            with pytest.raises(UserError, match="^" + message):
                call(source)
    with pytest.raises(UserError, match=f"^{tmp_path / 'typo'} does not exist; give a run folder, a checkpoint "
                                        "folder, a pretrained folder or a Hub repo id"):
        open_model(tmp_path / "typo", "cpu")
