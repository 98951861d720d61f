"""Screens other rules and post-processings of the same posteriors against the paper's rule, per seed.

Usage: .venv/bin/python docs/benchmarks/rank_variants.py SAVED.npz MEMBERS SUBSET T
e.g.   .venv/bin/python docs/benchmarks/rank_variants.py run.npz l0+l2 10000 1
SAVED.npz holds the posteriors low_noise.py saved (--out=run.json writes run.npz); MEMBERS names the variants whose
posteriors are averaged (as the `ensemble` does). Each seed's simulation (budget factor 3, no refits) then ranks
with: the paper's rule CE - H; CE - lambda H for other lambdas; cleanlab's self-confidence; the posteriors at another
temperature; the posteriors divided by per-class thresholds (confident learning: the mean probability of class k
over the tasks labelled k) or adjusted to the label frequencies; and, with two members or more, rules that use how
the members disagree: the entropy of the average split into the members' mean entropy (aleatoric) and the rest
(the members' disagreement, epistemic), and the members' own priorities averaged or at their minimum. Prints the share of the initial wrong labels
corrected at 100% of the budget (per seed), nAUC and re-annotations to 90%; then, for the first seed's posteriors
under the paper's rule, what the first 600 tasks of the initial ranking hold, against the true distributions.
"""
import sys

import numpy as np

from scoring.data import load_cifar10h, temperature_scale
from scoring.ranking import Strategy
from scoring.rules import Priorities, Rule, get_rule, normalised_cross_entropy, normalised_entropy
from scoring.selectors.baselines import PosteriorsSelector
from scoring.simulation import simulate_seed

BUDGET_FACTOR = 3


def weighted_entropy(weight: float) -> Rule:
    def rule(counts: np.ndarray, probs: np.ndarray) -> Priorities:
        ce, h = normalised_cross_entropy(counts, probs), normalised_entropy(probs)
        return Priorities(ce - weight * h, ce, h)
    return Rule(f"ce-{weight}h", rule)


def members_rule(name: str, members: np.ndarray) -> Rule:
    """A rule that sees the members' posteriors (M, N, C) besides their average: ``aleatoric`` is CE - the members'
    mean entropy, ``disagreement`` is CE - H - 2 x (H - that mean), ``mean phi`` and ``min phi`` average the
    members' own CE - H or take its minimum (every member must find the label wrong)."""
    aleatoric = np.mean([normalised_entropy(p) for p in members], axis=0)

    def rule(counts: np.ndarray, probs: np.ndarray) -> Priorities:
        ce, h = normalised_cross_entropy(counts, probs), normalised_entropy(probs)
        if name in ("mean phi", "min phi"):
            own = np.array([get_rule("alc")(counts, p).priority for p in members])
            return Priorities(own.mean(axis=0) if name == "mean phi" else own.min(axis=0), ce, h)
        return Priorities(ce - aleatoric if name == "aleatoric" else ce - h - 2 * (h - aleatoric), ce, h)
    return Rule(name, rule)


