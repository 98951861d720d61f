#!/bin/bash
# Reproduces docs/benchmarks/estimate.json and prints the table of docs/benchmarks/estimate.md: the audit-based accuracy estimate against the simulation's
# true accuracy. Run from the repository root. CPU settings (2 shared cores). Each seed is its own
# `alc simulate` (so a finished seed is kept if a later one is stopped); the three settings of a seed run
# side by side. `alc simulate --audit-share` also runs every seed without the audit (the corrections it
# costs). Embeddings are cached per image in .alc/cache (the first run pays for them).
# SEEDS (space-separated), SHARE (audit share), REFIT (refit every k re-annotations; 0 = never) override.
set -e
ALC="nice -n ${NICE:-10} .venv/bin/alc simulate --dataset cifar10h --selectors pretrained-linear --refit-every ${REFIT:-0} --audit-share ${SHARE:-0.05} --budget-factor 3"
OUT=runs/bench-estimate
mkdir -p "$OUT"
for SEED in ${SEEDS:-1 2 3 4 5}; do
  $ALC --seeds "$SEED" --subset 5000 --temperature 2 --out "$OUT/t2-5000/seed$SEED" > "$OUT/t2-5000-seed$SEED.log" 2>&1 &
  $ALC --seeds "$SEED" --subset 5000 --temperature 10 --out "$OUT/t10-5000/seed$SEED" > "$OUT/t10-5000-seed$SEED.log" 2>&1 &
  $ALC --seeds "$SEED" --subset 10000 --temperature 1 --out "$OUT/t1-10000/seed$SEED" > "$OUT/t1-10000-seed$SEED.log" 2>&1 &
  wait
done
.venv/bin/python docs/benchmarks/estimate_table.py docs/benchmarks/estimate \
  "$OUT/t2-5000=CIFAR-10H 5,000, T=2" "$OUT/t10-5000=CIFAR-10H 5,000, T=10" "$OUT/t1-10000=CIFAR-10H 10,000, T=1"
