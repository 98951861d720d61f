"""Combine `alc simulate --audit-share` runs into docs/benchmarks/estimate.json and print the table of
docs/benchmarks/estimate.md.

Usage: python docs/benchmarks/estimate_table.py <out stem> <run folder>=<label> ...
Each run folder holds the summary.json of one setting, or one sub-folder per seed with its summary.json
(merged here: all checkpoints of all seeds); every selector gets a row.
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import date
from pathlib import Path


def load(folder: Path) -> dict:
    """One summary, or the per-seed summaries merged (per-seed lists concatenated, pooled coverage)."""
    if (folder / "summary.json").is_file():
        return json.loads((folder / "summary.json").read_text())
    parts = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*/summary.json"))]
    if not parts:
        raise SystemExit(f"no summary.json in {folder} or its seed folders")
    merged = dict(parts[0]) | {"wall_seconds": sum(p["wall_seconds"] for p in parts)}
    merged["selectors"] = {}
    for name in parts[0]["selectors"]:
        sel = [p["selectors"][name] for p in parts]
        est = [s["estimate"] for s in sel]
        checkpoints = [c for e in est for c in e["checkpoints"]]
        held = [c["low"] is not None and c["low"] <= c["truth"] <= c["high"] for seed in checkpoints for c in seed]

        def per_seed(key: str, source: list) -> dict:
            values = [v for x in source for v in x[key]["per_seed"]]
            known = [v for v in values if v is not None]
            mean = sum(known) / len(known) if known and len(known) == len(values) else None
            return {"mean": mean, "per_seed": values}

        merged["selectors"][name] = {
            "seeds": [x for s in sel for x in s["seeds"]],
            "final_accuracy": per_seed("final_accuracy", sel),
            "estimate": {
                "coverage": sum(held) / len(held),
                "coverage_per_seed": [c for e in est for c in e["coverage_per_seed"]],
                "abs_error_end": per_seed("abs_error_end", est),
                "width_end": per_seed("width_end", est),
                "audit_spent": per_seed("audit_spent", est),
                "corrections_lost": per_seed("corrections_lost", est),
                "checkpoints": checkpoints,
            },
        }
    return merged


def rows(folder: Path, label: str) -> list[dict]:
    summary = load(folder)
    out = []
    for name, s in summary["selectors"].items():
        est = s["estimate"]
        n = summary["n_tasks"]
        out.append({
            "setting": label,
            "selector": name,
            "n_tasks": n,
            "initial_noise": summary["initial_noise_rate"],
            "budget": summary["budget"],
            "audit_share": summary["audit_share"],
            "refit_every": summary["refit_every"],
            "seeds": s["seeds"],
            "coverage": est["coverage"],
            "coverage_per_seed": est["coverage_per_seed"],
            "abs_error_end_pt": [None if v is None else 100 * v for v in est["abs_error_end"]["per_seed"]],
            "mae_end_pt": None if est["abs_error_end"]["mean"] is None else 100 * est["abs_error_end"]["mean"],
            "width_end_pt": [None if v is None else 100 * v for v in est["width_end"]["per_seed"]],
            "audit_spent": est["audit_spent"]["per_seed"],
            "corrections_lost": est["corrections_lost"]["per_seed"],
            "final_accuracy": s["final_accuracy"]["per_seed"],
            "checkpoints": est["checkpoints"],
            "wall_seconds": summary["wall_seconds"],
        })
    return out


def fmt(values: list, pattern: str) -> str:
    return ", ".join("-" if v is None else pattern.format(v) for v in values)


def markdown(table: list[dict]) -> str:
    lines = [
        "| setting | selector | noise | budget | coverage of the 90% interval | per seed | MAE at end (pt) | per seed (pt) | "
        "width at end (pt) | audit spent | corrections lost to the audit (per seed) | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['setting']} | {r['selector']} | {100 * r['initial_noise']:.1f}% | {r['budget']} | {100 * r['coverage']:.0f}% | "
            f"{fmt([100 * c for c in r['coverage_per_seed']], '{:.0f}%')} | "
            f"{'-' if r['mae_end_pt'] is None else format(r['mae_end_pt'], '.2f')} | {fmt(r['abs_error_end_pt'], '{:.2f}')} | "
            f"{fmt(r['width_end_pt'], '{:.1f}')} | {fmt(r['audit_spent'], '{}')} | {fmt(r['corrections_lost'], '{}')} | "
            f"{r['wall_seconds'] / 60:.0f} min |"
        )
    return "\n".join(lines) + "\n"


def main(stem: str, specs: list[str]) -> None:
    table = []
    for spec in specs:
        folder, _, label = spec.partition("=")
        table.extend(rows(Path(folder), label or folder))
    meta = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, 2-core shared CPU", "rows": table}
    Path(f"{stem}.json").write_text(json.dumps(meta, indent=2))
    print(markdown(table))  # the table of docs/benchmarks/estimate.md


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
