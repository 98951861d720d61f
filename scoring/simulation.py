"""The relabelling simulation (Algorithm 1 of the paper): the yardstick every ranking is judged by.

Each selected task draws new labels from its true label distribution until a strict majority forms
(or a per-task cap is hit); the selector is refitted every ``refit_every`` re-annotations and the
tasks re-ranked, until the budget of re-annotations is spent.

How the budget ends: the budget is never exceeded. When it runs out in the middle of a task, that
task keeps the labels drawn so far and is left unsettled; if its counts are tied it has no
majority label and counts as wrong.

Speed: priorities of all tasks are recomputed only when the posteriors change (a refit). Between
refits only the re-annotated task changes, and it leaves the candidate pool (or, for selectors that
may choose a task again, like the oracle, it is re-scored alone and pushed back on a heap).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from scoring.audit import AuditDraw, audit_due, draw_audit
from scoring.data import SimulationData
from scoring.estimate import estimate_accuracy
from scoring.majority import has_strict_majority
from scoring.ranking import Strategy

StrategyFactory = Callable[[int], Strategy]  # seed -> a fresh, unfitted strategy
CORRECTED_AT = (0.25, 0.5, 1.0)  # budget fractions at which the share of initial wrong labels corrected is reported


@dataclass
class SeedResult:
    """One simulated cleaning run. Curves have budget + 1 points: after 0, 1, ..., budget re-annotations."""

    seed: int
    accuracy: np.ndarray
    mislabelled_clear: np.ndarray
    mislabelled_ambiguous: np.ndarray
    spent: int
    tasks_relabelled: int
    cap_hits: int
    refits: int
    fit_seconds: float
    estimates: list[dict[str, Any]] = field(default_factory=list)  # the accuracy estimate at each checkpoint
    audit_spent: int = 0  # re-annotations spent on audit draws (part of ``spent``)
    corrections_lost: int | None = None  # labels corrected without the audit minus with it (same seed)
    # how the initially wrong labels fare (None where a caller builds a result without them)
    initial_wrong_fixed: np.ndarray | None = None  # initially wrong tasks correct after 0..budget re-annotations
    picks_wrong: int = 0  # picks (tasks chosen) whose label was wrong when picked

    @property
    def initial_wrong(self) -> int:
        """Mislabelled tasks before any re-annotation."""
        return int(self.mislabelled_clear[0] + self.mislabelled_ambiguous[0])

    def corrected_share(self, budget_fraction: float) -> float | None:
        """Share of the initially wrong labels that are correct after ``budget_fraction`` of the budget
        (None when nothing was wrong). Counts those tasks themselves, not the net error count: a correct label
        spoilt elsewhere does not hide a fix."""
        if self.initial_wrong_fixed is None or not self.initial_wrong:
            return None
        step = int(round(budget_fraction * (len(self.initial_wrong_fixed) - 1)))
        return float(self.initial_wrong_fixed[step] / self.initial_wrong)

    @property
    def precision(self) -> float | None:
        """Share of picks whose label was wrong when picked (None before any pick)."""
        return self.picks_wrong / self.tasks_relabelled if self.tasks_relabelled else None

    def reach_errors_removed(self, share: float) -> int | None:
        """Re-annotations until the mislabelled tasks are down by ``share`` of their initial number
        (0.5: the errors halved), or None if never within budget. Meaningful at any noise level, unlike
        an absolute accuracy target that a clean dataset already exceeds."""
        left = self.mislabelled_clear + self.mislabelled_ambiguous
        hit = np.flatnonzero(left <= (1.0 - share) * left[0] + 1e-9)
        return int(hit[0]) if hit.size else None

    def reach(self, target: float) -> int | None:
        """Re-annotations needed to reach ``target`` label accuracy, or None if never within budget."""
        hit = np.flatnonzero(self.accuracy >= target - 1e-12)
        return int(hit[0]) if hit.size else None

    @property
    def nauc(self) -> float:
        """Area under accuracy vs re-annotations, divided by the budget (trapezoidal rule)."""
        if len(self.accuracy) < 2:
            return float(self.accuracy[0])
        return float(np.trapezoid(self.accuracy) / (len(self.accuracy) - 1))

    @property
    def final_accuracy(self) -> float:
        return float(self.accuracy[-1])


@dataclass
class StrategyResult:
    name: str
    seeds: list[SeedResult] = field(default_factory=list)

    def curve(self, attr: str = "accuracy") -> np.ndarray:
        """(n_seeds, budget + 1) stack of one curve."""
        return np.stack([getattr(s, attr) for s in self.seeds])

    def summary(self) -> dict[str, Any]:
        metrics = {
            "reach_90": [s.reach(0.90) for s in self.seeds],
            "reach_95": [s.reach(0.95) for s in self.seeds],
            **{f"corrected_{round(100 * f)}": [s.corrected_share(f) for s in self.seeds] for f in CORRECTED_AT},
            "precision": [s.precision for s in self.seeds],
            "reach_errors_halved": [s.reach_errors_removed(0.5) for s in self.seeds],
            "reach_errors_90pct_removed": [s.reach_errors_removed(0.9) for s in self.seeds],
            "nauc": [s.nauc for s in self.seeds],
            "final_accuracy": [s.final_accuracy for s in self.seeds],
            "cap_hits": [s.cap_hits for s in self.seeds],
            "tasks_relabelled": [s.tasks_relabelled for s in self.seeds],
            "refits": [s.refits for s in self.seeds],
            "fit_seconds": [s.fit_seconds for s in self.seeds],
        }
        summary = {"seeds": [s.seed for s in self.seeds]} | {k: aggregate(v) for k, v in metrics.items()}
        if any(s.estimates for s in self.seeds):
            summary["estimate"] = estimate_summary(self.seeds)
        return summary


def estimate_summary(seeds: list[SeedResult]) -> dict[str, Any]:
    """How the audit-based accuracy estimate did against the simulation's true accuracy.

    coverage: share of (checkpoint, seed) pairs whose interval holds the truth (a checkpoint without an
    estimate yet counts as a miss); abs_error_end: |estimate - truth| at the end of the budget, per seed.
    """
    pairs = [e for s in seeds for e in s.estimates]
    held = [e["low"] is not None and e["low"] <= e["truth"] <= e["high"] for e in pairs]
    end = [abs(s.estimates[-1]["accuracy"] - s.estimates[-1]["truth"]) if s.estimates[-1]["accuracy"] is not None
           else None for s in seeds]
    return {
        "confidence": pairs[0]["confidence"],
        "coverage": float(np.mean(held)),
        "coverage_per_seed": [float(np.mean([e["low"] is not None and e["low"] <= e["truth"] <= e["high"]
                                             for e in s.estimates])) for s in seeds],
        "abs_error_end": aggregate(end),
        "width_end": aggregate([s.estimates[-1]["high"] - s.estimates[-1]["low"]
                                if s.estimates[-1]["low"] is not None else None for s in seeds]),
        "audit_spent": aggregate([s.audit_spent for s in seeds]),
        "corrections_lost": aggregate([s.corrections_lost for s in seeds]),
        "checkpoints": [[{k: e[k] for k in ("spent", "truth", "accuracy", "low", "high", "n_audited")}
                         for e in s.estimates] for s in seeds],
    }


def gap_closed(results: dict[str, StrategyResult], lower: str = "random",
               upper: str = "oracle") -> dict[str, list[float | None]]:
    """Per strategy and seed, the fraction of the ``lower``-to-``upper`` nAUC gap it closes:
    (nAUC - nAUC_random) / (nAUC_oracle - nAUC_random) of the same seed (0 = random, 1 = oracle).

    Empty when either bound did not run; None for a seed either bound lacks or where they tie.
    """
    if lower not in results or upper not in results:
        return {}
    low = {s.seed: s.nauc for s in results[lower].seeds}
    high = {s.seed: s.nauc for s in results[upper].seeds}

    def closed(s: SeedResult) -> float | None:
        if s.seed not in low or s.seed not in high or abs(high[s.seed] - low[s.seed]) < 1e-12:
            return None
        return (s.nauc - low[s.seed]) / (high[s.seed] - low[s.seed])

    return {name: [closed(s) for s in r.seeds] for name, r in results.items()}


def aggregate(values: list[float | int | None]) -> dict[str, Any]:
    """mean and sd over seeds; a metric that is null for any seed (never reached) has a null mean."""
    known = [v for v in values if v is not None]
    complete = len(known) == len(values) and known
    return {
        "mean": float(np.mean(known)) if complete else None,
        "sd": float(np.std(known)) if complete else None,
        "per_seed": values,
    }


def label_is_correct(counts: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """A task's label is correct when its counts have a unique top class equal to the true label."""
    counts = np.atleast_2d(counts)
    top = counts.max(axis=1)
    unique_top = (counts == top[:, None]).sum(axis=1) == 1
    return unique_top & (counts.argmax(axis=1) == np.atleast_1d(truth))


