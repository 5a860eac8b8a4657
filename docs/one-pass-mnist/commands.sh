#!/usr/bin/env bash
# Reproduces every run of this comparison; then re-run the compare command.
set -e
# its paths are relative to the folder the comparison ran in
cd /work/main
# daps compare --preset mnist --methods daps --steps 500 --seeds 2 --out runs/one-pass-mnist --threads 1 --vary daps.one_pass=false,true daps.init_eta=1.0 optim.lr=1e-3 train.progress=false
daps train --preset mnist --method daps --threads 1 --resume train.steps=500 train.seed=0 train.out_dir=runs/one-pass-mnist/daps/one_pass=false/seed0 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.one_pass=false
daps train --preset mnist --method daps --threads 1 --resume train.steps=500 train.seed=1 train.out_dir=runs/one-pass-mnist/daps/one_pass=false/seed1 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.one_pass=false
daps train --preset mnist --method daps --threads 1 --resume train.steps=500 train.seed=0 train.out_dir=runs/one-pass-mnist/daps/one_pass=true/seed0 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.one_pass=true
daps train --preset mnist --method daps --threads 1 --resume train.steps=500 train.seed=1 train.out_dir=runs/one-pass-mnist/daps/one_pass=true/seed1 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.one_pass=true
