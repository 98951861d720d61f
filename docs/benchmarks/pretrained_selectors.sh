#!/bin/bash
# Reproduces docs/benchmarks/pretrained_selectors_t{2,10}.{md,png,json}: run from the repository root.
# CPU settings (2 shared cores). Each selector runs as its own `alc simulate` so that the table can give its
# wall time; the embeddings are cached per image in .alc/cache, so the first run of an encoder pays for them
# and the rule variants and T = 10 reuse them (the cold embedding times are printed by the first runs).
set -e
ALC="nice -n 10 .venv/bin/alc simulate --dataset cifar10h --subset 5000 --budget-factor 3 --seeds ${SEEDS:-1,2,3,4,5} --refit-every ${REFIT:-200}"
OUT=runs/bench-pretrained
ENSEMBLE='{"ensemble": {"members": "cpu"}}'
SSL='{"ssl-linear": {"byol_epochs": 12}}'
for T in ${TEMPERATURES:-2 10}; do
  $ALC --temperature "$T" --selectors random,oracle --out "$OUT/t$T-bounds"
  $ALC --temperature "$T" --selectors linear --out "$OUT/t$T-linear"
  $ALC --temperature "$T" --selectors pretrained-linear --out "$OUT/t$T-pretrained-linear"
  $ALC --temperature "$T" --selectors pretrained-linear:self-confidence,pretrained-linear:activelab --out "$OUT/t$T-pretrained-linear-rules"
  $ALC --temperature "$T" --selectors ensemble --selector-options "$ENSEMBLE" --out "$OUT/t$T-ensemble"
  $ALC --temperature "$T" --selectors ensemble:self-confidence,ensemble:activelab --selector-options "$ENSEMBLE" --out "$OUT/t$T-ensemble-rules"
  [ -z "$SKIP_SSL" ] && $ALC --temperature "$T" --selectors ssl-linear --selector-options "$SSL" --out "$OUT/t$T-ssl-linear"
  .venv/bin/python docs/benchmarks/combine_runs.py "docs/benchmarks/pretrained_selectors_t$T" "$OUT"/t"$T"-*
done
