"""`alc serve`: the ML backend under gunicorn, optionally with a worker beside it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated, Any

import typer
from gunicorn.app.base import BaseApplication

from backend import profile
from backend.commands import exit_on_user_errors
from backend.settings import Settings, load_settings


class _Gunicorn(BaseApplication):
    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.application


def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 9090,
    threads: Annotated[int, typer.Option(help="gunicorn threads (one process, so /metrics sees every request)")] = 8,
    with_worker: Annotated[bool, typer.Option("--with-worker", help="run an rq worker beside the web process")] = False,
) -> None:
    """Serve the ML-backend API (/health, /setup, /predict, /webhook, /metrics, /dashboard)."""
    from backend.app import create_app
    from backend.queue import EmbeddedRedis

    with exit_on_user_errors("serve"):
        settings = load_settings()
    embedded = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.data_home)
        settings = settings.model_copy(update={"redis_url": embedded.start()})
        typer.echo(f"embedded Redis at {settings.redis_url} (data in {embedded.dir})")
    profile.write_deployment(settings, f"http://{host}:{port}")  # how `alc status/export/connect` find this server
    worker = _start_worker(settings) if with_worker else None
    owner = os.getpid()
    try:
        app = create_app(settings)
        options = {
            "bind": f"{host}:{port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": threads,
            "timeout": 120,
            "accesslog": "-",
            "preload_app": True,
        }
        _Gunicorn(app, options).run()
    finally:
        if os.getpid() != owner:  # a gunicorn worker (forked from here) is exiting: leave the rest alone
            return
        if worker is not None:
            worker.terminate()  # rq's warm shutdown: the current job finishes first
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
        if embedded is not None:
            embedded.stop()


def _start_worker(settings: Settings) -> subprocess.Popen:
    """`alc worker` as a child process, on the same environment and the same Redis as this server."""
    env = {**os.environ, "REDIS_URL": settings.redis_url or ""}
    return subprocess.Popen([sys.executable, "-m", "backend.cli", "worker", "--name", f"alc-serve-{os.getpid()}"], env=env)