def main(saved_file: str, members: list[str], subset: int, temperature: float) -> None:
    data = load_cifar10h(None, subset, temperature, 0, with_images=False)
    budget = data.budget_for(BUDGET_FACTOR)
    given = data.initial_counts.argmax(axis=1)
    frequency = np.bincount(given, minlength=data.n_classes) / len(given)

    def per_class_thresholds(p: np.ndarray) -> np.ndarray:
        q = p / np.array([p[given == k, k].mean() for k in range(p.shape[1])])
        return q / q.sum(1, keepdims=True)

    def label_frequencies(p: np.ndarray) -> np.ndarray:
        q = p * frequency / p.mean(axis=0)
        return q / q.sum(1, keepdims=True)

    alc, same = get_rule("alc"), (lambda p: p)
    on_average = {"alc (the paper's rule)": (alc, same)}
    on_average |= {f"CE - {w} H": (weighted_entropy(w), same) for w in (0.0, 0.5, 0.75, 1.25, 1.5, 2.0)}
    on_average |= {"self-confidence": (get_rule("self-confidence"), same)}
    on_average |= {f"alc, temperature {t}": (alc, lambda p, t=t: temperature_scale(p, t)) for t in (0.7, 1.5, 2.0)}
    on_average |= {"alc, per-class thresholds": (alc, per_class_thresholds),
                   "alc, label frequencies": (alc, label_frequencies)}
    # each variant: the members' posteriors (M, N, C) -> the rule and the posteriors it ranks with
    variants = {name: (lambda stack, r=rule, t=transform: (r, t(stack.mean(axis=0))))
                for name, (rule, transform) in on_average.items()}
    if len(members) > 1:
        variants |= {f"members: {name}": (lambda stack, n=name: (members_rule(n, stack), stack.mean(axis=0)))
                     for name in ("aleatoric", "disagreement", "mean phi", "min phi")}
    with np.load(saved_file) as saved:
        seeds = sorted({int(k.rsplit("-", 1)[1]) for k in saved.files if k.rsplit("-", 1)[0] == members[0]})
        stacks = {s: np.stack([saved[f"{m}-{s}"] for m in members]) for s in seeds}
    posteriors = {s: stack.mean(axis=0) for s, stack in stacks.items()}
    print(f"CIFAR-10H N={data.n_tasks} T={temperature}: {100 * data.initial_noise_rate:.2f}% wrong, budget {budget}, "
          f"posteriors {'+'.join(members)}, seeds {seeds}", flush=True)
    for name, variant in variants.items():
        fixed, nauc, halved = [], [], []
        for seed in seeds:
            rule, ranked_with = variant(stacks[seed])
            run = simulate_seed(data, Strategy(PosteriorsSelector(ranked_with), rule), budget, seed)
            fixed.append(100 * run.corrected_share(1.0))
            nauc.append(run.nauc)
            halved.append(run.reach_errors_removed(0.5))
        print(f"{name:28s} fixed@100% {np.mean(fixed):5.1f}% ± {np.std(fixed, ddof=1) if len(fixed) > 1 else 0:.1f} "
              f"[{', '.join(f'{f:.1f}' for f in fixed)}]  nAUC {np.mean(nauc):.4f}  errors halved after "
              f"[{', '.join('never' if h is None else str(h) for h in halved)}]", flush=True)


    where_it_fails(data, posteriors[seeds[0]], seeds[0])


def where_it_fails(data, posteriors: np.ndarray, seed: int, first: int = 600) -> None:
    """The initial ranking's first tasks: right labels picked, and wrong labels on clear images found, vs true posteriors."""
    counts, truth = data.initial_counts, data.true_labels
    given, clear = counts.argmax(axis=1), data.true_distribution.max(axis=1) >= 0.9
    wrong = given != truth
    top = np.argsort(-get_rule("alc")(counts, posteriors).priority, kind="stable")[:first]
    right = top[~wrong[top]]
    print(f"seed {seed}, first {first} of the initial ranking: {len(right)} right labels picked (median top share of "
          f"the human votes {np.median(data.true_distribution[right].max(1)):.2f}, model's top probability "
          f"{np.median(posteriors[right].max(1)):.2f}, model's probability of the given label "
          f"{np.median(posteriors[right, given[right]]):.2f})")
    true_order = np.argsort(-get_rule("alc")(counts, data.true_distribution).priority, kind="stable")
    for k in (300, first):
        print(f"  wrong labels on clear images (>= 90% of the votes for one class, {np.sum(wrong & clear)} in all) in "
              f"the first {k}: {np.sum(wrong[top[:k]] & clear[top[:k]])} by these posteriors, "
              f"{np.sum(wrong[true_order[:k]] & clear[true_order[:k]])} by the true distributions")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split("+"), int(sys.argv[3]), float(sys.argv[4]))