def simulate_seed(
    data: SimulationData,
    strategy: Strategy,
    budget: int,
    seed: int,
    batch_size: int = 1,
    refit_every: int = 0,
    max_per_task: int = 10,
    audit_share: float = 0.0,
) -> SeedResult:
    """One run of Algorithm 1. ``refit_every`` = 0 never refits; ``batch_size`` tasks are taken per ranking.

    ``audit_share`` > 0 spends that share of the budget on audit draws (scoring.audit), settled like any
    pick, and records the accuracy estimate (scoring.estimate) at 10%, 20%, ..., 100% of the budget.
    """

    if budget < 0 or batch_size < 1 or refit_every < 0 or max_per_task < 1:
        raise ValueError("budget >= 0, batch_size >= 1, refit_every >= 0 and max_per_task >= 1 are required")
    audit = AuditedRun(data, budget, audit_share, seed) if audit_share else None
    rng = np.random.default_rng(seed)
    counts = data.initial_counts.copy()
    truth = data.true_labels
    ambiguous = data.ambiguous
    cdf = np.cumsum(data.true_distribution, axis=1)
    reselect = strategy.selector.allow_reselect
    features = data.images

    started = time.perf_counter()
    model_output = strategy.fit_output(features, counts)
    fit_seconds = time.perf_counter() - started

    correct = label_is_correct(counts, truth)
    initially_wrong = ~correct
    fixed, picks_wrong = 0, 0  # initially wrong tasks now correct; picks of a wrong label
    fixed_curve = [fixed]
    wrong_clear = int(np.sum(~correct & ~ambiguous))
    wrong_ambiguous = int(np.sum(~correct & ambiguous))
    accuracy = [correct.mean()]
    clear_curve, ambiguous_curve = [wrong_clear], [wrong_ambiguous]
    n = data.n_tasks

    done = np.zeros(n, dtype=bool)  # chosen already (never chosen again unless the selector allows it)

    def rank() -> list[tuple[float, int, int]]:
        prio = strategy.priorities(counts, model_output, seed=int(rng.integers(2**31))).priority
        # Heap of (-priority, random tiebreak, task); -inf priorities (oracle: already correct) are left out.
        tiebreak = rng.permutation(n)
        heap = [(-float(prio[i]), int(tiebreak[i]), int(i)) for i in np.flatnonzero(np.isfinite(prio) & ~done)]
        heapq.heapify(heap)
        return heap

    heap = rank()
    spent = last_fit = tasks = cap_hits = refits = 0
    taken_since_rank = 0
    while spent < budget:
        if taken_since_rank >= batch_size:
            taken_since_rank = 0
            if refit_every and spent - last_fit >= refit_every:
                t0 = time.perf_counter()
                model_output = strategy.fit_output(features, counts, update=True)
                fit_seconds += time.perf_counter() - t0
                last_fit, refits = spent, refits + 1
                heap = rank()
        drawn = audit.draw(spent, done, model_output) if audit else None
        task = drawn if drawn is not None else _pop_valid(heap, done)
        if task is None:
            break
        tasks += 1
        taken_since_rank += 1
        done[task] = True
        picks_wrong += int(not correct[task])
        draws, settled = 0, False
        while spent < budget and draws < max_per_task and not settled:
            label = int(np.searchsorted(cdf[task], rng.random() * cdf[task, -1], side="right"))
            counts[task, min(label, data.n_classes - 1)] += 1
            draws, spent = draws + 1, spent + 1
            now = bool(label_is_correct(counts[task], truth[task])[0])
            if now != correct[task]:
                delta = 1 if now else -1
                if ambiguous[task]:
                    wrong_ambiguous -= delta
                else:
                    wrong_clear -= delta
                correct[task] = now
                fixed += delta if initially_wrong[task] else 0
            fixed_curve.append(fixed)
            accuracy.append(1.0 - (wrong_clear + wrong_ambiguous) / n)
            clear_curve.append(wrong_clear)
            ambiguous_curve.append(wrong_ambiguous)
            settled = bool(has_strict_majority(counts[task]))
        if not settled and draws >= max_per_task:
            cap_hits += 1
        if audit:
            audit.after(task, drawn is not None, draws, spent, counts, model_output, accuracy[-1])
        if reselect:
            row = strategy.priorities(counts[task : task + 1], _rows(model_output, task)).priority[0]
            if np.isfinite(row):
                done[task] = False
                heapq.heappush(heap, (-float(row), int(rng.integers(n)), task))

    if audit:
        audit.finish(counts, model_output, accuracy[-1])
    pad = budget + 1 - len(accuracy)
    return SeedResult(
        seed=seed,
        accuracy=np.asarray(accuracy + [accuracy[-1]] * pad),
        mislabelled_clear=np.asarray(clear_curve + [clear_curve[-1]] * pad),
        mislabelled_ambiguous=np.asarray(ambiguous_curve + [ambiguous_curve[-1]] * pad),
        spent=spent,
        tasks_relabelled=tasks,
        cap_hits=cap_hits,
        refits=refits,
        fit_seconds=fit_seconds,
        estimates=audit.records if audit else [],
        audit_spent=audit.spent if audit else 0,
        initial_wrong_fixed=np.asarray(fixed_curve + [fixed_curve[-1]] * pad),
        picks_wrong=picks_wrong,
    )


