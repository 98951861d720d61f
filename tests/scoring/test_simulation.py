"""The relabelling simulation: budget, majority, determinism, bounds, refits."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.data import SimulationData, load_cifar10h
from scoring.ranking import Strategy
from scoring.selectors import make_selector
from scoring.selectors.base import Selector
from scoring.simulation import label_is_correct, simulate, simulate_seed


def toy_data(n=400, c=4, seed=0) -> SimulationData:
    """Mostly clear tasks, some ambiguous ones, and a 25% wrong initial label."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, c, n)
    probs = np.full((n, c), 0.02)
    probs[np.arange(n), truth] = 1 - 0.02 * (c - 1)
    ambiguous = rng.random(n) < 0.2
    probs[ambiguous] = rng.dirichlet(np.ones(c), ambiguous.sum())
    initial = np.where(rng.random(n) < 0.25, (truth + 1) % c, truth)
    return SimulationData(probs, np.eye(c, dtype=int)[initial], [f"c{k}" for k in range(c)])


def oracle(data):
    return Strategy.build(make_selector("oracle", true_distribution=data.true_distribution))


def random_strategy():
    return Strategy.build(make_selector("random"))


@pytest.mark.parametrize("budget, cap", [(0, 10), (1, 10), (137, 10), (500, 2), (5000, 10)])
def test_budget_is_never_exceeded(budget, cap):
    data = toy_data()
    for strategy in (oracle(data), random_strategy()):
        result = simulate_seed(data, strategy, budget, seed=1, max_per_task=cap)
        assert result.spent <= budget
        assert len(result.accuracy) == budget + 1


def test_the_last_task_stops_exactly_at_the_budget():
    data = toy_data()
    result = simulate_seed(data, random_strategy(), 137, seed=2)
    assert result.spent == 137  # plenty of tasks left: the budget is spent to the last annotation


def test_a_task_is_chosen_at_most_once_unless_the_selector_allows_it():
    data = toy_data(n=20)
    result = simulate_seed(data, random_strategy(), 10_000, seed=0)
    assert result.tasks_relabelled == 20  # every task once, then nothing is left to choose
    assert result.spent < 10_000


def test_same_seed_same_curve_other_seed_other_curve():
    data = toy_data()
    a = simulate_seed(data, random_strategy(), 300, seed=5).accuracy
    b = simulate_seed(data, random_strategy(), 300, seed=5).accuracy
    c = simulate_seed(data, random_strategy(), 300, seed=6).accuracy
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_oracle_beats_random():
    data = toy_data()
    results = simulate(data, {"random": lambda s: random_strategy(), "oracle": lambda s: oracle(data)}, 300, [1, 2, 3])
    for s_random, s_oracle in zip(results["random"].seeds, results["oracle"].seeds):
        assert s_oracle.nauc > s_random.nauc
        assert np.all(s_oracle.accuracy >= s_random.accuracy - 0.02)


def test_curves_count_what_is_left_to_fix():
    data = toy_data()
    result = simulate_seed(data, oracle(data), 400, seed=1)
    wrong_start = np.sum(~label_is_correct(data.initial_counts, data.true_labels))
    assert result.mislabelled_clear[0] + result.mislabelled_ambiguous[0] == wrong_start
    np.testing.assert_allclose(
        result.accuracy, 1 - (result.mislabelled_clear + result.mislabelled_ambiguous) / data.n_tasks
    )
    assert result.mislabelled_clear[-1] < result.mislabelled_clear[0]


def test_relabelling_stops_at_a_strict_majority():
    """Two tasks, truth certain: every task needs exactly two more labels to outvote its wrong one."""
    probs = np.array([[1.0, 0.0], [1.0, 0.0]])
    data = SimulationData(probs, np.array([[0, 1], [0, 1]]), ["a", "b"])
    result = simulate_seed(data, oracle(data), 100, seed=0)
    assert result.spent == 4
    assert result.accuracy[-1] == 1.0
    assert list(result.accuracy[:5]) == [0.0, 0.0, 0.5, 0.5, 1.0]


def test_per_task_cap_is_reported():
    probs = np.full((30, 3), 1 / 3)  # three-way coin: [1,0,0] -> [1,1,0] -> [1,1,1] happens often
    data = SimulationData(probs, np.eye(3, dtype=int)[[0] * 30], ["a", "b", "c"])
    result = simulate_seed(data, random_strategy(), 200, seed=0, max_per_task=2)
    assert result.cap_hits > 0


