"""Priority rules: turn label counts and model posteriors into 're-annotate this first' scores.

Every rule returns a :class:`Priorities` whose ``priority`` is *higher = relabel first*, whatever
the sign convention of the library behind it, plus the two components shown to users:
``noisiness`` (how wrong the current label looks) and ``ambiguity`` (how unclear the image is).

Shapes: ``label_counts`` (N, C) non-negative counts (initial label plus every re-annotation),
``posteriors`` (N, C) rows summing to 1, ``mc_samples`` (S, N, C).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

import numpy as np

from scoring.checks import check_counts, check_probs, check_same_shape, check_samples

EPS = 1e-12


@dataclass(frozen=True)
class Priorities:
    """Priority (higher = relabel first) and the components it was made of, each shape (N,)."""

    priority: np.ndarray
    noisiness: np.ndarray
    ambiguity: np.ndarray


def normalised_cross_entropy(label_counts: Any, posteriors: Any) -> np.ndarray:
    """CE(l/|l|, p) / log C = -sum_c (l_c/|l|) log p_c / log C, with p clipped at 1e-12."""
    counts = check_counts(label_counts)
    probs = check_probs(posteriors)
    check_same_shape(counts, probs)
    return _ce(counts, probs)


def normalised_entropy(posteriors: Any) -> np.ndarray:
    """H(p) / log C = -sum_c p_c log p_c / log C, in [0, 1]."""
    return _entropy(check_probs(posteriors))


def _ce(counts: np.ndarray, probs: np.ndarray) -> np.ndarray:
    target = counts / counts.sum(axis=1, keepdims=True)
    return -(target * np.log(np.clip(probs, EPS, 1.0))).sum(axis=1) / np.log(counts.shape[1])


def _entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, EPS, 1.0))).sum(axis=-1) / np.log(probs.shape[-1])


def _inputs(label_counts: Any, posteriors: Any) -> tuple[np.ndarray, np.ndarray]:
    counts = check_counts(label_counts)
    probs = check_probs(posteriors)
    check_same_shape(counts, probs)
    return counts, probs


def alc(label_counts: Any, posteriors: Any) -> Priorities:
    """The paper's rule (Eq. 2): Phi = CE(l/|l|, p) - H(p), both normalised by log C.

    Confident disagreement (high CE, low H) comes first, ambiguous images (high H) later,
    labels the model agrees with (low CE) last.
    """
    counts, probs = _inputs(label_counts, posteriors)
    ce, h = _ce(counts, probs), _entropy(probs)
    return Priorities(ce - h, ce, h)


def alc_clipped(label_counts: Any, posteriors: Any, threshold: float = 0.3) -> Priorities:
    """The reference implementation's variant: Phi = CE - max(H - threshold, 0).

    Ambiguity only lowers the priority once the normalised entropy exceeds ``threshold``.
    """
    counts, probs = _inputs(label_counts, posteriors)
    ce, h = _ce(counts, probs), _entropy(probs)
    return Priorities(ce - np.maximum(h - threshold, 0.0), ce, h)


def cross_entropy(label_counts: Any, posteriors: Any) -> Priorities:
    """Noisiness only: Phi = CE(l/|l|, p) / log C."""
    counts, probs = _inputs(label_counts, posteriors)
    ce = _ce(counts, probs)
    return Priorities(ce, ce, _entropy(probs))


def bald(label_counts: Any, mc_samples: Any) -> Priorities:
    """BALD: mutual information I = H(mean_s p_s) - mean_s H(p_s), normalised by log C.

    High when the Monte-Carlo samples (e.g. MC dropout) disagree with each other.
    """
    counts = check_counts(label_counts)
    samples = check_samples(mc_samples)
    mean = samples.mean(axis=0)
    check_same_shape(counts, mean, "mc_samples[0]")
    h_mean = _entropy(mean)
    mutual_information = h_mean - _entropy(samples).mean(axis=0)
    return Priorities(mutual_information, _ce(counts, mean), h_mean)


def majority_labels(label_counts: Any) -> np.ndarray:
    """argmax of each row of counts (first class on ties)."""
    return check_counts(label_counts).argmax(axis=1)


def self_confidence(label_counts: Any, posteriors: Any) -> Priorities:
    """cleanlab's self-confidence on the majority label: Phi = 1 - p[majority label]."""
    from cleanlab.rank import get_label_quality_scores

    counts, probs = _inputs(label_counts, posteriors)
    labels = counts.argmax(axis=1)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    return Priorities(1.0 - quality, 1.0 - quality, _entropy(probs))


