"""`alc worker`: run an rq worker for the retraining queue (``--supervise``: restarted whenever it exits)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from backend.commands import exit_on_user_errors


def worker(
    burst: Annotated[bool, typer.Option(help="exit once the queues are empty")] = False,
    name: Annotated[Optional[str], typer.Option(help="worker name shown by `alc status`")] = None,
    supervise: Annotated[
        bool, typer.Option("--supervise", help="run the worker as a child process and restart it whenever it exits")
    ] = False,
) -> None:
    """Run a worker: per-annotation bookkeeping, retraining, pushing rankings to Label Studio."""
    import os

    if supervise and burst:
        raise typer.BadParameter("--supervise restarts a worker forever; it does not combine with --burst")
    from backend.settings import load_settings
    from backend.worker import Supervisor, run_worker

    with exit_on_user_errors("worker"):
        settings = load_settings()
    if supervise:
        Supervisor(settings, name or f"alc-worker-{os.getpid()}").run()
        return
    run_worker(settings, burst=burst, name=name)
