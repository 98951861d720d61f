"""Simulation outputs: summary.json, curves.csv and curves.png (mean +- sd over seeds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from scoring.simulation import StrategyResult, aggregate, gap_closed

BOUNDS = ("random", "oracle", "truth")  # drawn as dashed lines: the bounds (truth: perfect posteriors)


def write_summary(path: Path, results: dict[str, StrategyResult], meta: dict[str, Any]) -> dict[str, Any]:
    """summary.json: ``meta`` plus every selector's metrics; ``gap_closed`` (the share of the random-to-oracle
    nAUC gap closed, per seed) only when both bounds ran."""
    gaps = gap_closed(results)
    selectors = {name: r.summary() | ({"gap_closed": aggregate(gaps[name])} if gaps else {})
                 for name, r in results.items()}
    summary = dict(meta) | {"selectors": selectors}
    path.write_text(json.dumps(summary, indent=2))
    return summary


def write_curves_csv(path: Path, results: dict[str, StrategyResult]) -> None:
    """Long format: one row per strategy, seed and number of re-annotations."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["strategy", "seed", "reannotations", "accuracy", "mislabelled_clear", "mislabelled_ambiguous",
                         "initial_wrong_fixed"])
        for name, result in results.items():
            for s in result.seeds:
                fixed = s.initial_wrong_fixed if s.initial_wrong_fixed is not None else [""] * len(s.accuracy)
                for j, (acc, clear, amb, fix) in enumerate(zip(s.accuracy, s.mislabelled_clear, s.mislabelled_ambiguous, fixed)):
                    writer.writerow([name, s.seed, j, f"{acc:.6f}", int(clear), int(amb), fix])


def write_estimates_csv(path: Path, results: dict[str, StrategyResult]) -> None:
    """The accuracy estimate at each checkpoint (runs with an audit): point, interval and the truth."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["strategy", "seed", "reannotations", "true_accuracy", "estimate", "low", "high", "audited"])
        for name, result in results.items():
            for s in result.seeds:
                for e in s.estimates:
                    cells = [e[k] if e[k] is None else f"{e[k]:.6f}" for k in ("accuracy", "low", "high")]
                    writer.writerow([name, s.seed, e["spent"], f"{e['truth']:.6f}", *cells, e["n_audited"]])


def plot_curves(path: Path, results: dict[str, StrategyResult], title: str = "") -> None:
    """Accuracy vs re-annotations (left) and mislabelled tasks left (right), mean +- sd bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_left) = plt.subplots(1, 2, figsize=(13, 5))
    for name, result in results.items():
        style = {"linestyle": "--", "linewidth": 1.2} if name in BOUNDS else {"linewidth": 1.8}
        acc = 100 * result.curve("accuracy")
        left = result.curve("mislabelled_clear") + result.curve("mislabelled_ambiguous")
        x = np.arange(acc.shape[1])
        for ax, values in ((ax_acc, acc), (ax_left, left)):
            mean, sd = values.mean(axis=0), values.std(axis=0)
            (line,) = ax.plot(x, mean, label=name, **style)
            ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.15)
    ax_acc.axhline(90, color="grey", linewidth=0.6)
    ax_acc.axhline(95, color="grey", linewidth=0.6)
    ax_acc.set(xlabel="re-annotations", ylabel="correct labels (%)", title="Label accuracy")
    ax_left.set(xlabel="re-annotations", ylabel="mislabelled tasks", title="Mislabelled tasks left")
    ax_acc.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(out: Path, results: dict[str, StrategyResult], meta: dict[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summary = write_summary(out / "summary.json", results, meta)
    write_curves_csv(out / "curves.csv", results)
    if any(s.estimates for r in results.values() for s in r.seeds):
        write_estimates_csv(out / "estimates.csv", results)
    title = f"{meta.get('dataset', '')}: N={meta.get('n_tasks')}, noise {100 * meta.get('initial_noise_rate', 0):.1f}%"
    plot_curves(out / "curves.png", results, title)
    return summary
