"""What a task's labels say about its true class: a latent-class model fitted to the re-annotations.

Why a model: a settled majority is not always the true class (on an ambiguous image two annotators can
agree on the wrong class), and the accuracy estimate counts those too. Numpy only.

The model (empirical Bayes, fitted by EM over all re-annotated tasks):
* a task's annotator distribution p ~ a mixture over a grid of concentrations alpha_m of
  Dirichlet(alpha_m * beta) (beta = class shares of the re-annotations): clear tasks (p near a corner)
  and ambiguous ones live in one prior, with weights pi_m fitted to the data;
* the true class is argmax p (the class most annotators would give);
* re-annotations are draws from p; stopping at a majority is ignorable in the likelihood;
* the initial label is not assumed to be an annotator's: it is the true class with probability gamma_g,
  one gamma per group of tasks (audit draws, a uniform sample of the pool, and ranked picks, which are
  suspicious tasks), else any other class.
Integrals over p are Monte Carlo with a fixed seed (the same answer for the same labels).
"""

from __future__ import annotations

import numpy as np

CONCENTRATIONS = np.array([0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0])
PRIOR_SAMPLES = 2000
EM_ROUNDS = 30


def truth_posterior(reannotations: np.ndarray, initial: np.ndarray, group: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """P(true class = t | the task's re-annotations and initial label), shape (n, C).

    ``reannotations`` (n, C) counts without the initial label; ``initial`` (n,) class of the initial
    label; ``group`` (n,) int, tasks whose initial labels share a reliability (e.g. 0 = audit, 1 = pick).
    """
    n, c = reannotations.shape
    if n == 0:
        return np.zeros((0, c))
    beta = (reannotations.sum(axis=0) + 1.0) / (reannotations.sum() + c)
    rng = np.random.default_rng(seed)
    # like[m, i, t] = E_{p ~ Dir(alpha_m beta)}[ prod_c p_c^r_ic ; argmax p = t ], up to a factor per task
    logs = []
    for alpha in CONCENTRATIONS:
        p = np.clip(rng.dirichlet(np.maximum(alpha * beta, 1e-3), PRIOR_SAMPLES), 1e-12, None)
        loglik = reannotations @ np.log(p).T  # (n, S)
        top = np.eye(c)[p.argmax(axis=1)]  # (S, C)
        logs.append((loglik, top))
    shift = np.max([ll.max(axis=1) for ll, _ in logs], axis=0)  # (n,) per-task scale, the same for every m
    like = np.stack([np.exp(ll - shift[:, None]) @ top / PRIOR_SAMPLES for ll, top in logs])  # (M, n, C)

    groups = np.unique(group)
    weights = np.full(CONCENTRATIONS.size, 1.0 / CONCENTRATIONS.size)
    gamma = {g: 0.5 for g in groups}
    rows = np.arange(n)
    for _ in range(EM_ROUNDS):
        g_i = np.array([gamma[g] for g in group])
        channel = np.repeat(((1 - g_i) / (c - 1))[:, None], c, axis=1)
        channel[rows, initial] = g_i
        joint = weights[:, None, None] * like * channel[None]  # (M, n, C)
        per_task = joint.sum(axis=(0, 2)) + 1e-300
        resp = joint.sum(axis=2) / per_task  # (M, n)
        post = joint.sum(axis=0) / per_task[:, None]  # (n, C)
        weights = resp.mean(axis=1) + 1e-6
        weights /= weights.sum()
        for g in groups:
            mine = group == g
            # Laplace-smoothed share of tasks whose initial label is the true class
            gamma[g] = float(np.clip((post[mine, initial[mine]].sum() + 1.0) / (mine.sum() + 2.0), 1.0 / c, 1 - 1e-6))
    return post
