"""Times a pretrained selector on CIFAR-10H images with a cold embedding cache: first fit, refit, update.

Usage: .venv/bin/python benchmarks/pretrained_fit_speed.py [N_IMAGES] [THREADS] [SELECTOR] [OPTIONS_JSON]
       (defaults 1000, 2, pretrained-linear, {}); e.g. 5000 2 ensemble '{"members": "cpu"}'
Each member's cold fit minus its fit on the cached embeddings is its embedding time, from which the
embedding throughput (images per second on THREADS threads) follows. The README's wall times come from here.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch

from scoring.data import load_cifar10h
from scoring.selectors import make_selector


def _members(selector) -> list:
    return list(getattr(selector, "selectors_", [selector]))


def main(n_images: int = 1000, threads: int = 2, name: str = "pretrained-linear", options: str = "{}") -> None:
    torch.set_num_threads(threads)
    data = load_cifar10h(None, max(5000, n_images), 2.0, 0, with_images=True)  # 10,000: the whole test set
    images, counts = data.images[:n_images], data.initial_counts[:n_images]
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as cache:
        selector = make_selector(name, json.loads(options), seed=1, cache_dir=cache, n_classes=10)
        start = time.perf_counter()
        selector.fit(images, counts)
        cold = time.perf_counter() - start
        cold_members = [m.fit_seconds_ for m in _members(selector)]
        start = time.perf_counter()
        selector.fit(images, counts)
        warm = time.perf_counter() - start
        warm_members = [m.fit_seconds_ for m in _members(selector)]
        more = counts.copy()
        more[:20, 0] += 1
        start = time.perf_counter()
        selector.update(images, more)
        update = time.perf_counter() - start
    print(f"{name} {options}: {n_images} images, {threads} threads: cold fit (embedding + heads) {cold:.1f} s, "
          f"fit on cached embeddings {warm:.1f} s, update {update:.1f} s")
    for m, c, w in zip(_members(selector), cold_members, warm_members):
        key = m.encoder_.key if getattr(m, "encoder_", None) is not None else type(m).__name__
        print(f"  {key}: cold fit {c:.1f} s, heads {w:.1f} s, embedding ~{c - w:.1f} s = {n_images / max(c - w, 1e-9):.1f} images/s")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]), *sys.argv[3:5])
