"""Codes of a trained tokenizer, exported with their labels for a second model (a prior) to learn.

A codes file is one safetensors file (readable without daps: ``safetensors.numpy.load_file`` in NumPy, or any
safetensors reader) holding two tensors:

- ``codes``: int64 ``(N, K, T)``, K codes of T tokens for each of the N inputs of a split. Categorical encoders
  (DAPS and the other autoregressive / bidirectional ones) draw K independent codes from q(z | x); the quantizers
  (VQ-VAE, FSQ: FSQ's per-token level tuples flattened to one index) are deterministic, so K is 1. Every entry is
  in ``[0, vocab_size)``.
- ``labels``: int64 ``(N,)``, the class of each input (``class_names`` in the header).

and a JSON header in the file's metadata under the key ``daps_codes`` (``safe_open(path, "np").metadata()``):
``format`` (1), ``method``, ``dataset``, ``split``, ``vocab_size``, ``num_tokens``, ``samples_per_input``,
``stochastic``, ``class_names``, ``seed``, and the provenance: ``run`` (the run folder), ``checkpoint``,
``step``, ``model_sha256`` (of the checkpoint's weights file), ``weights_digest`` (of its tensors,
:func:`daps.checkpoint.weights_digest`: the same for a checkpoint and its ``daps export``) and ``config_sha256``
(of its resolved config); a pretrained tokenizer (``daps export``'s folder, or a Hub repo id) is recorded as its
folder or id in ``run`` and ``checkpoint``, with ``step`` null and ``model_sha256`` empty; for a
dataset streamed from class folders (``imagenet256``, ``imagenet256-sample``, ``imagefolder``) also
``skipped_files`` (unreadable files, each replaced by the next image). Folder images are resized and
center-cropped to the run's resolution, as for validation; their classes are the sorted folder names.

``daps export-codes RUN --split train --out codes.safetensors`` writes one (RUN: a run folder or checkpoint, a
pretrained folder or a Hub repo id); :func:`export_codes`,
:func:`save_codes` and :func:`load_codes` are the Python equivalent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from daps.errors import UserError
from daps.functional import is_integer_dtype
from daps.runfolder import atomic_path, check_output_file

log = logging.getLogger("daps")

FORMAT = 1
HEADER_KEY = "daps_codes"


@dataclass
class CodeSet:
    """Exported codes: ``codes (N, K, T)`` int64, ``labels (N,)`` int64 and the header (see the module doc)."""

    codes: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def num_tokens(self) -> int:
        return int(self.meta["num_tokens"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["class_names"])

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every code as one training example: ``codes (N*K, T)`` and the label of each ``(N*K,)``."""
        n, k, t = self.codes.shape
        return self.codes.reshape(n * k, t), self.labels.repeat_interleave(k)


