"""`alc simulate`: the relabelling simulation on CIFAR-10H or on a user's own arrays."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.console import Console
from rich.table import Table

from backend.commands import output_folder, positive

console = Console()
Dataset = Literal["cifar10h", "arrays"]


def _choices_help() -> str:
    """The selectors and rules `--selectors` accepts, for `alc simulate --help` (third-party ones come from entry points)."""
    from scoring.rules import BUILTIN_RULES
    from scoring.selectors import BUILTIN_SELECTORS

    return (f"comma-separated selector[:rule], e.g. random,oracle,pretrained-linear,pretrained-linear:activelab. "
            f"Selectors: {', '.join(BUILTIN_SELECTORS)} (plus 'alc.selectors' entry points). "
            f"Rules: {', '.join(BUILTIN_RULES)} (default: the selector's own). "
            "Options per selector go in --selector-options, e.g. "
            '\'{"ensemble": {"members": "pretrained-linear,ssl-linear"}}\'.')



def parse_strategy(spec: str) -> tuple[str, str | None]:
    """'selector' or 'selector:rule' -> (selector, rule or None for the selector's default rule)."""
    selector, _, rule = spec.strip().partition(":")
    if not selector:
        raise typer.BadParameter(f"empty selector in {spec!r}")
    return selector, rule or None


def _seed_list(value: str) -> str:
    """--seeds: comma-separated integers, checked before any data is read."""
    try:
        if not [int(s) for s in value.split(",") if s.strip()]:
            raise ValueError("no seed")
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1,2,3") from None
    return value


def _json_object(value: str) -> str:
    """--selector-options: a JSON object, checked before any data is read."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise typer.BadParameter(f"not valid JSON ({err})") from None
    if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
        raise typer.BadParameter('expected {"selector": {"param": value}}')
    return value


def simulate(
    dataset: Annotated[Dataset, typer.Option(help="'cifar10h', or 'arrays' with --true-dist and --initial-labels/--initial-counts")] = "cifar10h",
    data_dir: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="CIFAR-10H folder (default: $ALC_DATA_DIR, else ../shared/data)")] = None,
    subset: Annotated[int, typer.Option(min=2, help="CIFAR-10H subset size: all ambiguous images plus a seeded random rest")] = 5000,
    temperature: Annotated[float, typer.Option(callback=positive, help="initial labels drawn from p^(1/T): T=2 ~15% noise, T=10 ~30%")] = 2.0,
    data_seed: Annotated[int, typer.Option(help="seed of the subset and the initial labels (the same noisy dataset for all runs)")] = 0,
    true_dist: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="arrays: (N, C) .npy of true label distributions")] = None,
    initial_labels: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="arrays: (N,) .npy of initial labels")] = None,
    initial_counts: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="arrays: (N, C) .npy of initial label counts")] = None,
    images: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="arrays: (N, H, W, 3) uint8 or (N, D) features .npy, for learned selectors")] = None,
    posteriors: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="(N, C) .npy for the 'posteriors' selector")] = None,
    selectors: Annotated[str, typer.Option(help=_choices_help())] = "random,oracle",
    seeds: Annotated[str, typer.Option(callback=_seed_list, help="comma-separated simulation seeds")] = "1,2,3,4,5",
    budget_factor: Annotated[float, typer.Option(callback=positive, help="budget = factor x N x initial noise rate")] = 3.0,
    budget: Annotated[Optional[int], typer.Option(min=1, help="budget in re-annotations (overrides --budget-factor)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="tasks taken per ranking (1 = the paper)")] = 1,
    refit_every: Annotated[int, typer.Option(min=0, help="refit the selector every k re-annotations (0 = never)")] = 0,
    max_per_task: Annotated[int, typer.Option(min=1, help="cap on re-annotations per selection of a task")] = 10,
    audit_share: Annotated[float, typer.Option(help="share of the budget spent on random audit draws, with the accuracy estimate at 10%, ..., 100% of the budget (0 = no audit)")] = 0.0,
    selector_options: Annotated[str, typer.Option(callback=_json_object, help='JSON: {"selector": {"param": value}} passed to selectors')] = "{}",
    cache_dir: Annotated[Path, typer.Option(help="embedding caches and checkpoints of learned selectors")] = Path(".alc/cache"),
    out: Annotated[Optional[Path], typer.Option(callback=output_folder, help="output folder (default runs/simulate-<time>)")] = None,
) -> None:
    """Simulate active label cleaning: accuracy vs re-annotations for each selector, with random and oracle as bounds."""
    from scoring.data import load_arrays, load_cifar10h, resolve_data_dir
    from scoring.ranking import Strategy
    from scoring.rules import get_rule
    from scoring.report import write_all
    from scoring.selectors import check_options, make_selector, selector_class
    from scoring.progress import progress
    from scoring.simulation import simulate as run

    if not 0.0 <= audit_share < 1.0:
        raise typer.BadParameter(f"--audit-share must be in [0, 1) (got {audit_share})")
    specs = [parse_strategy(s) for s in selectors.split(",") if s.strip()]
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    options: dict[str, dict[str, Any]] = json.loads(selector_options)  # a JSON object: checked by _json_object
    try:
        needs_images = any(selector_class(name).needs_data for name, _ in specs)
        for name, given in options.items():
            check_options(name, given)
        for _, rule in specs:
            if rule is not None:
                get_rule(rule)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--selectors / --selector-options") from err
    if dataset == "arrays" and true_dist is None:
        raise typer.BadParameter("--dataset arrays needs --true-dist")
    if dataset == "cifar10h" and not resolve_data_dir(data_dir).is_dir():
        raise typer.BadParameter(f"no CIFAR-10H folder at {resolve_data_dir(data_dir)} (set --data-dir or ALC_DATA_DIR)",
                                 param_hint="--data-dir")

    if dataset == "cifar10h":
        data = load_cifar10h(data_dir, subset, temperature, data_seed, with_images=needs_images)
        source = f"cifar10h (subset {subset}, T={temperature}, data seed {data_seed}) from {resolve_data_dir(data_dir)}"
    else:
        data = load_arrays(true_dist, initial_labels, initial_counts, images)
        source = f"arrays from {true_dist}"
    if needs_images and data.images is None:
        raise typer.BadParameter("a learned selector needs --images")

    n_budget = budget if budget is not None else data.budget_for(budget_factor)
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
    with progress("simulating", len(strategies) * len(seed_list), transient=False, every_fraction=0) as advance:
        try:
            results = run(data, strategies, n_budget, seed_list, batch_size, refit_every, max_per_task,
                          lambda name, seed: advance(1, f"{name} seed {seed} done"), audit_share)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from err
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
        "audit_share": audit_share,
        "seeds": seed_list,
        "wall_seconds": wall,
    }
    summary = write_all(out, results, meta)
    print_table(summary)
    if audit_share:
        print_estimate_table(summary)
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


def print_estimate_table(summary: dict[str, Any]) -> None:
    """How the audit-based accuracy estimate did: interval coverage, error at the end, corrections the audit cost."""
    table = Table(title=f"accuracy estimate with a {100 * summary['audit_share']:.0f}% audit (10 checkpoints per seed)")
    for col in ("selector", "coverage", "|error| at end (pt)", "interval width at end (pt)", "corrections lost to the audit"):
        table.add_column(col, justify="right" if col != "selector" else "left")
    for name, s in summary["selectors"].items():
        est = s.get("estimate")
        if not est:
            continue
        per_pt = {k: {"mean": None if v["mean"] is None else 100 * v["mean"], "sd": None if v["sd"] is None else 100 * v["sd"],
                      "per_seed": v["per_seed"]} for k, v in est.items() if k in ("abs_error_end", "width_end")}
        table.add_row(
            name,
            f"{100 * est['coverage']:.0f}% (90% interval)",
            _fmt(per_pt["abs_error_end"], "{:.1f}"),
            _fmt(per_pt["width_end"], "{:.1f}"),
            _fmt(est["corrections_lost"]),
        )
    console.print(table)


def _fmt(metric: dict[str, Any], pattern: str = "{:.0f}", sd: bool = True) -> str:
    if metric["mean"] is None:
        reached = [v for v in metric["per_seed"] if v is not None]
        return f"never ({len(reached)}/{len(metric['per_seed'])})" if reached else "never"
    return pattern.format(metric["mean"]) + (f" ± {pattern.format(metric['sd'])}" if sd else "")
