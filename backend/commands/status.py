"""`alc status [--project ID] [--json]`: the dashboard's numbers and the job queue (with rq's failed-job registry) in a terminal."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from backend.commands import exit_on_user_errors

if TYPE_CHECKING:
    from backend.settings import Settings

QUEUE_ROWS = 20


def status(
    project: Annotated[Optional[int], typer.Option("--project", min=1, help="Label Studio project id; "
                                                   "without it only the job queue is shown")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the status as JSON (the same as GET /api/status)")] = False,
    target: Annotated[float, typer.Option(help="accuracy the forecast aims at, between 0 and 1")] = 0.95,
) -> None:
    """Budget spent and left, labels changed, the estimated label accuracy, the queue, and the jobs.

    With no settings it reads the deployment that `alc demo` / `alc serve` runs (their profile)."""
    if not 0 < target < 1:
        raise typer.BadParameter(f"must be between 0 and 1, got {target}", param_hint="--target")
    from backend.queue import PROJECTS_KEY
    from backend.settings import load_settings
    from backend.status import jobs_status

    console = Console()
    with exit_on_user_errors("status"):
        settings = load_settings()
        redis_conn, redis_note = _redis(settings)
        if project is None:
            jobs = jobs_status(redis_conn, 0) if redis_conn is not None else {"error": redis_note}
            known = sorted(int(p) for p in redis_conn.smembers(PROJECTS_KEY)) if "error" not in jobs else []
            if as_json:
                typer.echo(json.dumps({"jobs": jobs, "projects": known}, indent=2, default=str))
            else:
                _print_jobs(console, jobs)
                console.print(f"Projects that sent webhooks here: {', '.join(map(str, known)) or 'none yet'}; "
                              "add --project ID for one project's budget and queue.")
            return
        from backend.model_store import ModelStore
        from backend.status import build_status, read_truth
        from connectors.client import connect
        from connectors.ledger import reconcile

        url, key = settings.require_label_studio()
        client = connect(url, key, timeout=settings.label_studio_timeout, retries=2)
        ledger = reconcile(client, project, settings.initial_label_source, settings.budget,
                           settings.max_annotations_per_task)
        data = build_status(client, ledger, store=ModelStore(settings.models_path), redis_conn=redis_conn,
                            target=target, budget=settings.budget, truth=read_truth(settings.data_home, project),
                            audit_share=settings.audit_share)
        if redis_conn is None:
            data["jobs"] = {"error": redis_note}
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        _print_status(console, data)


def _redis(settings: Settings) -> tuple[Any, str]:
    """The job queue's Redis, without starting one: REDIS_URL, or the embedded one if `alc serve` runs it."""
    from backend.queue import EmbeddedRedis
    from backend.queue import connect as connect_redis

    if settings.redis_url is not None:
        return connect_redis(settings.redis_url, fast_fail=True), ""
    embedded = EmbeddedRedis(settings.data_home)
    if embedded.running():
        return connect_redis(embedded.url, fast_fail=True), ""
    return None, f"no Redis: REDIS_URL is not set and no `alc serve` runs an embedded one in {settings.data_home}"


class _Table(Table):
    """A rich table whose cells are plain text (an error message with [brackets] is not markup)."""

    def add_row(self, *cells: str) -> None:  # type: ignore[override]
        super().add_row(*(escape(str(c)) for c in cells))


def _table(title: str, *columns: str) -> Table:
    table = _Table(title=title, title_justify="left", title_style="bold", show_header=any(columns))
    for column in columns:
        table.add_column(column, justify="right" if column in ("#", "spent", "priority", "noisiness", "ambiguity",
                                                               "re-annotations", "mean time (s)", "agreement", "queued", "running",
                                                               "scheduled", "failed") else "left")
    return table


