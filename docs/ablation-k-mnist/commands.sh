#!/usr/bin/env bash
# Reproduces every run of this comparison; then re-run the compare command.
set -e
# daps compare --preset mnist --methods daps --steps 500 --seeds 2 --out runs/ablation-k-mnist --threads 1 --vary daps.num_samples=2,4,8,16 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false
daps train --preset mnist --method daps train.steps=500 train.seed=0 train.out_dir=runs/ablation-k-mnist/daps/num_samples=2/seed0 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.num_samples=2
daps train --preset mnist --method daps train.steps=500 train.seed=1 train.out_dir=runs/ablation-k-mnist/daps/num_samples=2/seed1 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.num_samples=2
daps train --preset mnist --method daps train.steps=500 train.seed=0 train.out_dir=runs/ablation-k-mnist/daps/num_samples=4/seed0 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.num_samples=4
daps train --preset mnist --method daps train.steps=500 train.seed=1 train.out_dir=runs/ablation-k-mnist/daps/num_samples=4/seed1 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.num_samples=4
daps train --preset mnist --method daps train.steps=500 train.seed=0 train.out_dir=runs/ablation-k-mnist/daps/num_samples=8/seed0 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.num_samples=8
daps train --preset mnist --method daps train.steps=500 train.seed=1 train.out_dir=runs/ablation-k-mnist/daps/num_samples=8/seed1 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.num_samples=8
daps train --preset mnist --method daps train.steps=500 train.seed=0 train.out_dir=runs/ablation-k-mnist/daps/num_samples=16/seed0 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.num_samples=16
daps train --preset mnist --method daps train.steps=500 train.seed=1 train.out_dir=runs/ablation-k-mnist/daps/num_samples=16/seed1 train.eval_every=50 train.ckpt_every=125 train.log_every=10 daps.init_eta=1.0 optim.lr=1e-3 train.progress=false daps.num_samples=16
