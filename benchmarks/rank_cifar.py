"""`alc rank` on 1,000 CIFAR-10 test images written as PNG files, with 15% of the labels flipped.

Measures what a user gets from the command line, from a cold embedding cache: how many of the first 100
rows of ranked.csv carry a flipped label, and the wall time of the command. The images and labels are
written to a temporary folder (never into the repository). Usage:

    ALC_DATA_DIR=/work/shared/data python benchmarks/rank_cifar.py [--noise 0.15] [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads the command may use")
    parser.add_argument("--selector", default=None, help="another selector than the command's default")
    args = parser.parse_args()
    data = np.load(Path(os.environ.get("ALC_DATA_DIR", "../shared/data")) / "cifar10h_test1000_lossless.npz")
    images, truth = data["images"], data["labels"].astype(int)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    rng = np.random.default_rng(args.seed)
    flipped = rng.random(len(truth)) < args.noise
    noisy = truth.copy()
    noisy[flipped] = (truth[flipped] + rng.integers(1, 10, flipped.sum())) % 10
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        with (tmp / "labels.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "label"])
            for i, (image, label) in enumerate(zip(images, noisy)):
                Image.fromarray(image).save(tmp / "images" / f"{i:04d}.png")
                writer.writerow([f"{i:04d}.png", names[label]])
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        command = [sys.executable, "-m", "backend.cli", "rank", str(tmp / "labels.csv"), "--images", str(tmp / "images"),
                   "--out", str(tmp / "ranked.csv"), "--report", str(tmp / "report.html"), "--cache-dir", str(tmp / "cold-cache"),
                   *(["--selector", args.selector] if args.selector else [])]
        started = time.perf_counter()
        subprocess.run(["taskset", "-c", ",".join(str(c) for c in range(args.threads)), *command], env=env, check=True)
        seconds = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime  # what the command itself used, whatever else ran on the machine
        with (tmp / "ranked.csv").open() as f:
            rows = list(csv.DictReader(f))
        top = [int(r["file"][:4]) for r in rows[:100]]
        k = int(flipped.sum())
        top_k = [int(r["file"][:4]) for r in rows[:k]]
        print(f"{len(rows)} rows; {flipped.sum()} labels flipped ({100 * args.noise:.0f}% noise, seed {args.seed})")
        print(f"flipped among the first 100 rows: {int(flipped[top].sum())}")
        print(f"flipped among the first {k} rows (k = number flipped): {int(flipped[top_k].sum())} "
              f"({100 * flipped[top_k].mean():.1f}%)")
        print(f"wall time, cold cache, {args.threads} CPU threads: {seconds:.1f} s; CPU time of the command {cpu:.1f} s "
              f"(on {args.threads} cores of its own the wall time would be about {cpu / args.threads:.0f} s or more); "
              f"load average at the end {os.getloadavg()[0]:.1f}; report {(tmp / 'report.html').stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
