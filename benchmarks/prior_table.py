"""Generation from codes, side by side: tokenizers (DAPS, VQ-VAE, FSQ) trained at equal steps, the same priors
(``ar``, ``dfm``) trained on each one's codes at equal steps, scored by the dataset's classifier.

    DAPS_DATA_DIR=../shared/data python benchmarks/prior_table.py [--preset mnist] [--methods daps,vqvae,fsq]
        [--tokenizer-steps 2000] [--prior-steps 3000] [--kinds ar,dfm] [--guidance 1,3] [--n 1000]
        [--work runs/prior-table] [--out docs/priors-mnist] [--threads 1] [key=value ...]

For each method: ``daps train`` (its preset, the overrides, ``--tokenizer-steps``; a finished run in ``--work`` is
reused, an interrupted one resumed), ``export-codes`` of the train and test splits (one code per input, so every
prior sees the same number of codes), then per prior kind ``daps prior train`` on the train codes with the test
codes held out (``--prior-steps``), and for each guidance scale n samples, classes in turn, scored as
``daps prior eval`` scores them (:mod:`daps.prior.scores`): classifier accuracy against the requested label, the
classifier-feature Frechet distance to the test split, uniqueness and copies of training codes; plus each
tokenizer's reference points at the same n (real training examples, reconstructions, decoded random codes) and
the ar priors' held-out bits per token. Needs the classifier (``scripts/train_classifier.py``).

Writes ``OUT/table.md`` and ``OUT/results.json`` (every number, the commands, machine, torch version, commit) and
sample grids ``OUT/<method>-<kind>-cfg<g>.png`` and ``OUT/<method>-random.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from run import cpu_name, git_revision  # this script's folder is on sys.path

from daps import get_preset, parse_overrides
from daps.checkpoint import load_model
from daps.codes import export_codes, load_codes, save_codes
from daps.metrics.classifier import classifier_for
from daps.plots import save_image_grid
from daps.prior.run import PriorConfig, generate, load_prior, train_prior
from daps.prior.scores import Judge, decoded_images, score_prior, uniform_codes
from daps.runfolder import write_json_atomic, write_text_atomic
from daps.train import train


def tokenizer(method: str, args, overrides: list[str]) -> Path:
    run = Path(args.work) / f"tok-{method}"
    summary = run / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("step") == args.tokenizer_steps:
        return run
    extra = [o for o in overrides if not o.startswith("daps.") or method in ("daps", "dapsna")]
    cfg = parse_overrides(get_preset(args.preset, method), [*extra, f"train.steps={args.tokenizer_steps}",
                                                             f"train.out_dir={run}", "train.progress=false"])
    return train(cfg, resume=run.exists())


def codes_of(run: Path, method: str, split: str, work: Path) -> Path:
    path = work / f"codes-{method}-{split}.safetensors"
    if not path.exists():
        save_codes(export_codes(run, split, samples_per_input=1), path)
    return path


def prior(method: str, kind: str, train_codes: Path, test_codes: Path, args) -> Path:
    out = Path(args.work) / f"prior-{method}-{kind}"
    cfg = PriorConfig(kind=kind, codes=str(train_codes), val_codes=str(test_codes), steps=args.prior_steps,
                      eval_every=args.prior_steps, ckpt_every=1000, progress=False, out_dir=str(out))
    summary = out / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("step") == args.prior_steps:
        return out
    return train_prior(cfg, resume=out.exists())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mnist")
    p.add_argument("--methods", default="daps,vqvae,fsq")
    p.add_argument("--kinds", default="ar,dfm")
    p.add_argument("--tokenizer-steps", type=int, default=2000)
    p.add_argument("--prior-steps", type=int, default=3000)
    p.add_argument("--guidance", default="1,3")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--work", default="runs/prior-table")
    p.add_argument("--out", default="docs/priors-mnist", help="where the results go (default: %(default)s, committed)")
    p.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("overrides", nargs="*", help="tokenizer overrides, e.g. optim.lr=1e-3 daps.init_eta=1.0")
    args = p.parse_args()
    if (Path(args.out) / "results.json").exists() and not args.overwrite:  # before hours of training
        print(f"prior_table.py: error: {Path(args.out) / 'results.json'} exists; pass --overwrite to replace it "
              "or another --out", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", *sys.argv])
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    guidance = [float(g) for g in args.guidance.split(",")]
    results: dict = {"command": command, "code": git_revision(), "machine": cpu_name(), "torch": torch.__version__,
                     "threads": args.threads, "python": platform.python_version(), "rows": [], "references": {}}
    start = time.time()
    for method in args.methods.split(","):
        t0 = time.time()
        run = tokenizer(method, args, args.overrides)
        model = load_model(run)
        classifier = classifier_for(model.config.data.name)
        if classifier is None:
            raise SystemExit("prior_table.py: error: no classifier; run scripts/train_classifier.py first")
        judge = Judge(model, classifier)
        refs = judge.references(args.n)
        tok_summary = json.loads((run / "summary.json").read_text())
        results["references"][method] = {**refs, "tokenizer_log_p": tok_summary.get("log_p"),
                                         "tokenizer_wall_s": round(time.time() - t0, 1)}
        random_codes = uniform_codes(model, 100, torch.Generator().manual_seed(0))
        save_image_grid(decoded_images(model, random_codes), out / f"{method}-random.png")
        train_codes, test_codes = codes_of(run, method, "train", work), codes_of(run, method, "test", work)
        train_flat = load_codes(train_codes).flat()[0]
        for kind in args.kinds.split(","):
            t1 = time.time()
            prior_run = prior(method, kind, train_codes, test_codes, args)
            net, cfg, _ = load_prior(prior_run)
            # the run's summary: its last validation on the held-out (test) codes and its sampling speed
            summary = json.loads((prior_run / "summary.json").read_text())
            row_base = {"method": method, "kind": kind, "prior_train_s": round(time.time() - t1, 1),
                        **{k: v for k, v in summary.items() if k not in ("step", "kind", "split")}}
            for w in guidance:
                scores = score_prior(net, cfg.euler_steps, train_flat, args.n, w, 0, judge)
                results["rows"].append({**row_base, "guidance": w, **scores})
                labels = torch.arange(100, device="cpu") % net.num_classes  # the prior was loaded on the CPU
                codes = generate(net, labels, w, 1.0, torch.Generator().manual_seed(1), cfg.euler_steps)
                save_image_grid(decoded_images(model, codes), out / f"{method}-{kind}-cfg{w:g}.png", columns=10)
            print(f"{method} {kind}: done ({time.time() - start:.0f} s so far)", flush=True)
    results["wall_s"] = round(time.time() - start, 1)
    results["protocol"] = judge.protocol(args.n)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "table.md", table(results, args))
    print(table(results, args))
    return 0


def table(results: dict, args) -> str:
    lines = [
        f"Tokenizers: {args.tokenizer_steps} steps each ({args.preset} preset, overrides: "
        f"{' '.join(args.overrides) or 'none'}); priors: {args.prior_steps} steps each on one code per training input; "
        f"n = {args.n} samples per row, classes in turn.", "",
        "| tokenizer | prior | guidance | accuracy | classifier FD | unique | copied | held-out bits/token "
        "| samples/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        bits = f"{r['bits_per_token']:.3f}" if "bits_per_token" in r else "-"
        lines.append(
            f"| {r['method']} | {r['kind']} | {r['guidance']:g} | {r['accuracy']:.3f} | {r['frechet']:.2f} | "
            f"{r['unique_fraction']:.3f} | {r['copied_fraction']:.3f} | {bits} | {r['samples_per_s']:.0f} |"
        )
    lines += ["", "Reference points at the same n (per tokenizer):", "",
              "| tokenizer | val log p(x\\|z) | real training examples FD | reconstructions FD "
              "| reconstruction accuracy | random codes FD | random codes top class |", "|---|---|---|---|---|---|---|"]
    for method, r in results["references"].items():
        log_p = f"{r['tokenizer_log_p']:.2f}" if r.get("tokenizer_log_p") is not None else "-"
        lines.append(f"| {method} | {log_p} | {r['real_frechet']:.2f} | {r['recon_frechet']:.2f} | "
                     f"{r['recon_accuracy']:.3f} | {r['random_frechet']:.2f} | {r['random_top_class']:.2f} |")
    lines += ["", f"Protocol: {results['protocol']}.", f"Command: `{results['command']}`",
              f"Machine: {results['machine']}, {results['threads']} torch thread(s), torch {results['torch']}; code "
              f"{results['code']}; {results['wall_s']:.0f} s in all."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