def counts_to_multiannotator(label_counts: np.ndarray) -> np.ndarray:
    """(N, C) counts -> (N, M) cleanlab multi-annotator labels, one column per annotation slot, NaN where absent.

    Counts do not record who labelled what, so the j-th label of every row shares column j.
    """
    counts = np.rint(label_counts).astype(int)
    n, c = counts.shape
    per_row = counts.sum(axis=1)
    labels = np.repeat(np.tile(np.arange(c), n), counts.ravel())  # every row's labels, rows in order
    rows = np.repeat(np.arange(n), per_row)
    slots = np.arange(labels.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    out = np.full((n, int(per_row.max())), np.nan)
    out[rows, slots] = labels
    return out


def activelab(label_counts: Any, posteriors: Any) -> Priorities:
    """cleanlab's ActiveLab (multiannotator.get_active_learning_scores): Phi = 1 - score."""
    from cleanlab.multiannotator import get_active_learning_scores

    counts, probs = _inputs(label_counts, posteriors)
    scores, _ = get_active_learning_scores(counts_to_multiannotator(counts), probs)
    labels = counts.argmax(axis=1)
    noisiness = 1.0 - probs[np.arange(len(labels)), labels]
    return Priorities(1.0 - scores, noisiness, _entropy(probs))


def random_rule(label_counts: Any, posteriors: Any = None, seed: int | None = None) -> Priorities:
    """Uniform random priorities: the lower bound every other rule must beat."""
    counts = check_counts(label_counts)
    n = counts.shape[0]
    zeros = np.zeros(n)
    return Priorities(np.random.default_rng(seed).random(n), zeros, zeros)


def oracle(label_counts: Any, true_distribution: Any) -> Priorities:
    """Simulation only: knows the true label distribution p* (passed as ``posteriors``).

    Mislabelled tasks (current majority != argmax p*, ties counting as wrong) come first, those
    needing the fewest re-annotations first: Phi = -d / p*_true, where d = (top other count -
    true-class count + 1) is the number of true votes still missing. Correct tasks get -inf and are
    never chosen.
    """
    counts, probs = _inputs(label_counts, true_distribution)
    rows = np.arange(counts.shape[0])
    truth = probs.argmax(axis=1)
    true_count = counts[rows, truth]
    others = counts.copy()
    others[rows, truth] = -1.0
    deficit = others.max(axis=1) - true_count + 1.0
    wrong = deficit > 0
    priority = np.where(wrong, -deficit / np.clip(probs[rows, truth], EPS, 1.0), -np.inf)
    return Priorities(priority, wrong.astype(float), _entropy(probs))


@dataclass(frozen=True)
class Rule:
    """A named priority rule. ``input`` says what the selector must provide: 'probs' or 'samples'."""

    name: str
    fn: Callable[..., Priorities]
    input: str = "probs"
    seeded: bool = False

    def __call__(self, label_counts: Any, model_output: Any, seed: int | None = None) -> Priorities:
        if self.seeded:
            return self.fn(label_counts, model_output, seed=seed)
        return self.fn(label_counts, model_output)


BUILTIN_RULES: dict[str, Rule] = {
    r.name: r
    for r in [
        Rule("alc", alc),
        Rule("alc-clipped", alc_clipped),
        Rule("ce", cross_entropy),
        Rule("bald", bald, input="samples"),
        Rule("self-confidence", self_confidence),
        Rule("activelab", activelab),
        Rule("random", random_rule, seeded=True),
        Rule("oracle", oracle),
    ]
}


def available_rules() -> dict[str, Rule]:
    """Built-in rules plus third-party ones from the ``alc.rules`` entry-point group (each a Rule)."""
    rules = dict(BUILTIN_RULES)
    for ep in entry_points(group="alc.rules"):
        rule = ep.load()
        rules[ep.name] = rule if isinstance(rule, Rule) else Rule(ep.name, rule)
    return rules


def get_rule(name: str) -> Rule:
    rules = available_rules()
    if name not in rules:
        raise ValueError(f"unknown priority rule {name!r}; known: {', '.join(sorted(rules))}")
    return rules[name]
