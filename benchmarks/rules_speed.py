"""Time every priority rule on 1,000,000 tasks x 10 classes. Prints figures; not a test.

Run: .venv/bin/python benchmarks/rules_speed.py [--n 1000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from scoring.rules import BUILTIN_RULES


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--mc-samples", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    counts = np.eye(args.classes, dtype=np.int64)[rng.integers(0, args.classes, args.n)]
    counts[: args.n // 10] += np.eye(args.classes, dtype=np.int64)[rng.integers(0, args.classes, args.n // 10)]
    probs = rng.dirichlet(np.ones(args.classes) * 0.3, args.n)
    samples = rng.dirichlet(np.ones(args.classes) * 0.3, (args.mc_samples, args.n))
    print(f"{args.n:,} tasks x {args.classes} classes")
    for name, rule in BUILTIN_RULES.items():
        model_output = samples if rule.input == "samples" else probs
        started = time.perf_counter()
        rule(counts, model_output, seed=0)
        print(f"  {name:16s} {time.perf_counter() - started:7.2f} s" + (f"  ({args.mc_samples} MC samples)" if rule.input == "samples" else ""))


if __name__ == "__main__":
    main()