def _print_status(console: Console, s: dict) -> None:
    b, t, e = s["budget"], s["tasks"], s["estimate"]
    console.print(f"[bold]{escape(s['project']['title'])}[/bold] (project {s['project']['id']}) {s['project']['url']}")
    console.print(f"Label Studio serves by model version {s['model_version'] or 'none yet'}; "
                  f"latest model: {s['model']['version'] or 'none trained yet'}")
    if b["exhausted"]:
        console.print("[bold red]Budget spent: the cleaning queue is closed.[/bold red]")

    summary = _table("Budget and progress", "", "")
    summary.add_row("budget (re-annotations)", str(b["total"]) if b["total"] is not None else "no limit")
    summary.add_row("spent", str(b["spent"]))
    summary.add_row("held to finish the open tasks", f"{b['held']} ({b['committed']} open slots)")
    summary.add_row("remaining", str(b["remaining"]) if b["remaining"] is not None else "-")
    summary.add_row("tasks settled", f"{t['settled']} of {t['total']}")
    summary.add_row("labels changed", str(t["labels_changed"]))
    if s.get("truth"):
        truth = s["truth"]
        summary.add_row("labels corrected (truth known)", f"{truth['labels_corrected']} ({truth['labels_broken']} broken); "
                                                         f"accuracy {100 * truth['accuracy']:.1f}%, was {100 * truth['initial_accuracy']:.1f}%")
    for label, value in estimate_rows(e, b, s["project"]["id"]):
        summary.add_row(label, value)
    console.print(summary)

    queue = _table(f"Cleaning queue ({len(s['queue'])} open)", "#", "task", "priority", "labels so far", "link")
    for i, row in enumerate(s["queue"][:QUEUE_ROWS], 1):
        queue.add_row(str(i), f"task {row['task_id']}", _num(row["priority"]),
                      ", ".join(f"{k}: {v}" for k, v in row["counts"].items()), row["url"] or "")
    console.print(queue)

    changes = _table("Recent label changes", "task", "from", "to", "when")
    for c in s["recent_changes"]:
        changes.add_row(f"task {c['task_id']}", str(c["from"]), str(c["to"]), c["time"] or "-")
    console.print(changes)

    people = _table("Annotators", "annotator", "re-annotations", "mean time (s)", "agreement")
    for a in s["annotators"]:
        agreement = a.get("agreement_with_final")
        people.add_row(a["annotator"], str(a["annotations"]), _num(a["mean_lead_time"], 1),
                       f"{100 * agreement:.0f}% of {a['on_settled_tasks']}" if agreement is not None else "-")
    console.print(people)
    _print_jobs(console, s.get("jobs") or {"error": "not connected to the job queue"})


def estimate_rows(e: dict, b: dict, project_id: int) -> list[tuple[str, str]]:
    """The estimate's lines, as the dashboard words them (no number before an audit draw settled)."""
    if not e["available"]:
        return [("estimated label accuracy", f"- ({e['reason']})")]
    conf = f"{100 * e['confidence']:.0f}%"
    low, high = e["accuracy_interval"]
    rows = [("estimated label accuracy", f"{100 * e['accuracy']:.1f}% ({conf}: {100 * low:.1f}-{100 * high:.1f}%)"),
            ("labels still wrong", f"{e['labels_wrong']} ({conf}: {e['labels_wrong_interval'][0]}-"
                                   f"{e['labels_wrong_interval'][1]})")]
    target = f"{100 * e['target']:.0f}%"
    if e["forecast_spend"]:
        f_low, f_high = e["forecast_interval"]
        rows.append((f"re-annotations to {target}", f"{e['forecast_spend']} ({f_low}-{f_high if f_high is not None else '?'})"))
        s_low, s_high = e["suggested_budget_range"]
        rows.append(("suggested budget", f"{e['suggested_budget']} ({s_low}-{s_high if s_high is not None else '?'}) = "
                                         f"{b['spent']} spent + {e['forecast_spend']}; accept: alc connect --project "
                                         f"{project_id} --budget {e['suggested_budget']}"))
    else:
        rows.append((f"re-annotations to {target}", "0: the estimate says it is reached"))
    rows.append(("estimate basis", f"{e['basis']}; forecast: {e['forecast_basis']}; cost: {e['cost_basis']}"))
    return rows


def _print_jobs(console: Console, jobs: dict) -> None:
    if "error" in jobs:
        console.print(f"[red]Jobs: {escape(jobs['error'])}[/red]")
        return
    queues = _table("Job queues", "queue", "queued", "running", "scheduled", "failed")
    for name, q in jobs["queues"].items():
        queues.add_row(name, str(q["depth"]), str(q["started"]), str(q["scheduled"]), str(q["failed"]))
    console.print(queues)
    workers = ", ".join(f"{w['name']} ({w['state']})" for w in jobs["workers"]) or "none running"
    console.print(f"Workers: {workers}")
    if jobs.get("stars_left"):
        console.print(f"Ground-truth stars still to take off (in the background, before any of their tasks opens): "
                      f"{jobs['stars_left']}")
    if jobs["failed_jobs"]:
        failed = _table("Failed jobs (rq's failed-job registry)", "queue", "job", "ended", "error")
        for f in jobs["failed_jobs"]:
            failed.add_row(f["queue"], f"{f['description']} [{f['id']}]", f["ended_at"] or "-", f["error"])
        console.print(failed)


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
