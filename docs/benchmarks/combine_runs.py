"""Merge several `alc simulate` output folders into one table (Markdown) and one curves plot.

Usage: python docs/benchmarks/combine_runs.py OUT_STEM RUN_DIR[=LABEL] [RUN_DIR[=LABEL] ...]
LABEL renames the run's selector (the part before a rule's ':'), so two runs of one selector with different
options (e.g. ensemble presets) get rows of their own: `runs/t2-ensemble-large=ensemble[large]`.
Writes OUT_STEM.md (table), OUT_STEM.png (curves via scoring.report.plot_curves), OUT_STEM.json.
Runs with fewer seeds keep their own seed count, which the table shows.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from scoring.report import plot_curves
from scoring.simulation import SeedResult, StrategyResult


def load_results(run: Path, label: str | None = None) -> dict[str, StrategyResult]:
    rows: dict[tuple[str, int], list[tuple[float, int, int]]] = defaultdict(list)
    with (run / "curves.csv").open() as f:
        for r in csv.DictReader(f):
            rows[(r["strategy"], int(r["seed"]))].append((float(r["accuracy"]), int(r["mislabelled_clear"]), int(r["mislabelled_ambiguous"])))
    summary = json.loads((run / "summary.json").read_text())
    results: dict[str, StrategyResult] = {}
    for (name, seed), values in rows.items():
        acc, clear, amb = (np.array(v) for v in zip(*values))
        sel = summary["selectors"][name]
        k = sel["seeds"].index(seed)
        shown = name if label is None else label + name[len(name.split(":")[0]):]
        results.setdefault(shown, StrategyResult(shown)).seeds.append(SeedResult(
            seed, acc, clear, amb, 0, sel["tasks_relabelled"]["per_seed"][k], sel["cap_hits"]["per_seed"][k],
            sel["refits"]["per_seed"][k], sel["fit_seconds"]["per_seed"][k]))
    return results


def fmt(values: list, pattern: str = "{:.0f}") -> str:
    known = [v for v in values if v is not None]
    if len(known) < len(values):
        return f"not reached ({len(known)}/{len(values)} seeds)" if known else "not reached"
    return f"{pattern.format(np.mean(known))} ± {pattern.format(np.std(known))}"


def main(out_stem: str, runs: list[str]) -> None:
    merged: dict[str, StrategyResult] = {}
    metas = []
    wall: dict[str, float] = {}
    for spec in runs:
        run, _, label = spec.partition("=")
        run = Path(run)
        results = load_results(run, label or None)
        merged.update(results)
        metas.append(json.loads((run / "summary.json").read_text()))
        wall.update({name: metas[-1]["wall_seconds"] for name in results})
    meta = metas[0]
    lines = [
        f"CIFAR-10H, N={meta['n_tasks']}, initial noise {100 * meta['initial_noise_rate']:.1f}%, "
        f"budget {meta['budget']} re-annotations. Mean ± sd over seeds.",
        "",
        "| strategy | seeds | re-annotations to 90% | to 95% | nAUC | final accuracy | training s per seed (fit + refits) | refits | wall s of its run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    table = {}
    for name, r in merged.items():
        s = [x for x in r.seeds]
        row = {
            "seeds": [x.seed for x in s],
            "reach_90": [x.reach(0.90) for x in s],
            "reach_95": [x.reach(0.95) for x in s],
            "nauc": [x.nauc for x in s],
            "final_accuracy": [x.final_accuracy for x in s],
            "fit_seconds": [x.fit_seconds for x in s],
            "refits": [x.refits for x in s],
            "per_seed": {"reach_90": [x.reach(0.90) for x in s], "nauc": [round(x.nauc, 4) for x in s]},
            "wall_seconds_of_run": wall[name],
        }
        table[name] = row
        lines.append(f"| {name} | {len(s)} | {fmt(row['reach_90'])} | {fmt(row['reach_95'])} | {fmt(row['nauc'], '{:.3f}')} | "
                     f"{fmt(row['final_accuracy'], '{:.3f}')} | {fmt(row['fit_seconds'], '{:.1f}')} | {fmt(row['refits'])} | {wall[name]:.0f} |")
    lines += ["", "Per seed (seeds " + ", ".join(map(str, meta["seeds"])) + "):", "",
              "| strategy | reach 90% per seed | nAUC per seed |", "|---|---|---|"]
    for name, row in table.items():
        reach = ", ".join("never" if v is None else str(v) for v in row["per_seed"]["reach_90"])
        lines.append(f"| {name} | {reach} | {', '.join(f'{v:.4f}' for v in row['per_seed']['nauc'])} |")
    Path(f"{out_stem}.md").write_text("\n".join(lines) + "\n")
    Path(f"{out_stem}.json").write_text(json.dumps({"runs": metas, "strategies": table}, indent=2))
    plot_curves(Path(f"{out_stem}.png"), merged,
                f"CIFAR-10H N={meta['n_tasks']}, noise {100 * meta['initial_noise_rate']:.1f}%: learned selectors (CPU)")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