class CountingSelector(Selector):
    """Posteriors from the counts themselves; counts how often it is refitted."""

    needs_data = False

    def __init__(self):
        self.fits = 0
        self.updates = 0

    def fit(self, data, label_counts):
        self.fits += 1
        self.counts_ = np.asarray(label_counts, dtype=float)
        return self

    def update(self, data, label_counts):
        self.updates += 1
        self.counts_ = np.asarray(label_counts, dtype=float)
        return self

    def predict_proba(self, data):
        smoothed = self.counts_ + 0.5
        return smoothed / smoothed.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("refit_every, batch_size", [(0, 1), (25, 1), (25, 10), (100, 1)])
def test_refit_cadence(refit_every, batch_size):
    data = toy_data()
    selector = CountingSelector()
    result = simulate_seed(data, Strategy.build(selector, "alc"), 300, seed=0, batch_size=batch_size, refit_every=refit_every)
    assert selector.fits == 1
    assert selector.updates == result.refits
    if refit_every:
        # at least one refit per refit_every re-annotations, allowing for the last task of each batch
        assert 300 // (refit_every + batch_size * 10) <= result.refits <= 300 // refit_every
    else:
        assert result.refits == 0


def test_summary_metrics(tiny300):
    probs = tiny300["cifar10h_probs"]
    rng = np.random.default_rng(0)
    from scoring.data import draw_initial_labels

    labels = draw_initial_labels(probs, 2.0, rng)
    data = SimulationData(probs, np.eye(10, dtype=int)[labels], [str(c) for c in range(10)])
    results = simulate(data, {"oracle": lambda s: oracle(data)}, 150, [1, 2])
    summary = results["oracle"].summary()
    assert set(summary) >= {"reach_90", "reach_95", "nauc", "final_accuracy"}
    for key in ("nauc", "final_accuracy"):
        assert len(summary[key]["per_seed"]) == 2 and 0 < summary[key]["mean"] <= 1
    seed = results["oracle"].seeds[0]
    assert seed.reach(seed.accuracy[0]) == 0
    assert seed.reach(1.01) is None


def test_cifar10h_oracle_and_random_bounds(data_dir):
    """The paper's setting at a smaller scale: the oracle reaches 90%, random does not."""
    data = load_cifar10h(data_dir, subset=1000, temperature=2.0, seed=0)
    budget = int(3 * data.n_tasks * data.initial_noise_rate)
    results = simulate(data, {"random": lambda s: random_strategy(), "oracle": lambda s: oracle(data)}, budget, [1, 2])
    assert all(s.reach(0.90) is not None for s in results["oracle"].seeds)
    assert all(s.reach(0.95) is None for s in results["random"].seeds)
    assert results["oracle"].summary()["nauc"]["mean"] > results["random"].summary()["nauc"]["mean"] + 0.03


def test_an_audited_run_spends_its_share_and_records_the_estimate_at_ten_checkpoints():
    data = toy_data()
    plain = simulate_seed(data, random_strategy(), 400, seed=3)
    audited = simulate_seed(data, random_strategy(), 400, seed=3, audit_share=0.05)
    assert plain.estimates == [] and plain.audit_spent == 0
    assert audited.spent == 400 and 20 <= audited.audit_spent <= 20 + 10  # 5% of the budget, one task's overshoot
    assert [e["spent"] for e in audited.estimates] == [40 * k for k in range(1, 11)]
    for e in audited.estimates:
        assert e["n_audited"] >= 1 and e["low"] <= e["accuracy"] <= e["high"]
    assert audited.estimates[-1]["truth"] == pytest.approx(audited.final_accuracy)


def test_simulate_with_an_audit_reports_coverage_error_and_the_corrections_it_cost():
    data = toy_data()
    results = simulate(data, {"oracle": lambda s: oracle(data)}, 300, [1, 2], audit_share=0.05)
    summary = results["oracle"].summary()["estimate"]
    assert 0.0 <= summary["coverage"] <= 1.0 and len(summary["coverage_per_seed"]) == 2
    assert len(summary["abs_error_end"]["per_seed"]) == 2 and len(summary["checkpoints"][0]) == 10
    assert all(isinstance(v, int) for v in summary["corrections_lost"]["per_seed"])
    assert "estimate" not in simulate(data, {"oracle": lambda s: oracle(data)}, 300, [1])["oracle"].summary()
