#!/bin/bash
# Reproduces docs/benchmarks/learned_selectors.{md,png,json}: run from the repository root.
# CPU settings (2 shared cores). BYOL pre-trains once on all 10,000 CIFAR-10 test images (labels unused)
# and is cached in .alc/cache, so every seed reuses it; the CNN selectors ran 1 seed for lack of CPU time.
set -e
mkdir -p runs/bench
[ -f runs/bench/cifar10_test_10k.npy ] || .venv/bin/python -c "
import numpy as np; from scoring.data import load_cifar10_test_images, resolve_data_dir
np.save('runs/bench/cifar10_test_10k.npy', load_cifar10_test_images(resolve_data_dir(None), np.arange(10000)))"
SSL='"ssl-linear": {"pretrain_images": "runs/bench/cifar10_test_10k.npy", "byol_epochs": 12}'
CNN='"epochs": 8, "update_epochs": 2'
.venv/bin/alc simulate --selectors random,oracle,ssl-linear,ssl-linear:activelab,ssl-linear:self-confidence \
  --seeds 1,2,3,4,5 --refit-every 100 --out runs/bench/main --selector-options "{$SSL}"
.venv/bin/alc simulate --selectors vanilla,bald,coteaching --seeds 1 --refit-every 750 --out runs/bench/cnn \
  --selector-options "{\"vanilla\": {$CNN}, \"coteaching\": {$CNN}, \"bald\": {$CNN}}"
.venv/bin/python docs/benchmarks/combine_runs.py docs/benchmarks/learned_selectors runs/bench/main runs/bench/cnn
