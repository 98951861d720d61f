"""`alc simulate` end to end: files, summary keys, a user's own arrays, clear errors."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from backend.cli import app

runner = CliRunner()


def test_simulate_cifar10h_writes_summary_curves_and_plot(tmp_path, data_dir):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["simulate", "--data-dir", str(data_dir), "--subset", "600", "--selectors", "random,oracle,linear:activelab",
         "--seeds", "1,2", "--budget-factor", "1", "--out", str(out),
         "--selector-options", '{"linear": {"image_size": 4, "folds": 2}}'],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_tasks"] == 600
    assert summary["budget"] == round(600 * summary["initial_noise_rate"])
    assert set(summary["selectors"]) == {"random", "oracle", "linear:activelab"}
    for metrics in summary["selectors"].values():
        for key in ("reach_90", "reach_95", "nauc", "final_accuracy"):
            assert set(metrics[key]) == {"mean", "sd", "per_seed"} and len(metrics[key]["per_seed"]) == 2
    rows = (out / "curves.csv").read_text().splitlines()
    assert rows[0].startswith("strategy,seed,reannotations,accuracy")
    assert len(rows) == 1 + 3 * 2 * (summary["budget"] + 1)
    assert (out / "curves.png").stat().st_size > 10_000
    assert "oracle" in result.output and "nAUC" in result.output


def test_simulate_on_users_arrays(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3) * 0.3, 200)
    np.save(tmp_path / "truth.npy", probs)
    np.save(tmp_path / "initial.npy", rng.integers(0, 3, 200))
    result = runner.invoke(
        app,
        ["simulate", "--dataset", "arrays", "--true-dist", str(tmp_path / "truth.npy"), "--initial-labels",
         str(tmp_path / "initial.npy"), "--budget", "50", "--seeds", "1", "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["budget"] == 50


def test_simulate_rejects_bad_options(tmp_path, data_dir):
    bad_json = runner.invoke(app, ["simulate", "--data-dir", str(data_dir), "--selector-options", "{nope"])
    assert bad_json.exit_code != 0 and "selector-options" in bad_json.output.replace("\n", "")
    unknown = runner.invoke(app, ["simulate", "--data-dir", str(data_dir), "--selectors", "nope"])
    assert unknown.exit_code != 0 and "unknown selector" in unknown.output
    no_truth = runner.invoke(app, ["simulate", "--dataset", "arrays"])
    assert no_truth.exit_code != 0 and "--true-dist" in no_truth.output


def test_rule_variants_of_a_selector_share_its_fit_per_seed(tmp_path, monkeypatch):
    from scoring.selectors.linear import LinearSelector

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3) * 0.3, 120)
    for name, array in {"truth": probs, "initial": rng.integers(0, 3, 120), "x": rng.normal(size=(120, 4))}.items():
        np.save(tmp_path / f"{name}.npy", array)
    fits = []
    real_fit = LinearSelector.fit
    monkeypatch.setattr(LinearSelector, "fit", lambda self, *a: fits.append(self.seed) or real_fit(self, *a))
    args = ["simulate", "--dataset", "arrays", "--true-dist", str(tmp_path / "truth.npy"), "--initial-labels",
            str(tmp_path / "initial.npy"), "--images", str(tmp_path / "x.npy"), "--budget", "30", "--seeds", "1,2"]
    result = runner.invoke(app, [*args, "--selectors", "linear,linear:activelab,linear:self-confidence", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert fits == [1, 2]  # one fit per seed for the three rules
    result = runner.invoke(app, [*args, "--selectors", "linear,linear:activelab", "--refit-every", "10", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    # linear's update is a fit: each rule fits afresh at its start (the shared model was refitted since)
    assert fits[2:] == [1, 1, 1, 2, 2, 2] * 2
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())["selectors"]
    assert summary["linear"]["refits"]["per_seed"] == summary["linear:activelab"]["refits"]["per_seed"] == [2, 2]


def test_simulate_with_an_audit_writes_the_estimate(tmp_path, data_dir):
    out = tmp_path / "audit"
    result = runner.invoke(
        app,
        ["simulate", "--data-dir", str(data_dir), "--subset", "600", "--selectors", "random", "--seeds", "1",
         "--budget-factor", "1", "--audit-share", "0.05", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit_share"] == 0.05
    assert {"coverage", "abs_error_end", "corrections_lost"} <= set(summary["selectors"]["random"]["estimate"])
    rows = (out / "estimates.csv").read_text().splitlines()
    assert rows[0].startswith("strategy,seed,reannotations,true_accuracy,estimate,low,high") and len(rows) == 11
    assert "coverage" in result.output
    bad = runner.invoke(app, ["simulate", "--data-dir", str(data_dir), "--audit-share", "1.5"])
    assert bad.exit_code != 0 and "--audit-share" in bad.output
