"""Time the simulation: the baselines x 5 seeds on the 5,000-image CIFAR-10H subset. Prints figures.

Run: .venv/bin/python benchmarks/simulation_speed.py [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from scoring.data import load_cifar10h, temperature_scale
from scoring.ranking import Strategy
from scoring.selectors import make_selector
from scoring.simulation import simulate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--subset", type=int, default=5000)
    args = parser.parse_args()
    data = load_cifar10h(args.data_dir, args.subset, 2.0, seed=0)
    budget = data.budget_for(3)
    # a stand-in for a user's model: the truth blurred at T=3 (only the speed is measured here)
    blurred = temperature_scale(data.true_distribution, 3.0)
    strategies = {
        "random": lambda s: Strategy.build(make_selector("random")),
        "oracle": lambda s: Strategy.build(make_selector("oracle", true_distribution=data.true_distribution)),
        "posteriors": lambda s: Strategy.build(make_selector("posteriors", posteriors=blurred)),
        "posteriors:activelab": lambda s: Strategy.build(make_selector("posteriors", posteriors=blurred), "activelab"),
    }
    seeds = [1, 2, 3, 4, 5]
    print(f"N={data.n_tasks}, budget {budget}, {len(seeds)} seeds")
    total = 0.0
    for name, factory in strategies.items():
        started = time.perf_counter()
        result = simulate(data, {name: factory}, budget, seeds)[name]
        elapsed = time.perf_counter() - started
        total += elapsed
        reach = [s.reach(0.9) for s in result.seeds]
        print(f"  {name:22s} {elapsed:6.2f} s   nAUC {np.mean([s.nauc for s in result.seeds]):.3f}   reach 90%: {reach}")
    print(f"  all                    {total:6.2f} s")


if __name__ == "__main__":
    main()
