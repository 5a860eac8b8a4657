"""Trained tokenizers as shareable folders, locally or on the Hugging Face Hub.

A pretrained folder holds ``model.safetensors`` (the weights), ``config.json`` (the resolved config, as written in
run folders) and ``README.md`` (a model card: method, dataset, bottleneck, validation metrics with their protocol,
the command that trained it), plus a marker file. Loading reads JSON and safetensors only: no pickle, no code from
the folder is ever executed.

    daps export runs/mnist-daps --out exported/mnist-daps        # a run folder -> a pretrained folder
    model = daps.from_pretrained("exported/mnist-daps")           # or "user/repo" on the Hub (extra: daps[hub])
    model.save_pretrained("folder");  model.push_to_hub("user/repo")

The Hub functions need the optional ``huggingface_hub`` package (``pip install 'daps[hub]'``); local folders need
nothing beyond daps.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from daps.dist import resolve_device
from daps.errors import UserError
from daps.provenance import read_jobs
from daps.runfolder import (
    FolderLock,
    atomic_path,
    prepare_output_folder,
    read_json_object,
    read_marker,
    write_json_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:
    from daps.methods.types import Method

log = logging.getLogger("daps")

KIND = "pretrained"
STANDARDIZATION = "standardization.json"
FILES = ("model.safetensors", "config.json", "README.md", STANDARDIZATION)
"""What a pretrained folder holds (``standardization.json`` only for motion and one's own sequences)."""
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise UserError("the Hugging Face Hub needs the huggingface_hub package: pip install 'daps[hub]'") from None
    return huggingface_hub


def training_command(cfg, world_size: int = 1) -> str:
    """The ``daps train`` command that builds ``cfg`` from its preset (keys that differ from it as overrides, each
    quoted for the shell), under ``torchrun`` for a run of ``world_size`` processes."""
    from daps.config_io import config_differences, ignored_settings
    from daps.presets import get_preset

    base = get_preset(cfg.preset, cfg.method)
    # settings the run does not read are left out: daps train would refuse them
    diffs = config_differences(base, cfg, ignore={"train.out_dir", "train.progress", *ignored_settings(cfg)})

    def shown(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return str(value).lower() if isinstance(value, bool) else str(value)

    overrides = " ".join(shlex.quote(f"{key}={shown(new)}") for key, (_, new) in sorted(diffs.items()))
    launcher = "daps train" if world_size == 1 else f"torchrun --nproc_per_node={world_size} -m daps train"
    return f"{launcher} --preset {cfg.preset} --method {cfg.method}" + (f" {overrides}" if overrides else "")


ENCODING = {
    "autoregressive": "each encoded with one code drawn token by token (ancestral sampling at temperature 1)",
    "bidirectional": "each encoded with one code whose tokens are drawn independently from their categoricals",
    "quantizer": "each encoded deterministically (its quantized code)",
    "mlp": "each encoded to its posterior mean",
}
"""How ``daps eval`` (and training's validation) encodes an example, by encoder family (:data:`EncoderFamily`)."""


NOT_METRICS = frozenset({"step", "num_images", "skipped_files", "fid_num_images", "final_beta"})
"""Numbers of a validation row or summary that are counts or settings, not scores."""


def eval_flags(cfg) -> str:
    """The ``daps eval`` flags that repeat training's validation of ``cfg`` (split, subset, batches, seed, FID)."""
    from daps.train import validation_seed

    tc = cfg.train
    flags = ["--split", "test", "--max-images", str(tc.eval_examples), "--batch-size", str(tc.eval_batch_size),
             "--seed", str(validation_seed(cfg))]
    if tc.fid != "none":
        flags += ["--fid", tc.fid]
        flags += ["--fid-ref", tc.fid_reference] if tc.fid == "reference" else []
        flags += ["--fid-weights", tc.fid_weights] if tc.fid_weights else []
    return " ".join(shlex.quote(f) for f in flags)


def model_card(model: Method, metrics: dict[str, Any] | None = None, step: int | None = None,
               world_size: int = 1, jobs: list[dict] | None = None) -> str:
    """README.md of a pretrained folder: YAML front matter for the Hub, then what the model is and how it scores.
    ``world_size``: the processes that trained it (each with ``train.batch_size`` examples per step); ``jobs``: the
    run's record of the jobs that trained it (:func:`daps.provenance.read_jobs`), said as where its steps ran."""
    from daps.methods import method_spec

    cfg = shareable_config(model.config)
    spec = method_spec(cfg.method)
    bits = spec.bits(cfg)
    discrete = model.vocab_size is not None
    if discrete:
        codes = f"T = {model.input_spec.num_tokens} tokens of V = {model.vocab_size} codes ({bits:g} bits)"
        usage = ["codes = model.encode(x)          # (B, T) int64", "x_hat = model.decode(codes)      # decoder means"]
    else:
        codes = f"a continuous latent ({bits:g} bits at float32)"
        usage = ["z = model.encode(x)              # (B, D) posterior means", "x_hat = model.decode(z)"]
    batch = cfg.train.batch_size * world_size
    unfinished = (f" (of a run set for {cfg.train.steps}, exported before it finished: schedules such as beta's "
                  f"follow the {cfg.train.steps}-step run)" if step is not None and step < cfg.train.steps else "")
    per_process = f" ({world_size} processes of {cfg.train.batch_size})" if world_size > 1 else ""
    lines = [
        "---", "library_name: daps", "tags:",
        *[f"- {tag}" for tag in dict.fromkeys(("daps", "discrete-vae", "tokenizer", cfg.method, cfg.data.name))],
        "---", "",
        f"# {cfg.method} tokenizer for {cfg.data.name}", "",
        f"A{' discrete' if discrete else 'n'} autoencoder trained with the daps library ({spec.summary}). Input: "
        f"{tuple(model.input_spec.image_shape)} arrays of the `{cfg.data.name}` dataset's model scale; code: {codes}.",
        *(["", "Raw features are put on the model's scale per feature by `standardization.json` (x_std = (x - mean) / "
            "scale, from the training data): `model.standardization.normalize(raw)` before encoding, "
            "`model.standardization.denormalize(x_hat)` after decoding."]
          if getattr(model, "standardization", None) is not None else []),
        "", "```python", "import daps", "model = daps.from_pretrained(\"<this folder or repo>\")", *usage,
        "```", "", "## Training", "",
        (f"{step} optimizer steps{unfinished} at batch size {batch}{per_process}, seed {cfg.train.seed}:"
         if step is not None
         else f"Settings of batch size {batch}{per_process}, seed {cfg.train.seed}; how many optimizer steps trained "
              "it was not recorded (saved from Python, not exported from a run):"),
        "", "```bash", training_command(cfg, world_size), "```", "",
        "File and folder settings are cut to their last part (no path of the training machine is shared): point "
        "`data.data_dir` at your copy of the data.",
    ]
    if not jobs and step is not None:  # a run of an earlier daps, or its provenance.json lost or damaged
        lines += ["", "Trained on:", "", f"- steps 0-{step}: not recorded"]
    if jobs and step is not None:
        lines += ["", "Trained on:", ""]
        if jobs[0]["from_step"] > 0:
            lines.append(f"- steps 0-{jobs[0]['from_step']}: not recorded")
        lines += [
            f"- steps {job['from_step']}-{end}: {job.get('device', '?')} ({job.get('machine', '?')}), "
            f"torch {job.get('torch', '?')}, daps code {job.get('code', '?')}, started {job.get('date', '?')}"
            for job, end in zip(jobs, [j["from_step"] for j in jobs[1:]] + [step])
        ]
    if metrics:
        shown = {k: v for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_METRICS}
        count = int(metrics.get("num_images", 0)) or None
        lines += ["", "## Validation", "",
                  f"On {count or 'the'} test examples of `{cfg.data.name}`, {ENCODING[spec.encoder]} and decoded; "
                  "log p and the ELBO in nats per example. Training's validation at this step; `daps eval` on "
                  f"this folder (or the run it was exported from) gives the same numbers with `{eval_flags(cfg)}` "
                  "on the kind of device it was trained on (the random stream of the codes differs between CPU and "
                  "CUDA).",
                  "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in shown.items()]
    return "\n".join(lines) + "\n"


PATH_SETTINGS = (("data", "data_dir"), ("train", "out_dir"), ("train", "fid_reference"), ("train", "fid_weights"))
"""The settings that name files or folders of the machine a model was trained on."""


def shareable_config(cfg: Any) -> Any:
    """``cfg`` as a pretrained folder shows it: each of :data:`PATH_SETTINGS` cut to its last part (the file or
    folder's name), so that an export, and a Hub upload, never carries the paths of the machine it was trained on."""
    import copy

    out = copy.deepcopy(cfg)
    for section, key in PATH_SETTINGS:
        value = getattr(getattr(out, section), key)
        if value:
            setattr(getattr(out, section), key, Path(value).name)
    return out


def save_pretrained(model: Method, folder: str | Path, overwrite: bool = False,
                    metrics: dict[str, Any] | None = None, step: int | None = None, world_size: int = 1,
                    jobs: list[dict] | None = None) -> Path:
    """Write ``model`` (a loaded or trained method with its ``config``) as a pretrained folder. An existing folder is
    replaced only with ``overwrite`` and only if it is a daps pretrained folder. ``metrics``, ``step``,
    ``world_size`` (processes that trained it) and ``jobs`` (where its steps ran) go into the model card."""
    from safetensors.torch import save_file

    from daps.checkpoint import WEIGHTS_DIGEST, weights_digest
    from daps.config_io import config_to_dict

    if getattr(model, "config", None) is None:
        raise UserError("save_pretrained needs the model's config: use a model from daps.load_model or train()")
    folder = Path(folder)
    check_output_folder(folder, overwrite)
    lock = FolderLock(folder).acquire()
    try:
        prepare_output_folder(folder, KIND, overwrite, entries=FILES)
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(tensors, str(tmp),
                      metadata={"format": "pt", "library": "daps", WEIGHTS_DIGEST: weights_digest(tensors)})
        write_json_atomic(folder / "config.json", config_to_dict(shareable_config(model.config)))
        stats = getattr(model, "standardization", None)
        if stats is not None:  # only the statistics: never the path of the user's data file
            record = {"format": 1, "dataset": model.config.data.name, "mean": stats.mean.tolist(),
                      "scale": stats.scale.tolist(), "near_constant": stats.near_constant.astype(bool).tolist()}
            if model.config.data.name == "lafan1-h1":  # the motion features' layout the statistics belong to
                record["feature_version"] = stats.feature_version
            write_json_atomic(folder / STANDARDIZATION, record)  # (--overwrite cleared any earlier one: FILES)
        write_text_atomic(folder / "README.md", model_card(model, metrics, step, world_size, jobs))
    finally:
        lock.release()
    return folder


def check_output_folder(folder: Path, overwrite: bool) -> None:
    """Refuse, before anything is created, a folder that save_pretrained may not write into."""
    from daps.runfolder import check_replaceable, has_content, refuse_existing, refuse_precious

    refuse_precious(folder, "--out")
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        raise UserError(f"--out {folder} exists and is not a folder")
    if has_content(folder):
        if not overwrite:
            refuse_existing(folder, KIND, "--out")
        check_replaceable(folder, KIND, "--out")


def export_run(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """``daps export``: a run folder's newest checkpoint (verified) as a pretrained folder, with its final
    validation metrics in the model card."""
    from daps.checkpoint import load_model, load_training_state, resolve_checkpoint

    check_output_folder(Path(out), overwrite)  # before the checkpoint is read
    ckpt = resolve_checkpoint(run_dir)
    model = load_model(ckpt)
    metrics = read_json_object(ckpt.parent.parent / "summary.json")  # missing or damaged: as for an unfinished run
    state = load_training_state(ckpt)
    step = int(state["step"])
    if metrics is not None and metrics.get("step") != step:
        metrics = None  # the summary belongs to another checkpoint (e.g. a run resumed past it)
    if metrics is None and (ckpt.parent.parent / "metrics.jsonl").is_file():  # an unfinished run: the validation
        # logged at this checkpoint's step, if any
        from daps.plots import read_metrics

        rows = [r for r in read_metrics(ckpt.parent.parent / "metrics.jsonl")
                if r.get("split") == "val" and r.get("step") == step]
        metrics = {k: v for k, v in rows[-1].items() if k != "split"} if rows else None
    if step < model.config.train.steps:
        log.warning("%s is exported at step %d of the %d it was set to train: the run has not finished",
                    run_dir, step, model.config.train.steps)
    jobs = [job for job in read_jobs(ckpt.parent.parent) if job["from_step"] < step]  # those this checkpoint holds
    return save_pretrained(model, out, overwrite, metrics, step, world_size=len(state["rng"]),  # a state per rank
                           jobs=jobs)


def _load_folder(folder: Path, device: str | torch.device) -> Method:
    from daps.checkpoint import WEIGHTS_DIGEST, CheckpointError, load_weights, read_weights, weights_digest
    from daps.config_io import config_from_dict
    from daps.methods import build_method

    for name in ("model.safetensors", "config.json"):
        if not (folder / name).is_file():
            raise UserError(f"{folder} is not a daps pretrained folder (no {name})")
    try:
        cfg = config_from_dict(json.loads((folder / "config.json").read_text()))
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"{folder / 'config.json'} is not a daps config ({err})") from None
    path = folder / "model.safetensors"
    tensors, header = read_weights(path)
    recorded = header.get(WEIGHTS_DIGEST)  # folders written before the digest existed have none
    if recorded is not None and recorded != weights_digest(tensors):
        raise CheckpointError(f"{path} was changed or damaged after it was written: its tensors do not match the "
                              "checksum recorded in it (export the run again)")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path} holds non-finite values (in {name})")
    model = build_method(cfg, tuple(cfg.data.image_shape))
    load_weights(model, folder, tensors)  # a misfitting model.safetensors: one CheckpointError naming it
    model.standardization = _read_standardization(folder / STANDARDIZATION, cfg)
    return model.to(device).eval()


def _read_standardization(path: Path, cfg: Any) -> Any:
    """The :class:`~daps.motion.dataset.Standardizer` a pretrained folder's ``standardization.json`` holds (None
    without the file), checked against the model's features; UserError naming the file when it does not fit."""
    import numpy as np

    from daps.motion.dataset import Standardizer
    from daps.motion.features import FEATURE_VERSION

    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        stats = Standardizer.from_arrays(d)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path} is not a readable standardization file ({type(err).__name__}: {err})") from None
    features = int(cfg.data.image_shape[-1])
    if not (stats.mean.shape == stats.scale.shape == stats.near_constant.shape == (features,)
            and np.isfinite(stats.mean).all() and np.isfinite(stats.scale).all() and (stats.scale > 0).all()):
        raise UserError(f"{path}: mean, scale and near_constant must each hold the model's {features} features "
                        "(finite, scale > 0)")
    if cfg.data.name == "lafan1-h1" and stats.feature_version != FEATURE_VERSION:
        raise UserError(f"{path}: statistics of motion feature version {stats.feature_version}; this daps computes "
                        f"version {FEATURE_VERSION}")
    return stats


def _folder_of(source: str | Path) -> Path:
    """``source`` as a path, where a folder's ``config.json`` or ``model.safetensors`` stands for the folder."""
    path = Path(source)
    return path.parent if path.is_file() and path.name in ("config.json", "model.safetensors") else path


def is_pretrained(source: str | Path) -> bool:
    """Whether ``source`` names a pretrained model rather than a run folder or checkpoint: a folder ``daps export``
    wrote, one downloaded from the Hub (its config and weights, no checksums or checkpoints) or its
    ``config.json`` or ``model.safetensors``, or a Hub repo id ``user/name`` that is no path here.
    :func:`from_pretrained` and :func:`open_model` both decide by it."""
    from daps.checkpoint import bare_model

    path = _folder_of(source)
    if path.is_dir():
        marker = read_marker(path)
        return marker == KIND or (marker is None and not (path / "checkpoints").is_dir() and bare_model(path))
    return not path.exists() and not path.is_symlink() and bool(REPO_ID.match(str(source)))


def from_pretrained(source: str | Path, revision: str | None = None, device: str | torch.device = "cpu",
                    cache_dir: str | Path | None = None) -> Method:
    """A trained tokenizer from a pretrained folder, a run folder or checkpoint, or a Hub repo ``user/name``
    (downloaded once into the Hub cache; only the weights, config and card are fetched)."""
    if not isinstance(source, (str, os.PathLike)):
        raise UserError(f"from_pretrained takes a folder or a Hub repo id (user/name), got {type(source).__name__}")
    device = resolve_device(device)
    path = _folder_of(source)  # a folder's model.safetensors or config.json stands for the folder
    if path.is_file():
        raise UserError(f"{source} is a file; give the folder holding config.json and model.safetensors")
    if path.is_dir():
        if is_pretrained(path):
            return _load_folder(path, device)
        from daps.checkpoint import load_model

        refuse_neither(path)
        return load_model(path, device)
    if not REPO_ID.match(str(source)):
        raise UserError(f"{source} is neither a folder nor a Hub repo id (user/name)")
    hub = _hub()
    try:
        local = hub.snapshot_download(repo_id=str(source), revision=revision, allow_patterns=list(FILES),
                                      cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, no permission: one line for the user
        raise UserError(f"could not fetch {source} from the Hugging Face Hub ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return _load_folder(Path(local), device)


def refuse_neither(folder: Path) -> None:
    """UserError for a folder that holds nothing of a run (no marker, ``checkpoints/``, ``config.json`` or
    ``checksums.json``) and is no pretrained folder either: an empty folder, or weights without their config. A
    checkpoint folder or anything of a run is left to :func:`daps.checkpoint.resolve_checkpoint`, whose messages are
    more precise."""
    if folder.is_dir() and read_marker(folder) is None and not (folder / "checkpoints").exists() \
            and not (folder / "config.json").is_file() and not (folder / "checksums.json").exists():
        raise UserError(f"no model found at {folder} (expected a run folder with checkpoints/latest, or a "
                        "pretrained folder with config.json and model.safetensors)")


def open_model(source: str | Path, device: str | torch.device) -> tuple[Method, dict[str, Any]]:
    """A trained model on ``device`` from a run folder or checkpoint (``daps train``), a pretrained folder (``daps
    export``, or one downloaded from the Hub) or a Hub repo id ``user/name``, and where it came from, as a codes
    header records it (:mod:`daps.codes`): ``run``, ``checkpoint`` (a pretrained one's folder or repo id, for both),
    ``step`` (None for a pretrained one), ``model_sha256`` (a checkpoint file's recorded checksum; "" for a
    pretrained one) and ``weights_digest`` (of its tensors: the same for a checkpoint and its export)."""
    from daps.checkpoint import load_model, load_training_state, resolve_checkpoint, weights_digest
    from daps.codes import weights_sha256

    path = Path(source)
    origin: dict[str, Any]
    if is_pretrained(source):
        try:
            model = from_pretrained(source, device=device)
        except UserError as err:
            if path.exists():
                raise
            raise UserError(f"{source} is not a folder here (no run, checkpoint or pretrained folder of that name); "
                            f"as a Hub repo id: {err}") from None
        where = str(_folder_of(path).resolve()) if path.exists() else str(source)  # a file: its folder
        origin = {"run": where, "checkpoint": where, "step": None, "model_sha256": ""}
    else:
        if not path.exists():
            raise UserError(f"{source} does not exist; give a run folder, a checkpoint folder, a pretrained folder or "
                            "a Hub repo id (user/name)")
        refuse_neither(path)
        ckpt = resolve_checkpoint(source, verify=False)  # once: a run still training may move its latest
        model = load_model(ckpt, device)  # (verifies the checkpoint)
        named = re.fullmatch(r"step_(\d+)", ckpt.name)  # a copied checkpoint folder may have another name
        step = int(named.group(1)) if named else int(load_training_state(ckpt)["step"])
        origin = {"run": str(path.resolve()), "checkpoint": str(ckpt.resolve()), "step": step,
                  "model_sha256": weights_sha256(ckpt)}
    origin["weights_digest"] = weights_digest(model.state_dict())
    return model, origin


def push_to_hub(model: Method, repo_id: str, private: bool = False, token: str | None = None,
                metrics: dict[str, Any] | None = None, commit_message: str = "daps tokenizer") -> str:
    """Upload ``model`` as a pretrained folder to the Hub repo ``repo_id`` (created if needed); returns its URL."""
    with tempfile.TemporaryDirectory(prefix="daps-push-") as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", metrics=metrics)
        return push_folder(folder, repo_id, private, token, commit_message)


def check_push(repo_id: str):
    """The ``huggingface_hub`` module if ``repo_id`` is a Hub repo id and the package is installed; else UserError.
    ``daps export --push-to-hub`` calls it before writing anything."""
    if not REPO_ID.match(repo_id):
        raise UserError(f"{repo_id!r} is not a Hub repo id (user/name)")
    return _hub()


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "daps tokenizer") -> str:
    """Upload a pretrained folder (its weights, config and card only) to ``repo_id``; returns the repo's URL."""
    hub = check_push(repo_id)
    _load_folder(Path(folder), "cpu")  # only a folder that loads is uploaded
    api = hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                          allow_patterns=list(FILES))
    except Exception as err:  # noqa: BLE001 - offline, no token, no permission: one line for the user
        raise UserError(f"could not upload to {repo_id} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return f"https://huggingface.co/{repo_id}"
