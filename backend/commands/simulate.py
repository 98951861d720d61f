"""`alc simulate`: the relabelling simulation on CIFAR-10H or on a user's own arrays."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()


def _choices_help() -> str:
    """The selectors and rules `--selectors` accepts, for `alc simulate --help` (third-party ones come from entry points)."""
    from scoring.rules import BUILTIN_RULES
    from scoring.selectors import BUILTIN_SELECTORS

    return (f"comma-separated selector[:rule], e.g. random,oracle,pretrained-linear,pretrained-linear:activelab. "
            f"Selectors: {', '.join(BUILTIN_SELECTORS)} (plus 'alc.selectors' entry points). "
            f"Rules: {', '.join(BUILTIN_RULES)} (default: the selector's own). "
            "Options per selector go in --selector-options, e.g. "
            '\'{"ensemble": {"members": "pretrained-linear,ssl-linear"}}\'.')


SELECTORS_HELP = _choices_help()


def parse_strategy(spec: str) -> tuple[str, str | None]:
    """'selector' or 'selector:rule' -> (selector, rule or None for the selector's default rule)."""
    selector, _, rule = spec.strip().partition(":")
    if not selector:
        raise typer.BadParameter(f"empty selector in {spec!r}")
    return selector, rule or None


def simulate(
    dataset: Annotated[str, typer.Option(help="'cifar10h', or 'arrays' with --true-dist and --initial-labels/--initial-counts")] = "cifar10h",
    data_dir: Annotated[Optional[Path], typer.Option(help="CIFAR-10H folder (default: $ALC_DATA_DIR, else ../shared/data)")] = None,
    subset: Annotated[int, typer.Option(help="CIFAR-10H subset size: all ambiguous images plus a seeded random rest")] = 5000,
    temperature: Annotated[float, typer.Option(help="initial labels drawn from p^(1/T): T=2 ~15% noise, T=10 ~30%")] = 2.0,
    data_seed: Annotated[int, typer.Option(help="seed of the subset and the initial labels (the same noisy dataset for all runs)")] = 0,
    true_dist: Annotated[Optional[Path], typer.Option(help="arrays: (N, C) .npy of true label distributions")] = None,
    initial_labels: Annotated[Optional[Path], typer.Option(help="arrays: (N,) .npy of initial labels")] = None,
    initial_counts: Annotated[Optional[Path], typer.Option(help="arrays: (N, C) .npy of initial label counts")] = None,
    images: Annotated[Optional[Path], typer.Option(help="arrays: (N, H, W, 3) uint8 or (N, D) features .npy, for learned selectors")] = None,
    posteriors: Annotated[Optional[Path], typer.Option(help="(N, C) .npy for the 'posteriors' selector")] = None,
    selectors: Annotated[str, typer.Option(help=SELECTORS_HELP)] = "random,oracle",
    seeds: Annotated[str, typer.Option(help="comma-separated simulation seeds")] = "1,2,3,4,5",
    budget_factor: Annotated[float, typer.Option(help="budget = factor x N x initial noise rate")] = 3.0,
    budget: Annotated[Optional[int], typer.Option(help="budget in re-annotations (overrides --budget-factor)")] = None,
    batch_size: Annotated[int, typer.Option(help="tasks taken per ranking (1 = the paper)")] = 1,
    refit_every: Annotated[int, typer.Option(help="refit the selector every k re-annotations (0 = never)")] = 0,
    max_per_task: Annotated[int, typer.Option(help="cap on re-annotations per selection of a task")] = 10,
    selector_options: Annotated[str, typer.Option(help='JSON: {"selector": {"param": value}} passed to selectors')] = "{}",
    cache_dir: Annotated[Path, typer.Option(help="embedding caches and checkpoints of learned selectors")] = Path(".alc/cache"),
    out: Annotated[Optional[Path], typer.Option(help="output folder (default runs/simulate-<time>)")] = None,
) -> None:
    """Simulate active label cleaning: accuracy vs re-annotations for each selector, with random and oracle as bounds."""
    from scoring.data import load_arrays, load_cifar10h, resolve_data_dir
    from scoring.ranking import Strategy
    from scoring.report import write_all
    from scoring.selectors import make_selector, selector_class
    from scoring.simulation import simulate as run

    specs = [parse_strategy(s) for s in selectors.split(",") if s.strip()]
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    try:
        options: dict[str, dict[str, Any]] = json.loads(selector_options)
    except json.JSONDecodeError as err:
        raise typer.BadParameter(f"--selector-options is not valid JSON: {err}") from err
    try:
        needs_images = any(selector_class(name).needs_data for name, _ in specs)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err

    if dataset == "cifar10h":
        data = load_cifar10h(data_dir, subset, temperature, data_seed, with_images=needs_images)
        source = f"cifar10h (subset {subset}, T={temperature}, data seed {data_seed}) from {resolve_data_dir(data_dir)}"
    elif dataset == "arrays":
        if true_dist is None:
            raise typer.BadParameter("--dataset arrays needs --true-dist")
        data = load_arrays(true_dist, initial_labels, initial_counts, images)
        source = f"arrays from {true_dist}"
    else:
        raise typer.BadParameter(f"unknown dataset {dataset!r}: use 'cifar10h' or 'arrays'")
    if needs_images and data.images is None:
        raise typer.BadParameter("a learned selector needs --images")

    n_budget = budget if budget is not None else int(round(budget_factor * data.n_tasks * data.initial_noise_rate))
    context = {
        "true_distribution": data.true_distribution,
        "posteriors": posteriors,
        "n_classes": data.n_classes,
        "cache_dir": cache_dir,
        "device": None,
    }

    shared: dict[tuple[str, int], FitOnce] = {}  # one selector per (name, seed): rule variants reuse its fit

    def factory(name: str, rule: str | None):
        def build(seed: int) -> Strategy:
            if (name, seed) not in shared:
                shared[(name, seed)] = FitOnce(make_selector(name, options.get(name), seed=seed, **context))
            return Strategy.build(shared[(name, seed)], rule)
        return build

    strategies = {(name if rule is None else f"{name}:{rule}"): factory(name, rule) for name, rule in specs}
    out = out or Path("runs") / f"simulate-{datetime.now():%Y%m%d-%H%M%S}"
    console.print(
        f"[bold]{source}[/]: N={data.n_tasks}, C={data.n_classes}, initial noise {100 * data.initial_noise_rate:.1f}%, "
        f"budget {n_budget} re-annotations"
    )
    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        job = bar.add_task("simulating", total=len(strategies) * len(seed_list))

        def tick(name: str, seed: int) -> None:
            bar.update(job, advance=1, description=f"{name} seed {seed}")

        results = run(data, strategies, n_budget, seed_list, batch_size, refit_every, max_per_task, tick)
    wall = time.perf_counter() - started
    meta = {
        "dataset": dataset,
        "source": source,
        "n_tasks": data.n_tasks,
        "n_classes": data.n_classes,
        "initial_noise_rate": data.initial_noise_rate,
        "budget": n_budget,
        "budget_factor": budget_factor if budget is None else None,
        "batch_size": batch_size,
        "refit_every": refit_every,
        "max_per_task": max_per_task,
        "seeds": seed_list,
        "wall_seconds": wall,
    }
    summary = write_all(out, results, meta)
    print_table(summary)
    console.print(f"{len(strategies)} strategies x {len(seed_list)} seeds in {wall:.1f} s; wrote {out}/summary.json, curves.csv, curves.png")


class FitOnce:
    """A selector whose ``fit`` on the same data and counts as its last fit is a no-op.

    ``pretrained-linear`` and ``pretrained-linear:activelab`` at one seed fit the same model on the same
    noisy labels; the simulation then pays for it once. Any ``update`` makes the next ``fit`` real again.
    """

    def __init__(self, selector: Any) -> None:
        self.selector = selector
        self.last_fit: tuple[str, str] | None = None

    def fit(self, data: Any, label_counts: Any) -> "FitOnce":
        import numpy as np

        from scoring.hashing import images_hash

        key = (images_hash(np.asarray(data)) if data is not None else "", images_hash(np.asarray(label_counts)))
        if key != self.last_fit:
            self.selector.fit(data, label_counts)
            self.last_fit = key
        return self

    def update(self, data: Any, label_counts: Any) -> "FitOnce":
        self.last_fit = None
        self.selector.update(data, label_counts)
        return self

    def __getattr__(self, name: str) -> Any:  # predict_proba, default_rule, allow_reselect, version, ...
        return getattr(self.selector, name)


def print_table(summary: dict[str, Any]) -> None:
    """Two tables of means over seeds (± sd for the headline figures; every seed's in summary.json): how the
    initial errors fare, which means something at any noise level, then the accuracy figures, where an
    absolute target shows only when the data start below it."""
    start = 1.0 - summary["initial_noise_rate"]
    errors = {
        "fixed at 25%": lambda s: _fmt(s["corrected_25"], "{:.1%}", sd=False),
        "50%": lambda s: _fmt(s["corrected_50"], "{:.1%}", sd=False),
        "100% of budget": lambda s: _fmt(s["corrected_100"], "{:.1%}"),
        "precision": lambda s: _fmt(s["precision"], "{:.1%}", sd=False),
        "errors halved": lambda s: _fmt(s["reach_errors_halved"], sd=False),
        "down 90%": lambda s: _fmt(s["reach_errors_90pct_removed"], sd=False),
    }
    accuracy = {
        **{f"to {round(100 * t)}%": (lambda s, k=f"reach_{round(100 * t)}": _fmt(s[k], sd=False))
           for t in (0.90, 0.95) if start < t},
        "nAUC": lambda s: _fmt(s["nauc"], "{:.4f}"),
        **({"gap closed": lambda s: _fmt(s["gap_closed"], "{:.3f}", sd=False)}
           if any("gap_closed" in s for s in summary["selectors"].values()) else {}),
        "final accuracy": lambda s: _fmt(s["final_accuracy"], "{:.2%}", sd=False),
        "fit s": lambda s: _fmt(s["fit_seconds"], "{:.0f}", sd=False),
    }
    titles = (f"Initial errors ({100 * summary['initial_noise_rate']:.2f}% of labels), budget {summary['budget']}: "
              "share corrected at 25/50/100% of the budget, share of picks that were wrong, re-annotations until "
              "the errors are halved / down 90%",
              "Label accuracy: re-annotations to reach it (shown when the data start below), nAUC, the share of "
              "the random-to-oracle nAUC gap closed")
    for title, columns in zip(titles, (errors, accuracy)):
        table = Table(title=title)
        table.add_column("selector", no_wrap=True)
        for col in columns:
            table.add_column(col, justify="right")
        for name, s in summary["selectors"].items():
            table.add_row(name, *(cell(s) for cell in columns.values()))
        console.print(table)


def _fmt(metric: dict[str, Any], pattern: str = "{:.0f}", sd: bool = True) -> str:
    if metric["mean"] is None:
        reached = [v for v in metric["per_seed"] if v is not None]
        return f"never ({len(reached)}/{len(metric['per_seed'])})" if reached else "never"
    return pattern.format(metric["mean"]) + (f" ± {pattern.format(metric['sd'])}" if sd else "")