def content_sha256(codes: CodeSet) -> str:
    """SHA-256 of a codes set's tensors (shapes and int64 values of ``codes``, then ``labels``): what a header cannot
    vouch for, e.g. a file edited or cut short by hand with its header kept."""
    digest = hashlib.sha256()
    for t in (codes.codes, codes.labels):
        digest.update(f"{tuple(t.shape)}|".encode())
        digest.update(t.long().contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(ckpt: Path) -> str:
    """SHA-256 of a checkpoint's ``model.safetensors`` as its ``checksums.json`` records it ("" without one)."""
    sums = Path(ckpt) / "checksums.json"
    return json.loads(sums.read_text())["files"]["model.safetensors"]["sha256"] if sums.exists() else ""


def load_code_tokenizer(
    source: str | Path, meta: dict[str, Any], device: torch.device, codes_of: str, recorded: bool = False
) -> tuple[Any, dict[str, Any]]:
    """The tokenizer ``source`` (see :func:`daps.hub.open_model`) on ``device`` and where it came from, checked to be
    the one that made the codes ``meta`` describes (a codes header): V and T, and its weights where the header
    records them; UserError otherwise. ``codes_of`` names the codes in the message ("the prior's codes");
    ``recorded``: ``source`` is the path the codes recorded, not one the user typed (``--tokenizer``), so a
    missing one is a run moved or deleted since, and the message says how to name where it is now."""
    from daps.checkpoint import CKPT_DIR
    from daps.hub import REPO_ID, open_model

    if recorded and not Path(source).exists() and not REPO_ID.match(str(source)):  # (a Hub id is fetched)
        run = meta.get("run")
        if run and Path(run).is_dir() and Path(run).resolve() != Path(source).resolve():
            raise UserError(f"the checkpoint that made {codes_of}, {source}, is no longer in its run {run} (removed "
                            "as the run trained on: keep_checkpoints); its weights are needed: pass a copy of that "
                            "checkpoint as --tokenizer CHECKPOINT, or export the codes again from the run")
        step = Path(source).name if Path(source).parent.name == CKPT_DIR else None
        raise UserError(f"the tokenizer that made {codes_of}, {source}, is not there any more (moved or deleted?); "
                        "pass its run folder at its new place as --tokenizer RUN"
                        + (f" (RUN/{CKPT_DIR}/{step} if the run has trained on since)" if step else ""))
    model, origin = open_model(source, device)
    if model.vocab_size is None:
        raise UserError(f"tokenizer {source} is a {model.config.method} run with continuous latents, not discrete "
                        f"codes; {codes_of} (V={meta['vocab_size']}, T={meta['num_tokens']}) come from another one")
    if model.vocab_size != meta["vocab_size"] or model.input_spec.num_tokens != meta["num_tokens"]:
        made = (f", from a {meta['method']} tokenizer of {meta['dataset']}" if {"method", "dataset"} <= meta.keys()
                else "")
        raise UserError(f"tokenizer {source} ({model.config.method} on {model.config.data.name}) has "
                        f"V={model.vocab_size}, T={model.input_spec.num_tokens}; {codes_of} have "
                        f"V={meta['vocab_size']}, T={meta['num_tokens']}{made}")
    differ = (f"tokenizer {source} is not the checkpoint that made {codes_of} (its weights differ from those of "
              f"{meta.get('checkpoint')}); pass that one as --tokenizer")
    if meta.get("weights_digest"):
        if origin["weights_digest"] != meta["weights_digest"]:
            raise UserError(differ)
    elif meta.get("model_sha256"):  # a header from before the digest: the checkpoint file's checksum only
        if origin["model_sha256"] and origin["model_sha256"] != meta["model_sha256"]:
            raise UserError(differ)
        if not origin["model_sha256"]:
            log.warning("%s cannot be checked against the checkpoint that made %s: their header records the "
                        "checkpoint file's checksum only (export the codes again to record the weights' digest)",
                        source, codes_of)
    return model, origin


def check_draws(method: str, samples: int, setting: str) -> bool:
    """Whether ``method``'s encoder draws its codes (every encoder but a quantizer's); a UserError naming
    ``setting`` (``--samples-per-input ``, ``samples=``) when more than one draw per input is asked of a
    quantizer, whose code is the same at every draw."""
    from daps.methods import method_spec

    stochastic = method_spec(method).encoder != "quantizer"
    if samples > 1 and not stochastic:
        raise UserError(f"{setting}{samples}: {method} encodes deterministically: more draws would repeat the same "
                        "code; use 1")
    return stochastic


def config_sha256(config: dict) -> str:
    """SHA-256 of a config's canonical JSON (sorted keys): the same config gives the same hash."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def export_codes(
    run: str | Path,
    split: str = "train",
    samples_per_input: int = 1,
    seed: int = 0,
    max_inputs: int = 0,
    batch_size: int = 500,
    data_dir: str | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> CodeSet:
    """Encode split ``split`` of the dataset a run was trained on with the run's checkpoint.

    ``samples_per_input`` codes per input (categorical encoders only; a deterministic quantizer allows 1),
    drawn from a generator seeded with ``seed``; ``max_inputs`` > 0 keeps a fixed random subset of that many
    inputs (seed 0, the dataset's order kept); ``progress``: a bar on a terminal.
    """
    from daps.config_io import config_to_dict
    from daps.data import dataset_spec, folder_dataset, labelled_split, model_data
    from daps.data.imagefolder import eval_batches
    from daps.data.paths import check_split
    from daps.data.transforms import fixed_subset
    from daps.hub import open_model
    from daps.progress import progress_bar

    check_split(split)
    if samples_per_input < 1:
        raise UserError(f"--samples-per-input must be at least 1, got {samples_per_input}")
    model, origin = open_model(run, device)
    cfg = model.config
    vocab = model.vocab_size
    if vocab is None:
        raise UserError(f"{run} is a {cfg.method} run: its latent is continuous, there are no codes to export")
    stochastic = check_draws(cfg.method, samples_per_input, "--samples-per-input ")
    model_data(model, origin, data_dir, run)
    spec = dataset_spec(cfg.data.name)
    loader = None
    if spec.in_memory:
        data = labelled_split(cfg.data, split)
        class_names = data.class_names
        subset = fixed_subset(len(data.labels), max_inputs)
        total = len(subset)
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = (
            (data.raw(idx), data.labels[idx]) for idx in subset.split(batch_size)
        )
    else:  # streamed from class folders: resized and center-cropped to the run's resolution, as for validation
        images = folder_dataset(cfg.data.name, split, cfg.data.image_shape, cfg.data.data_dir or None, train=False)
        class_names = tuple(images.classes)
        loader = eval_batches(images, batch_size, cfg.data.num_workers, max_inputs,
                              pin_memory=torch.device(device).type == "cuda")
        batches = loader.labelled()
        total = loader.count
    generator = torch.Generator(device).manual_seed(seed)
    chunks, labels = [], []
    with progress_bar(total, f"encoding {split}", "input", progress) as bar:
        for raw, y in batches:
            x = spec.standardize(raw.to(device))
            draws = [model.encode(x, generator) for _ in range(samples_per_input)]  # K x (B, T)
            chunks.append(torch.stack(draws, 1).cpu())  # (B, K, T)
            labels.append(y.long().cpu())
            bar.update(len(y))
    codes = torch.cat(chunks).long()
    meta = {
        "format": FORMAT,
        "method": cfg.method,
        "dataset": cfg.data.name,
        "split": split,
        "vocab_size": int(vocab),
        "num_tokens": int(codes.shape[-1]),
        "samples_per_input": samples_per_input,
        "stochastic": stochastic,
        "class_names": list(class_names),
        "seed": seed,
        "max_inputs": max_inputs,
        **origin,
        "config_sha256": config_sha256(config_to_dict(cfg)),
    }
    if loader is not None:
        meta["skipped_files"] = loader.num_skipped  # unreadable files, each replaced by the next image
    result = CodeSet(codes, torch.cat(labels), meta)
    check_codes(result, "the exported codes")
    return result


def check_codes(codes: CodeSet, where: str) -> None:
    """Raise :class:`UserError` naming ``where`` if the codes and header disagree (shapes, ranges, labels)."""
    c, y, meta = codes.codes, codes.labels, codes.meta
    for name, tensor in (("codes", c), ("labels", y)):  # save_codes would truncate 2.7 to 2 without a word
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"{where}: the {name} must be a torch.Tensor of integers, got {type(tensor).__name__}")
        if not is_integer_dtype(tensor.dtype):
            raise UserError(f"{where}: the tensor {name!r} is {tensor.dtype}, not integers")
    c, y = c.long(), y.long()  # the range checks below: torch has no min / max of uint16, uint32 or uint64
    if c.dim() != 3 or y.dim() != 1 or c.shape[0] != y.shape[0]:
        raise UserError(f"{where}: codes must be (N, K, T) and labels (N,), got {tuple(c.shape)} and {tuple(y.shape)}")
    for key in ("vocab_size", "num_tokens", "class_names"):
        if key not in meta:
            raise UserError(f"{where}: the header has no {key!r}")
    for key in ("vocab_size", "num_tokens"):
        if isinstance(meta[key], bool) or not isinstance(meta[key], int) or meta[key] < 1:
            raise UserError(f"{where}: the header's {key} is {meta[key]!r}, not a positive integer")
    if not isinstance(meta["class_names"], list) or not all(isinstance(n, str) for n in meta["class_names"]):
        raise UserError(f"{where}: the header's class_names is not a list of strings")
    if c.shape[2] != codes.num_tokens:
        raise UserError(f"{where}: codes have {c.shape[2]} tokens, the header says {codes.num_tokens}")
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= codes.vocab_size):
        raise UserError(f"{where}: codes outside [0, {codes.vocab_size}) (vocab_size of the header)")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= codes.num_classes):
        raise UserError(f"{where}: labels outside [0, {codes.num_classes}) (class_names of the header)")


def check_codes_out(path: str | Path, overwrite: bool, what: str = "--out") -> Path:
    """``path`` if a codes file may be written there: it ends in ``.safetensors`` and is new, or ``overwrite`` and
    it is a daps codes file; else UserError naming ``what`` (the flag). Call it before any work, so that a refusal
    costs nothing and leaves nothing behind."""
    return check_output_file(path, ".safetensors", overwrite, what, lambda p: _header(p) is not None,
                             "a daps codes file")


def save_codes(codes: CodeSet, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``codes`` to ``path`` (a ``.safetensors`` file) atomically; an existing file is kept unless
    ``overwrite`` and it is a daps codes file."""
    path = check_codes_out(path, overwrite)
    check_codes(codes, "the codes to save")
    with atomic_path(path) as tmp:
        save_file(
            {"codes": codes.codes.long().contiguous(), "labels": codes.labels.long().contiguous()},
            str(tmp), metadata={HEADER_KEY: json.dumps(codes.meta)},
        )
    return path


def _header(path: Path) -> dict | None:
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get(HEADER_KEY)
    except (SafetensorError, OSError, ValueError):
        return None
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def load_codes(path: str | Path) -> CodeSet:
    """Read a codes file written by :func:`save_codes`; a missing, foreign or inconsistent file raises
    :class:`UserError` naming it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a codes file (daps export-codes RUN --out FILE.safetensors "
                        "writes one)")
    if not path.is_file():
        raise UserError(f"{path} is not a codes file (no such file)")
    meta = _header(path)
    if meta is None:
        raise UserError(f"{path} is not a daps codes file (no readable {HEADER_KEY!r} header)")
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: codes format {meta.get('format')!r}, this daps reads format {FORMAT}")
    with safe_open(str(path), "pt") as f:
        names = set(f.keys())
        if not {"codes", "labels"} <= names:
            raise UserError(f"{path} lacks the tensors 'codes' and 'labels' (has: {', '.join(sorted(names))})")
        tensors = {name: f.get_tensor(name) for name in ("codes", "labels")}
    check_codes(CodeSet(tensors["codes"], tensors["labels"], meta), str(path))  # integers, shapes, ranges
    return CodeSet(tensors["codes"].long(), tensors["labels"].long(), meta)
