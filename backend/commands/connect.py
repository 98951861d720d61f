"""`alc connect --project ID`: set a Label Studio project up for the cleaning queue and print what was set."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from backend.commands import exit_on_user_errors, http_url

if TYPE_CHECKING:
    from backend.settings import Settings
    from connectors.counts import ProjectSnapshot


def connect(
    project: Annotated[int, typer.Option("--project", min=1, help="Label Studio project id")],
    backend_url: Annotated[Optional[str], typer.Option(callback=http_url, help="this backend's URL as Label Studio reaches it: registers "
                                                             "the ML backend and the webhook (default: the running "
                                                             "`alc demo` / `alc serve`, from its profile)")] = None,
    window: Annotated[Optional[int], typer.Option(min=1, help="open tasks at a time for this project (else ALC_WINDOW applies)")] = None,
    budget: Annotated[Optional[int], typer.Option(min=0, help="re-annotations to spend on this project (default: ALC_BUDGET)")] = None,
) -> None:
    """Sampling, overlap-first, webhook, ML backend, the 'Cleaning queue' tab, the baseline and the budget."""
    from backend import profile
    from backend.settings import load_settings
    from connectors.client import connect as connect_client
    from connectors.setup import configure_project
    from scoring.progress import heartbeat

    with exit_on_user_errors("connect"):
        settings = load_settings()
        url, key = settings.require_label_studio()
        backend_url = backend_url or profile.read().get("backend_url")
        client = connect_client(url, key, timeout=settings.label_studio_timeout, retries=3)
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        built: list[str] = []
        with heartbeat(f"connecting project {project} (reads every task once: minutes for a big project)"):
            report = configure_project(
                client, project, backend_url=backend_url, webhook_secret=secret,
                budget=budget if budget is not None else settings.budget,
                window=window,
                basic_auth=settings.basic_auth, initial_label_source=settings.initial_label_source,
                on_read=lambda snapshot, started: built.append(_working_state(settings, client, snapshot, started)),
            )
        report["working_state"] = built[0] if built else "not built (the first retrain reads the project)"
    if isinstance(report.get("baseline"), str):  # annotation ids are server-wide: "ids <= 900" for 400 tasks puzzled people
        text = re.sub(r"\(ids <= (\d+)\)", r"(annotation ids up to \1; Label Studio numbers them across all projects)",
                      report["baseline"])
        report["baseline"] = re.sub(r"ids <= (\d+)", r"ids up to \1 (numbered across all projects)", text)
    if not isinstance(report.get("window"), int):  # the project has no window of its own: say which one applies
        report["window"] = f"{settings.window} (ALC_WINDOW; set one for this project with --window)"
    typer.echo(f"project {report['project']} ({report['title']}) connected:")
    for key in ("sampling", "show_overlap_first", "show_collab_predictions", "baseline", "closed", "ground_truth", "budget", "window",
                "working_state", "webhook", "ml_backend", "tab"):
        if key in report:
            typer.echo(f"  {key.replace('_', ' ')}: {report[key]}")


def _working_state(settings: Settings, client: Any, snapshot: ProjectSnapshot, started: float) -> str:
    """connect's own full read becomes the backend's working state in Redis, so its first retrain reads
    nothing again; without a reachable Redis the retrain builds it (one more read), which is said."""
    import redis

    from backend import queue as q
    from backend.working_state import WorkingState, adopt

    if not settings.redis_url:
        return "not built: no REDIS_URL here (the first retrain reads the project)"
    try:
        adopt(WorkingState(q.connect(settings.redis_url), snapshot.project_id, settings.max_annotations_per_task),
              client, snapshot, started)
    except redis.RedisError as exc:
        return f"not built: Redis unreachable ({type(exc).__name__}; the first retrain reads the project)"
    return f"built in Redis from this read ({len(snapshot.tasks)} tasks)"
