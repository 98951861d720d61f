"""What a task's labels say about its true class: a latent-class model fitted to the labels themselves.

Why a model: a settled majority is not always the true class (on an ambiguous image two annotators can
agree on the wrong class), and the accuracy estimate counts those too. Numpy only.

The model (empirical Bayes, fitted by EM over all re-annotated tasks):
* a task's annotator distribution p ~ Dirichlet(alpha * beta) (beta = class shares of the re-annotations),
  alpha from a grid: clear tasks (p near a corner) and ambiguous ones (p spread) live in one prior;
* the true class is argmax p (the class most annotators would give);
* re-annotations are draws from p; stopping at a majority is ignorable in the likelihood;
* the initial label is a draw from a flattened p, p^(1/tau) normalised, tau from a grid: tau = 1 is one
  more annotator, a large tau a label that is often a guess, and on an ambiguous task its errors fall
  on the classes annotators confuse (which is how an initial error survives a re-annotation).
Each group of tasks (audit draws, a uniform sample of the pool; ranked picks, chosen because their
initial label looked wrong) has its own mixture weights over (alpha, tau). Integrals over p are Monte
Carlo with a fixed seed (the same answer for the same labels).
"""

from __future__ import annotations

import numpy as np

CONCENTRATIONS = np.array([0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
FLATTENING = np.array([1.0, 2.0, 4.0, 10.0, 100.0])
PRIOR_SAMPLES = 1000
EM_ROUNDS = 40


def truth_posterior(reannotations: np.ndarray, initial: np.ndarray, group: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """P(true class = t | the task's re-annotations and initial label), shape (n, C).

    ``reannotations`` (n, C) counts without the initial label; ``initial`` (n,) class of the initial
    label; ``group`` (n,) int, tasks that share mixture weights (e.g. 0 = ranked pick, 1 = audit draw).
    """
    n, c = reannotations.shape
    if n == 0:
        return np.zeros((0, c))
    beta = (reannotations.sum(axis=0) + 1.0) / (reannotations.sum() + c)
    # Tasks with the same labels have the same posterior: compute each pattern once, weight it by its count.
    keys = np.column_stack([group, initial, reannotations])
    patterns, inverse, multiplicity = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    group, initial, reannotations = patterns[:, 0], patterns[:, 1], patterns[:, 2:]
    inverse = inverse.reshape(-1)
    rng = np.random.default_rng(seed)
    logs, tops = [], []  # per component (alpha, tau): log of E[likelihood; argmax p = t] and its scale
    for alpha in CONCENTRATIONS:
        p = np.clip(rng.dirichlet(np.maximum(alpha * beta, 1e-3), PRIOR_SAMPLES), 1e-12, None)
        logp = np.log(p)
        loglik = reannotations @ logp.T  # (n, S)
        top = np.eye(c)[p.argmax(axis=1)]  # (S, C)
        for tau in FLATTENING:
            flat = logp / tau
            flat -= np.logaddexp.reduce(flat, axis=1, keepdims=True)
            ll = loglik + flat[:, initial].T  # (n, S)
            shift = ll.max(axis=1, keepdims=True)
            logs.append((np.log(np.exp(ll - shift) @ top / PRIOR_SAMPLES + 1e-300) + shift))  # (n, C)
            tops.append((alpha, tau))
    log_like = np.stack(logs)  # (K, n, C)
    scale = log_like.max(axis=(0, 2))
    like = np.exp(log_like - scale[None, :, None])

    groups = np.unique(group)
    k = like.shape[0]
    weights = {g: np.full(k, 1.0 / k) for g in groups}
    for _ in range(EM_ROUNDS):
        w = np.stack([weights[g] for g in group], axis=1)  # (K, n)
        joint = w[:, :, None] * like  # (K, n, C)
        per_task = joint.sum(axis=(0, 2)) + 1e-300
        resp = joint.sum(axis=2) / per_task  # (K, n)
        for g in groups:
            mine = group == g
            weights[g] = resp[:, mine] @ multiplicity[mine] / multiplicity[mine].sum() + 1e-6
            weights[g] /= weights[g].sum()
    w = np.stack([weights[g] for g in group], axis=1)
    joint = (w[:, :, None] * like).sum(axis=0)
    return (joint / (joint.sum(axis=1, keepdims=True) + 1e-300))[inverse]
