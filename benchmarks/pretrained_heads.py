"""Compares pretrained-linear head settings by out-of-fold posterior accuracy on CIFAR-10H (no simulation).

Usage: .venv/bin/python benchmarks/pretrained_heads.py T BASE_OPTIONS_JSON VARIANTS_JSON
e.g.   .venv/bin/python benchmarks/pretrained_heads.py 2 '{"encoder": "efficientnet-lite0"}' \
           '{"wd0.1": {"head_weight_decay": 0.1}, "wd0.1+drop": {"head_weight_decay": 0.1, "drop_suspect": 0.1}}'
Embeddings come from (and go to) the per-image cache in .alc/cache, so only the first variant of an
encoder pays for them. The README's "Measured choices" were taken with this script.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from scoring.data import load_cifar10h
from scoring.selectors import make_selector


def main(temperature: float, base: dict, variants: dict) -> None:
    data = load_cifar10h(None, 5000, temperature, 0, with_images=True)
    for name, options in variants.items():
        start = time.perf_counter()
        selector = make_selector("pretrained-linear", {**base, **options}, seed=1, cache_dir=".alc/cache", n_classes=10)
        probs = selector.fit_predict_oof(data.images, data.initial_counts)
        accuracy = np.mean(probs.argmax(axis=1) == data.true_labels)
        print(f"{name:24s} T={temperature:g} out-of-fold accuracy {accuracy:.3f}  fit {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]))
