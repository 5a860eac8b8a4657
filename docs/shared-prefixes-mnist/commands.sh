#!/usr/bin/env bash
# Reproduces every run of this comparison; then re-run the compare command.
set -e
# its paths are relative to the folder the comparison ran in
cd /work/main
# daps compare --preset mnist --methods daps --steps 500 --seeds 2 --out runs/shared-prefixes-mnist --threads 1 --vary encoder.share_prefixes=off,cpu daps.init_eta=1.0 optim.lr=1e-3 train.progress=false
daps train --preset mnist --method daps --threads 1 --resume train.steps=500 train.seed=0 train.out_dir=runs/shared-prefixes-mnist/daps/encoder.share_prefixes=off/seed0 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false encoder.share_prefixes=off
daps train --preset mnist --method daps --threads 1 --resume train.steps=500 train.seed=1 train.out_dir=runs/shared-prefixes-mnist/daps/encoder.share_prefixes=off/seed1 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false encoder.share_prefixes=off
daps train --preset mnist --method daps --threads 1 --resume train.steps=500 train.seed=0 train.out_dir=runs/shared-prefixes-mnist/daps/encoder.share_prefixes=cpu/seed0 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false encoder.share_prefixes=cpu
daps train --preset mnist --method daps --threads 1 --resume train.steps=500 train.seed=1 train.out_dir=runs/shared-prefixes-mnist/daps/encoder.share_prefixes=cpu/seed1 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false encoder.share_prefixes=cpu
