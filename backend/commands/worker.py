"""`alc worker`: run an rq worker for the retraining queue."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from backend.commands import exit_on_user_errors
from backend.settings import load_settings


def worker(
    burst: Annotated[bool, typer.Option(help="exit once the queues are empty")] = False,
    name: Annotated[Optional[str], typer.Option(help="worker name shown by `alc status`")] = None,
) -> None:
    """Run a worker: per-annotation bookkeeping, retraining, pushing rankings to Label Studio."""
    from backend.worker import run_worker

    with exit_on_user_errors("worker"):
        settings = load_settings()
    run_worker(settings, burst=burst, name=name)
