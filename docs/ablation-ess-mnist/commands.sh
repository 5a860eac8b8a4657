#!/usr/bin/env bash
# Reproduces every run of this comparison; then re-run the compare command.
set -e
# daps compare --preset mnist --methods daps --steps 500 --seeds 2 --out runs/ablation-ess-mnist --threads 1 --vary daps.ess_target=0.25,0.5,0.75 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false
daps train --preset mnist --method daps train.steps=500 train.seed=0 train.out_dir=runs/ablation-ess-mnist/daps/ess_target=0.25/seed0 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.ess_target=0.25
daps train --preset mnist --method daps train.steps=500 train.seed=1 train.out_dir=runs/ablation-ess-mnist/daps/ess_target=0.25/seed1 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.ess_target=0.25
daps train --preset mnist --method daps train.steps=500 train.seed=0 train.out_dir=runs/ablation-ess-mnist/daps/ess_target=0.5/seed0 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.ess_target=0.5
daps train --preset mnist --method daps train.steps=500 train.seed=1 train.out_dir=runs/ablation-ess-mnist/daps/ess_target=0.5/seed1 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.ess_target=0.5
daps train --preset mnist --method daps train.steps=500 train.seed=0 train.out_dir=runs/ablation-ess-mnist/daps/ess_target=0.75/seed0 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.ess_target=0.75
daps train --preset mnist --method daps train.steps=500 train.seed=1 train.out_dir=runs/ablation-ess-mnist/daps/ess_target=0.75/seed1 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.ess_target=0.75
