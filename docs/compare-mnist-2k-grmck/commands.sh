#!/usr/bin/env bash
# Reproduces every run of this comparison; then re-run the compare command.
set -e
# daps compare --preset mnist --methods grmck --steps 2000 --seeds 2 --out runs/compare-mnist-2k-grmck --threads 1 daps.init_eta=1.0 optim.lr=1e-3 train.eval_examples=1000 train.progress=false
daps train --preset mnist --method grmck --threads 1 --resume train.steps=2000 train.seed=0 train.out_dir=runs/compare-mnist-2k-grmck/grmck/seed0 train.eval_every=200 train.ckpt_every=500 train.log_every=40 optim.lr=1e-3 train.eval_examples=1000 train.progress=false
daps train --preset mnist --method grmck --threads 1 --resume train.steps=2000 train.seed=1 train.out_dir=runs/compare-mnist-2k-grmck/grmck/seed1 train.eval_every=200 train.ckpt_every=500 train.log_every=40 optim.lr=1e-3 train.eval_examples=1000 train.progress=false