class AuditedRun:
    """The audit inside one simulated run: draws, who was touched when, and the estimate at checkpoints.

    The estimate's "right" is the simulation's (label_is_correct: a tie is wrong), compared with the
    run's own accuracy at the same moment.
    """

    def __init__(self, data: SimulationData, budget: int, share: float, seed: int, checkpoints: int = 10) -> None:
        if np.any(data.initial_counts.sum(axis=1) != 1):
            raise ValueError("the audit estimate needs exactly one initial label per task")
        self.initial = data.initial_counts.argmax(axis=1)
        self.budget, self.share = budget, share
        self.rng = np.random.default_rng([seed, 7])  # its own stream: the re-annotation draws stay comparable
        self.touched_seq = np.full(data.n_tasks, -1)
        self.draws: list[AuditDraw] = []
        self.spent = 0
        self.marks = [int(np.ceil(budget * (k + 1) / checkpoints)) for k in range(checkpoints)]
        self.records: list[dict[str, Any]] = []

    def draw(self, spent: int, done: np.ndarray, model_output: np.ndarray) -> int | None:
        """An untouched task drawn uniformly when the audit is due, else None (a ranked pick comes next)."""
        pool = np.flatnonzero(self.touched_seq < 0)
        if not pool.size or not audit_due(audit_spent=self.spent, spent=spent, budget=self.budget, share=self.share):
            return None
        wrong = 1.0 - Strategy.posteriors(model_output)[pool, self.initial[pool]]
        drawn = draw_audit(pool, np.clip(wrong, 0.0, 1.0), seq=int(np.sum(self.touched_seq >= 0)), rng=self.rng)
        self.draws.append(drawn)
        done[drawn.task] = True
        return drawn.task

    def after(self, task: int, audited: bool, draws: int, spent: int, counts: np.ndarray,
              model_output: np.ndarray, truth: float) -> None:
        if self.touched_seq[task] < 0:
            self.touched_seq[task] = int(np.sum(self.touched_seq >= 0))
        self.spent += draws if audited else 0
        while self.marks and spent >= self.marks[0]:
            self.record(self.marks.pop(0), counts, model_output, truth)

    def finish(self, counts: np.ndarray, model_output: np.ndarray, truth: float) -> None:
        """Checkpoints the run never reached (no task left to choose) get the final state."""
        while self.marks:
            self.record(self.marks.pop(0), counts, model_output, truth)

    def record(self, spent: int, counts: np.ndarray, model_output: np.ndarray, truth: float) -> None:
        probs = Strategy.posteriors(model_output)
        current = np.where(has_strict_majority(counts), counts.argmax(axis=1), self.initial)
        wrong_prob = np.clip(1.0 - probs[np.arange(len(current)), current], 0.0, 1.0)
        initial_wrong = np.clip(1.0 - probs[np.arange(len(current)), self.initial], 0.0, 1.0)
        est = estimate_accuracy(counts=counts, initial_labels=self.initial, touched_seq=self.touched_seq,
                                audits=self.draws, wrong_prob=wrong_prob, initial_wrong_prob=initial_wrong)
        self.records.append({
            "spent": spent, "truth": float(truth), "confidence": 0.9 if est is None else est.confidence,
            "accuracy": None if est is None else est.accuracy,
            "low": None if est is None else est.low, "high": None if est is None else est.high,
            "n_audited": 0 if est is None else est.n_audited,
        })


