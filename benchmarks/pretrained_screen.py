"""Screens pretrained-linear settings fast: 5-seed simulation of out-of-fold posteriors, embeddings cached.

Usage: .venv/bin/python benchmarks/pretrained_screen.py T VARIANTS_JSON [ENSEMBLES]
e.g.   .venv/bin/python benchmarks/pretrained_screen.py 2 \\
           '{"l0": {}, "l0-128": {"image_size": 128}, "l2": {"encoder": "efficientnet-lite2", "stage_features": false}}' \\
           l0+l0-128,l0+l0-128+l2
Each variant is fitted once per seed (that seed's fold splits, as `alc simulate` does) and its posteriors
drive that seed's simulation (no refits); an ensemble averages its variants' posteriors. Prints out-of-fold
accuracy against the true labels, re-annotations to 90% (per seed) and nAUC, for the default rule and
self-confidence. Cheaper than `alc simulate` (the variants share the embedding lookups), the same figures.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from scoring.data import load_cifar10h
from scoring.ranking import Strategy
from scoring.selectors import make_selector
from scoring.selectors.baselines import PosteriorsSelector
from scoring.simulation import simulate_seed

SEEDS = (1, 2, 3, 4, 5)
BUDGET_FACTOR = 3


def main(temperature: float, variants: dict[str, dict], ensembles: list[list[str]]) -> None:
    data = load_cifar10h(None, 5000, temperature, 0, with_images=True)
    budget = data.budget_for(BUDGET_FACTOR)
    posteriors: dict[str, dict[int, np.ndarray]] = {}
    for name, options in variants.items():
        posteriors[name] = {}
        for seed in SEEDS:
            selector = make_selector("pretrained-linear", options, seed=seed, cache_dir=".alc/cache", n_classes=10)
            posteriors[name][seed] = selector.fit_predict_oof(data.images, data.initial_counts)
        show(name, posteriors[name], data, budget)
    for members in ensembles:
        show("+".join(members), {s: np.mean([posteriors[m][s] for m in members], axis=0) for s in SEEDS}, data, budget)


def show(name: str, probs: dict[int, np.ndarray], data, budget: int) -> None:
    accuracy = np.mean([np.mean(p.argmax(axis=1) == data.true_labels) for p in probs.values()])
    for rule in (None, "self-confidence"):
        runs = [simulate_seed(data, Strategy.build(PosteriorsSelector(probs[s]), rule), budget, s) for s in SEEDS]
        reach = [r.reach(0.90) for r in runs]
        print(f"{name:30s} {rule or 'default rule':16s} accuracy {accuracy:.3f}  to 90%: {reach} "
              f"mean {np.mean([budget if x is None else x for x in reach]):.1f}  nAUC {np.mean([r.nauc for r in runs]):.4f}",
              flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]), json.loads(sys.argv[2]),
         [e.split("+") for e in sys.argv[3].split(",")] if len(sys.argv) > 3 else [])
