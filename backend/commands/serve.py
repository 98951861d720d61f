"""`alc serve`: the ML backend under gunicorn, optionally with a supervised worker beside it.

Closed by default: without BASIC_AUTH_USER/PASS it listens on loopback only, and refuses any other
address with one line naming the settings to add.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from backend.commands import exit_on_user_errors, port as tcp_port

if TYPE_CHECKING:
    from backend.settings import Settings


def _run_gunicorn(app: Any, options: dict[str, Any]) -> None:
    """Serve ``app`` with gunicorn in this process (gunicorn is imported only here)."""
    from gunicorn.app.base import BaseApplication

    class Gunicorn(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    Gunicorn().run()


def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(callback=tcp_port, help="port to listen on")] = 9090,
    threads: Annotated[int, typer.Option(min=1, help="gunicorn threads (one process, so /metrics sees every request)")] = 8,
    with_worker: Annotated[
        bool, typer.Option("--with-worker", help="run an rq worker beside the web process (restarted whenever it exits)")
    ] = False,
) -> None:
    """Serve the ML-backend API (/health, /setup, /predict, /webhook, /metrics, /dashboard)."""
    from backend.settings import load_settings

    with exit_on_user_errors("serve"):
        settings = load_settings()
    if settings.basic_auth is None and not is_loopback(host):
        typer.echo(
            f"error: alc serve: refusing to listen on {host} without credentials: set BASIC_AUTH_USER and BASIC_AUTH_PASS "
            "(and ALC_WEBHOOK_SECRET for Label Studio's webhooks), or listen on 127.0.0.1",
            err=True,
        )
        raise typer.Exit(2)
    from backend.labelstudio_runtime import port_is_free

    if not port_is_free(port, host):
        typer.echo(f"error: alc serve: cannot listen on {host}:{port}: another server uses it, or this machine has no "
                   "such address (choose another --port or --host)", err=True)
        raise typer.Exit(1)
    from backend import profile
    from backend.app import create_app
    from backend.queue import EmbeddedRedis

    embedded = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.data_home)
        settings = settings.model_copy(update={"redis_url": embedded.start()})
        typer.echo(f"embedded Redis at {settings.redis_url} (data in {embedded.dir})")
    profile.write_deployment(settings, f"http://{host}:{port}")  # how `alc status/export/connect` find this server
    supervisor = f"alc-serve-{os.getpid()}"
    worker = _start_supervised_worker(settings, supervisor) if with_worker else None
    owner = os.getpid()
    try:
        app = create_app(settings)
        if worker is not None:
            app.extensions["alc"].supervisor = supervisor  # /health reports the supervised worker's state
        options = {
            "bind": f"{host}:{port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": threads,
            "timeout": 120,
            "accesslog": "-",
            "preload_app": True,
        }
        _run_gunicorn(app, options)
    finally:
        if os.getpid() != owner:  # a gunicorn worker (forked from here) is exiting: leave the rest alone
            return
        if worker is not None:
            worker.terminate()  # the supervisor passes it on (rq's warm shutdown: the current job finishes first)
            try:
                worker.wait(timeout=70)
            except subprocess.TimeoutExpired:
                worker.kill()
        if embedded is not None:
            embedded.stop()


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or 'localhost': only this machine can connect."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _start_supervised_worker(settings: Settings, name: str) -> subprocess.Popen:
    """`alc worker --supervise` as a child process (its own process, so gunicorn's reaping of children
    never sees the rq worker), on the same environment and the same Redis as this server."""
    env = {**os.environ, "REDIS_URL": settings.redis_url or ""}
    return subprocess.Popen([sys.executable, "-m", "backend.cli", "worker", "--supervise", "--name", name], env=env)
