"""The report's noise-independent metrics on tiny data whose answers can be checked by hand."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from backend.cli import app
from scoring.data import SimulationData
from scoring.ranking import Strategy
from scoring.report import write_summary
from scoring.selectors import make_selector
from scoring.simulation import SeedResult, StrategyResult, gap_closed, simulate_seed


def certain(truth: list[int], labels: list[int], c: int = 2) -> SimulationData:
    """Tasks whose true distribution is certain, with the given initial labels."""
    return SimulationData(np.eye(c)[truth], np.eye(c, dtype=int)[labels], [str(k) for k in range(c)])


def test_corrected_share_precision_and_reach_on_two_wrong_labels():
    """Two wrong labels and one right one, truth certain: the oracle fixes one wrong label per two votes."""
    data = certain(truth=[0, 0, 0], labels=[1, 1, 0])
    oracle = Strategy.build(make_selector("oracle", true_distribution=data.true_distribution))
    result = simulate_seed(data, oracle, budget=4, seed=0)
    assert list(result.initial_wrong_fixed) == [0, 0, 1, 1, 2]
    assert result.initial_wrong == 2
    assert result.corrected_share(0.25) == 0.0  # after 1 vote: [1, 1] is a tie, still wrong
    assert result.corrected_share(0.5) == 0.5  # after 2 votes: the first task is fixed
    assert result.corrected_share(1.0) == 1.0
    assert result.precision == 1.0  # both picks were wrong labels
    assert result.reach_errors_removed(0.5) == 2
    assert result.reach_errors_removed(0.9) == 4


def test_precision_counts_the_picks_of_a_wrong_label():
    """Random picks all four tasks; only one label was wrong: precision 1/4; each right label costs 1 vote."""
    data = certain(truth=[0, 0, 0, 0], labels=[1, 0, 0, 0])
    result = simulate_seed(data, Strategy.build(make_selector("random")), budget=100, seed=3)
    assert result.tasks_relabelled == 4 and result.picks_wrong == 1
    assert result.precision == 0.25
    assert result.spent == 2 + 3
    assert result.corrected_share(1.0) == 1.0


def test_nothing_wrong_gives_no_share_and_immediate_reach():
    data = certain(truth=[0, 1], labels=[0, 1])
    result = simulate_seed(data, Strategy.build(make_selector("random")), budget=2, seed=0)
    assert result.corrected_share(1.0) is None
    assert result.reach_errors_removed(0.9) == 0


def fake(seed: int, accuracy: list[float]) -> SeedResult:
    wrong = np.round((1 - np.asarray(accuracy)) * 100).astype(int)
    return SeedResult(seed, np.asarray(accuracy), wrong, np.zeros_like(wrong), 0, 0, 0, 0, 0.0)


def test_gap_closed_is_the_share_of_the_random_to_oracle_nauc_gap():
    # nAUC: random 0.5; oracle (0.75 + 1) / 2 = 0.875; mid (0.625 + 0.75) / 2 = 0.6875 -> (0.6875 - 0.5) / 0.375 = 0.5
    results = {"random": StrategyResult("random", [fake(1, [0.5, 0.5, 0.5])]),
               "oracle": StrategyResult("oracle", [fake(1, [0.5, 1.0, 1.0])]),
               "mid": StrategyResult("mid", [fake(1, [0.5, 0.75, 0.75]), fake(2, [0.5, 0.5, 0.5])])}
    gaps = gap_closed(results)
    assert gaps["random"] == [0.0] and gaps["oracle"] == [1.0]
    assert gaps["mid"][0] == 0.5
    assert gaps["mid"][1] is None  # no bound ran with seed 2
    assert gap_closed({"mid": results["mid"], "random": results["random"]}) == {}


def test_summary_has_the_new_metrics_and_gap_only_with_both_bounds(tmp_path):
    data = certain(truth=[0, 0, 0], labels=[1, 1, 0])
    run = simulate_seed(data, Strategy.build(make_selector("oracle", true_distribution=data.true_distribution)), 4, 0)
    one = {"oracle": StrategyResult("oracle", [run])}
    summary = write_summary(tmp_path / "s.json", one, {})["selectors"]["oracle"]
    assert summary["corrected_50"]["per_seed"] == [0.5] and summary["corrected_100"]["mean"] == 1.0
    assert summary["precision"]["mean"] == 1.0
    assert summary["reach_errors_halved"]["per_seed"] == [2] and summary["reach_errors_90pct_removed"]["per_seed"] == [4]
    assert "gap_closed" not in summary
    assert json.loads((tmp_path / "s.json").read_text())["selectors"]["oracle"]["precision"]["per_seed"] == [1.0]


def test_truth_selector_ranks_with_the_true_distributions_and_never_repicks():
    """The perfect-posterior bound: on certain truths every wrong label ranks first, so it matches the oracle."""
    data = certain(truth=[0, 1, 0, 1, 0, 1], labels=[1, 1, 0, 0, 0, 1])
    truth = make_selector("truth", true_distribution=data.true_distribution)
    result = simulate_seed(data, Strategy.build(truth), budget=4, seed=0)
    assert truth.default_rule == "alc" and not truth.allow_reselect
    assert list(result.initial_wrong_fixed) == [0, 0, 1, 1, 2]


def test_cli_table_shows_absolute_targets_only_below_them(tmp_path):
    """At 8% noise the data start above 90% correct: the table leaves 'to 90%' out and keeps 'to 95%'."""
    n = 100
    truth = np.eye(2)[np.zeros(n, dtype=int)]
    labels = np.zeros(n, dtype=int)
    labels[:8] = 1
    np.save(tmp_path / "truth.npy", truth)
    np.save(tmp_path / "labels.npy", labels)
    result = CliRunner().invoke(app, ["simulate", "--dataset", "arrays", "--true-dist", str(tmp_path / "truth.npy"),
                                      "--initial-labels", str(tmp_path / "labels.npy"), "--selectors",
                                      "random,oracle,truth", "--seeds", "1", "--out", str(tmp_path / "o")],
                                )
    assert result.exit_code == 0, result.output
    assert "to 90%" not in result.output and "to 95%" in result.output  # 92% correct at the start
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())["selectors"]
    assert summary["oracle"]["corrected_100"]["mean"] == 1.0  # budget 24 = 3 x 8: two votes per wrong label
    assert summary["truth"]["corrected_100"]["mean"] == 1.0
    assert summary["oracle"]["gap_closed"]["per_seed"] == [1.0]
    assert summary["truth"]["precision"]["mean"] == 8 / 16  # then the 8 right labels at one vote each
    assert "100.0%" in result.output
