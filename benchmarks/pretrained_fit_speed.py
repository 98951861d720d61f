"""Times pretrained-linear on CIFAR-10H images with a cold embedding cache: first fit, refit, update.

Usage: .venv/bin/python benchmarks/pretrained_fit_speed.py [N_IMAGES] [THREADS]   (defaults 1000, 2)
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch

from scoring.data import load_cifar10h
from scoring.selectors import make_selector


def main(n_images: int = 1000, threads: int = 2) -> None:
    torch.set_num_threads(threads)
    data = load_cifar10h(None, 5000, 2.0, 0, with_images=True)
    images, counts = data.images[:n_images], data.initial_counts[:n_images]
    with tempfile.TemporaryDirectory() as cache:
        selector = make_selector("pretrained-linear", {}, seed=1, cache_dir=cache, n_classes=10)
        start = time.perf_counter()
        selector.fit(images, counts)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        selector.fit(images, counts)
        warm = time.perf_counter() - start
        more = counts.copy()
        more[:20, 0] += 1
        start = time.perf_counter()
        selector.update(images, more)
        update = time.perf_counter() - start
    print(f"{n_images} images, {threads} threads: cold fit (embedding + heads) {cold:.1f} s, "
          f"fit on cached embeddings {warm:.1f} s, update {update:.1f} s")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
