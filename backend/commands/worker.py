"""`alc worker`: run an rq worker for the retraining queue."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from backend.settings import SettingsError, load_settings


def worker(
    burst: Annotated[bool, typer.Option(help="exit once the queues are empty")] = False,
    name: Annotated[Optional[str], typer.Option(help="worker name shown by `alc status`")] = None,
) -> None:
    """Run a worker: per-annotation bookkeeping, retraining, pushing rankings to Label Studio."""
    from backend.worker import run_worker

    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    run_worker(settings, burst=burst, name=name)