def _pop_valid(heap: list[tuple[float, int, int]], done: np.ndarray) -> int | None:
    """Highest-priority task not chosen yet; stale heap entries of re-scored tasks are skipped."""
    while heap:
        _, _, task = heapq.heappop(heap)
        if not done[task]:
            return task
    return None


def _rows(model_output: np.ndarray, task: int) -> np.ndarray:
    """The slice of posteriors (N, C) or MC samples (S, N, C) for one task."""
    return model_output[task : task + 1] if model_output.ndim == 2 else model_output[:, task : task + 1]


def simulate(
    data: SimulationData,
    strategies: dict[str, StrategyFactory],
    budget: int,
    seeds: list[int],
    batch_size: int = 1,
    refit_every: int = 0,
    max_per_task: int = 10,
    progress: Callable[[str, int], None] | None = None,
    audit_share: float = 0.0,
) -> dict[str, StrategyResult]:
    """Every strategy x every seed. ``progress(name, seed)`` is called after each run (for a progress bar).

    With ``audit_share`` > 0 each (strategy, seed) also runs without the audit, so that each result says
    how many corrections the audit cost (``corrections_lost``).
    """
    results: dict[str, StrategyResult] = {}
    for name, factory in strategies.items():
        result = StrategyResult(name)
        for seed in seeds:
            run = simulate_seed(data, factory(seed), budget, seed, batch_size, refit_every, max_per_task, audit_share)
            if audit_share:
                plain = simulate_seed(data, factory(seed), budget, seed, batch_size, refit_every, max_per_task)
                run.corrections_lost = int(round((plain.final_accuracy - run.final_accuracy) * data.n_tasks))
            result.seeds.append(run)
            if progress:
                progress(name, seed)
        results[name] = result
    return results
