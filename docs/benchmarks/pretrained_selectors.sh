#!/bin/bash
# Reproduces docs/benchmarks/pretrained_selectors_t{2,10}.{md,png,json}: run from the repository root.
# CPU settings (2 shared cores). Each selector runs as its own `alc simulate`, so each run's wall time is the
# selector's; its rule variants share its fit (alc simulate fits a selector once per seed for all its rules).
# Embeddings are cached per image in .alc/cache: the first run of an encoder pays for them (delete
# .alc/cache/embeddings for a cold run), the other seeds, the rule variants and T = 10 reuse them.
# `ensemble` here is the cpu preset (Lite0 224 + Lite2 192; the selector's default preset is small, measured in
# low-noise.md), `ensemble[large]` the large one (Lite0 224 + 128, Lite2 260).
# ssl-linear's row is kept from an earlier run of its own (WITH_SSL=1 or by hand) when its folder exists.
# SEEDS, TEMPERATURES, REFIT (refit every k re-annotations; 0 = never) and WITH_SSL=1 (BYOL: minutes) override.
set -e
ALC="nice -n ${NICE:-10} .venv/bin/alc simulate --dataset cifar10h --subset 5000 --budget-factor 3 --seeds ${SEEDS:-1,2,3,4,5} --refit-every ${REFIT:-0}"
OUT=runs/bench-pretrained
for T in ${TEMPERATURES:-2 10}; do
  $ALC --temperature "$T" --selectors random,oracle --out "$OUT/t$T-bounds"
  $ALC --temperature "$T" --selectors linear --out "$OUT/t$T-linear"
  $ALC --temperature "$T" --selectors pretrained-linear,pretrained-linear:self-confidence,pretrained-linear:activelab \
    --out "$OUT/t$T-pretrained-linear"
  $ALC --temperature "$T" --selectors ensemble,ensemble:self-confidence,ensemble:activelab \
    --selector-options '{"ensemble": {"members": "cpu"}}' --out "$OUT/t$T-ensemble"
  $ALC --temperature "$T" --selectors ensemble,ensemble:self-confidence,ensemble:activelab \
    --selector-options '{"ensemble": {"members": "large"}}' --out "$OUT/t$T-ensemble-large"
  if [ -n "$WITH_SSL" ]; then
    $ALC --temperature "$T" --selectors ssl-linear --selector-options '{"ssl-linear": {"byol_epochs": 12}}' --out "$OUT/t$T-ssl-linear"
  fi
  runs=""
  for r in bounds linear ssl-linear pretrained-linear ensemble; do [ -d "$OUT/t$T-$r" ] && runs="$runs $OUT/t$T-$r"; done
  .venv/bin/python docs/benchmarks/combine_runs.py "docs/benchmarks/pretrained_selectors_t$T" $runs "$OUT/t$T-ensemble-large=ensemble[large]"
done
