"""Screens selectors at a low noise level: out-of-fold posterior accuracy and the simulation, per seed.

Usage: .venv/bin/python docs/benchmarks/low_noise.py SUBSET T SEEDS VARIANTS_JSON [ENSEMBLES] [--out=FILE.json]
e.g.   .venv/bin/python docs/benchmarks/low_noise.py 10000 1 1,2,3 \\
           '{"pl": ["pretrained-linear", {}], "ft": ["finetune", {"train_blocks": 0}]}' pl+ft
A variant ["saved", {"path": "run.npz", "name": "x"}] reads the posteriors an earlier run saved beside its --out file.
Each variant is fitted once per seed (that seed's fold splits, as `alc simulate` does) on the noisy initial labels
and its posteriors drive that seed's simulation (budget factor 3, no refits, the selector's default rule); an
ensemble averages its variants' posteriors. Prints, per variant and seed: out-of-fold accuracy against the true
labels, the share of the initial wrong labels corrected at 25/50/100% of the budget, the precision of the picks,
re-annotations to 90% correct (0 where the labels start above it, as at T = 1), re-annotations until the initial
wrong labels are halved ("never" within the budget) and nAUC; and the fit time. Embeddings and activations come from the shared cache.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from scoring.data import load_cifar10h
from scoring.ranking import Strategy
from scoring.selectors import make_selector
from scoring.selectors.baselines import PosteriorsSelector
from scoring.simulation import simulate_seed

BUDGET_FACTOR = 3


def main(subset: int, temperature: float, seeds: list[int], variants: dict[str, list], ensembles: list[list[str]],
         out: str | None) -> None:
    data = load_cifar10h(None, subset, temperature, 0, with_images=True)
    budget = data.budget_for(BUDGET_FACTOR)
    print(f"CIFAR-10H N={data.n_tasks} T={temperature}: initial noise {100 * data.initial_noise_rate:.2f}%, "
          f"budget {budget}", flush=True)
    posteriors: dict[str, dict[int, np.ndarray]] = {}
    figures: dict[str, dict] = {}
    for name, (selector, options) in variants.items():
        posteriors[name], seconds = {}, []
        for seed in seeds:
            started = time.perf_counter()
            if selector == "saved":  # posteriors an earlier run saved (--out), to average with new variants
                with np.load(options["path"]) as saved:
                    posteriors[name][seed] = saved[f"{options.get('name', name)}-{seed}"]
            else:
                model = make_selector(selector, options, seed=seed, cache_dir=".alc/cache", n_classes=data.n_classes,
                                      true_distribution=data.true_distribution)
                posteriors[name][seed] = model.fit(data.images, data.initial_counts).oof_proba(data.images)
            seconds.append(time.perf_counter() - started)
        figures[name] = show(name, posteriors[name], data, budget) | {"fit_seconds": seconds}
    for members in ensembles:
        name = "+".join(members)
        figures[name] = show(name, {s: np.mean([posteriors[m][s] for m in members], axis=0) for s in seeds}, data, budget)
    if out:
        with open(out, "w") as f:
            json.dump({"subset": subset, "temperature": temperature, "budget": budget,
                       "initial_noise_rate": data.initial_noise_rate, "seeds": seeds, "variants": variants,
                       "figures": figures}, f, indent=1)
        np.savez_compressed(out.removesuffix(".json") + ".npz",
                            **{f"{name}-{seed}": p for name, by_seed in posteriors.items() for seed, p in by_seed.items()})


def show(name: str, probs: dict[int, np.ndarray], data, budget: int) -> dict:
    row: dict[str, list] = {k: [] for k in ("accuracy", "fixed_25", "fixed_50", "fixed_100", "precision", "reach_90", "halved", "nauc")}
    for seed, p in probs.items():
        run = simulate_seed(data, Strategy.build(PosteriorsSelector(p)), budget, seed)
        for key, value in (("accuracy", float(np.mean(p.argmax(axis=1) == data.true_labels))),
                           ("fixed_25", run.corrected_share(0.25)), ("fixed_50", run.corrected_share(0.5)),
                           ("fixed_100", run.corrected_share(1.0)), ("precision", run.precision),
                           ("reach_90", run.reach(0.90)), ("halved", run.reach_errors_removed(0.5)), ("nauc", run.nauc)):
            row[key].append(value)
    fmt = {k: ", ".join("never" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in vs)
           for k, vs in row.items()}
    mean = {k: np.mean([v for v in vs if v is not None]) if any(v is not None for v in vs) else None for k, vs in row.items()}
    print(f"{name:28s} acc {mean['accuracy']:.4f} fixed@25/50/100% {mean['fixed_25']:.3f}/{mean['fixed_50']:.3f}/"
          f"{mean['fixed_100']:.4f} precision {mean['precision']:.3f} nAUC {mean['nauc']:.5f} | per seed fixed@100% "
          f"[{fmt['fixed_100']}] to 90% [{fmt['reach_90']}] errors halved [{fmt['halved']}] nAUC [{fmt['nauc']}] acc [{fmt['accuracy']}]", flush=True)
    return row


def split_out_option(argv: list[str]) -> tuple[list[str], str | None]:
    """The positional arguments, and the FILE of an ``--out=FILE`` among them (None without one)."""
    return ([a for a in argv if not a.startswith("--out=")],
            next((a.partition("=")[2] for a in argv if a.startswith("--out=")), None))


if __name__ == "__main__":
    args, out_file = split_out_option(sys.argv[1:])
    if not 4 <= len(args) <= 5:
        sys.exit(__doc__.split("\n\n")[1].split("\n")[0] + "  (ENSEMBLES is one argument: a+b,a+b+c)")
    main(int(args[0]), float(args[1]), [int(s) for s in args[2].split(",")], json.loads(args[3]),
         [e.split("+") for e in args[4].split(",")] if len(args) > 4 and args[4] else [], out_file)
