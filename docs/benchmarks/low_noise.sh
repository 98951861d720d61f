#!/bin/bash
# Reproduces docs/benchmarks/low_noise_{10000,5000}.{json,png}: CIFAR-10H at T = 1 (initial labels drawn from the
# human label distribution itself), on all 10,000 images and on the 5,000 subset, budget factor 3. Run from the
# repository root. Bounds (random, oracle, truth = the true distributions as posteriors), pretrained-linear (one
# encoder, Lite0 224 px) and the default selector, ensemble (its small preset: Lite0 and Lite2 at 128 px with mirror
# images; four embedding passes, minutes on a cold cache); WITH_FINETUNE=1 adds the finetune selector (its
# last-block activations are cached per image like embeddings; the first run pays for them).
# Embeddings are cached in .alc/cache. SEEDS (default 1,2,3,4,5), SUBSETS (default "10000 5000") and NICE override.
set -e
SELECTORS="random,oracle,truth,pretrained-linear,ensemble"
[ -n "$WITH_FINETUNE" ] && SELECTORS="$SELECTORS,finetune"
for N in ${SUBSETS:-10000 5000}; do
  nice -n "${NICE:-10}" .venv/bin/alc simulate --dataset cifar10h --subset "$N" --temperature 1 --budget-factor 3 \
    --seeds "${SEEDS:-1,2,3,4,5}" --selectors "$SELECTORS" --out "runs/bench-low-noise/t1-$N"
  cp "runs/bench-low-noise/t1-$N/summary.json" "docs/benchmarks/low_noise_$N.json"
  cp "runs/bench-low-noise/t1-$N/curves.png" "docs/benchmarks/low_noise_$N.png"
done
