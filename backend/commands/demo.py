"""`alc demo`: the whole loop on 127.0.0.1 with one command, nothing installed by hand.

Starts an embedded Redis, Label Studio 1.23.2 (its own venv, installed on first use), the backend and
a worker; creates a demo project with noisy labels, connects it, fits the selector, opens the cleaning
queue, and optionally lets simulated annotators work through Label Studio's label stream.
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from backend.commands import http_url, output_file, output_folder, positive
from backend.commands import port_or_any
from backend.demo.config import DemoConfig, Order

if TYPE_CHECKING:
    from backend.demo.runner import DemoRun

DEFAULT_HOME = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "alc" / "demo"


def port_or_free(preferred: int | None) -> int:
    """``preferred`` when it is free on 127.0.0.1 (another user's demo may hold it), else any free port."""
    from backend.labelstudio_runtime import free_port, port_is_free

    return preferred if preferred and port_is_free(preferred) else free_port()


def alc_command() -> str:
    """How to type the running `alc` from another terminal: `alc` when that is the one on PATH, else its
    path (relative when under the current folder, e.g. `.venv/bin/alc`), else `python -m backend.cli`."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "alc" or not argv0.is_file():
        return f"{sys.executable} -m backend.cli"
    exe = argv0.resolve()
    if shutil.which("alc") and Path(shutil.which("alc") or "").resolve() == exe:
        return "alc"
    try:
        return str(argv0.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(argv0.absolute())


def demo(
    simulate_annotators: Annotated[int, typer.Option(min=0, help="simulated annotators working the label stream (0: you annotate)")] = 0,
    pace: Annotated[float, typer.Option(min=0, help="seconds a simulated annotator looks at a task (+-50%)")] = 2.0,
    budget: Annotated[int, typer.Option(min=1, help="re-annotations the queue may spend")] = 100,
    order: Annotated[Order, typer.Option(help="priority (active label cleaning) or random (the baseline)")] = "priority",
    images: Annotated[int, typer.Option(min=10, help="tasks in the demo project")] = 400,
    noise_rate: Annotated[float, typer.Option(min=0, max=1, help="digits: the first-pass labeller's look-alike error rate")] = 0.15,
    data_dir: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="use CIFAR-10H from this folder instead of digits")] = None,
    temperature: Annotated[float, typer.Option(callback=positive, help="CIFAR-10H: initial labels drawn at this temperature")] = 2.0,
    selector: Annotated[str, typer.Option(help="selector behind the priority order")] = "pretrained-linear",
    window: Annotated[int, typer.Option(min=1, help="tasks open in the queue at a time")] = 20,
    retrain_after: Annotated[int, typer.Option(min=1, help="retrain after this many new annotations")] = 10,
    seed: Annotated[int, typer.Option(help="seed of the dataset and the annotators")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="rq workers (2: one can retrain while the other keeps the "
                                                     "per-annotation work and the queue moving)")] = 2,
    home: Annotated[Path, typer.Option(callback=output_folder, help="where Label Studio, Redis and models keep their data (per user)")] = DEFAULT_HOME,
    ls_port: Annotated[Optional[int], typer.Option(callback=port_or_any, help="Label Studio's port (default 8080 if free, else any free port; 0: any free port)")] = None,
    port: Annotated[Optional[int], typer.Option(callback=port_or_any, help="the backend's port (default 9090 if free, else any free port; 0: any free port)")] = None,
    headless: Annotated[bool, typer.Option("--headless", help="do not open a browser")] = False,
    exit_when_done: Annotated[bool, typer.Option("--exit-when-done", help="stop everything once the cleaning is done "
                                                 "(else the services stay up until Ctrl-C)")] = False,
    report: Annotated[Optional[Path], typer.Option(callback=output_file, help="write the JSON report here (default: <out>/report-<project>.json)")] = None,
    out: Annotated[Optional[Path], typer.Option(callback=output_folder, help="folder for the report and the files the printed commands write (default: --home)")] = None,
    timeout: Annotated[Optional[float], typer.Option(callback=positive, help="give up after this many seconds of annotating")] = None,
    label_studio_url: Annotated[Optional[str], typer.Option(callback=http_url, help="use this running Label Studio instead of starting one")] = None,
    label_studio_api_key: Annotated[Optional[str], typer.Option(help="its API token (legacy token) for --label-studio-url")] = None,
) -> None:
    """Bring up Label Studio, Redis, the backend and a worker; create and clean a demo project."""
    if (label_studio_url is None) != (label_studio_api_key is None):
        raise typer.BadParameter("--label-studio-url and --label-studio-api-key go together")
    _check_selector(selector)
    from backend import profile
    from backend.demo.runner import DemoRun
    from backend.demo.services import LabelStudioAccount, ServiceError, Services
    from backend.labelstudio_runtime import ensure_installed

    out = out or home
    console = Console(stderr=True)
    config = DemoConfig(
        n_images=images, seed=seed, noise_rate=noise_rate, data_dir=data_dir, temperature=temperature,
        budget=budget, order=order, selector=selector, window=window, retrain_after_annotations=retrain_after,
        annotators=simulate_annotators, pace=pace,
    )
    started = time.monotonic()
    result: dict | None = None
    run: DemoRun | None = None
    up_seconds: float | None = None
    written: Path | None = None
    # the service is closed by default (issue 10): the demo makes its own credentials and prints them
    auth_user, auth_pass, webhook_secret = "alc", secrets.token_urlsafe(12), secrets.token_urlsafe(24)
    with Services(home) as services:
        try:
            redis_url = services.start_redis()
            if label_studio_url is not None:
                ls = LabelStudioAccount(label_studio_url.rstrip("/"), "(your account)", "(yours)", label_studio_api_key)
            else:
                exe = ensure_installed()  # installs on first use (or waits on another install), with progress
                ls = services.start_label_studio(exe, port_or_free(8080 if ls_port is None else ls_port))  # says what it does meanwhile
            env = {
                "LABEL_STUDIO_URL": ls.url,
                "LABEL_STUDIO_API_KEY": ls.token,
                "REDIS_URL": redis_url,
                "ALC_DATA_HOME": str(services.home / "backend"),
                "BASIC_AUTH_USER": auth_user,
                "BASIC_AUTH_PASS": auth_pass,
                "ALC_WEBHOOK_SECRET": webhook_secret,
                "ALC_PROFILE": "none",  # the demo writes the profile itself; its children must not
                **config.backend_env(),
            }
            backend_url = services.start_backend(port_or_free(9090 if port is None else port), env)
            for k in range(workers):
                services.start_worker(env, name=f"worker{k + 1}" if workers > 1 else "worker")
            deployment = {
                "label_studio_url": ls.url, "label_studio_api_key": ls.token, "redis_url": redis_url,
                "data_home": services.home / "backend", "model_dir": services.home / "backend" / "models",
                "basic_auth_user": auth_user, "basic_auth_pass": auth_pass, "webhook_secret": webhook_secret,
                "backend_url": backend_url, "label_studio_user": None if label_studio_url else ls.email,
                "label_studio_password": None if label_studio_url else ls.password,
                "written_by": "alc demo",
            }
            written = profile.write(deployment)
            _print_secrets(console, [
                ("Label Studio", ls.url), ("  user", ls.email), ("  password", ls.password),
                ("Backend", backend_url), ("  basic auth user", auth_user), ("  basic auth password", auth_pass),
                ("  webhook secret", webhook_secret),
            ])
            up_seconds = time.monotonic() - started
            console.print(f"services up in {up_seconds:.0f} s; logs in {services.home / 'logs'}; Ctrl-C stops everything",
                          soft_wrap=True)
            run = DemoRun(config, ls.url, ls.token, backend_url, env, console)
            project = run.setup()
            if written is not None:
                written = profile.write({**deployment, "project": project.id})
            dashboard = f"{backend_url}/dashboard?project={project.id}"
            console.print(f"cleaning queue open: {ls.url}/projects/{project.id}/data  "
                          f"(annotate with 'Label All Tasks')", soft_wrap=True)
            _print_secrets(console, [("Dashboard", dashboard)])
            console.print("  (log in with the backend's basic auth user and password above)")
            _print_how_to_use(console, project.id, written, out)
            if not headless:
                webbrowser.open(dashboard)
            if simulate_annotators:
                run.start_annotators()
            because = run.watch(services.check_alive, timeout)
            result = {**_report(run, up_seconds), "workers": workers}
            path = report or out / f"report-{project.id}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2))
            console.print_json(json.dumps({k: v for k, v in result.items() if k != "config"}))
            left = result["open_slots"]
            queue = "closed" if left == 0 else f"left with {left} open slot(s)"
            console.print(f"[bold green]Done:[/] {because}; the cleaning queue is {queue}; "
                          f"final accuracy {result['final_accuracy']:.1%} (was {result['initial_accuracy']:.1%}); "
                          f"report written to {path}")
            if not exit_when_done:
                console.print("The services stay up to explore (the commands above work); Ctrl-C stops everything.")
                while True:
                    services.check_alive()
                    time.sleep(2.0)
        except (ServiceError, RuntimeError, TimeoutError) as exc:  # said in one line, after the progress it made
            console.print(f"[bold red]error: alc demo stopped:[/] {escape(' '.join(str(exc).split()))}", soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("stopping")
            if run is not None and run.project is not None and result is None:
                run.stop_annotators()
                try:
                    result = _report(run, up_seconds)
                    console.print_json(json.dumps({k: v for k, v in result.items() if k != "config"}))
                except Exception as exc:  # the run's own error (if any) is the one to see
                    console.print(f"no report: {exc}")
        finally:
            if run is not None:
                run.stop_annotators()
            if written is not None:
                profile.remove(written)


def _report(run: DemoRun, up_seconds: float | None) -> dict:
    """The run's report plus what only the command knows; the time from the last annotation to now (the
    'Done' line follows within milliseconds)."""
    result = {**run.report(), "services_up_seconds": round(up_seconds or 0.0, 1)}
    submitted = run.pool.submitted if run.pool is not None else []
    result["done_seconds_after_last_annotation"] = round(time.time() - submitted[-1].at, 1) if submitted else None
    return result


def _check_selector(name: str) -> None:
    """--selector names a known selector (checked before anything starts)."""
    from scoring.selectors import available_selectors

    if name not in available_selectors():
        raise typer.BadParameter(f"unknown selector {name!r}; known: {', '.join(sorted(available_selectors()))}",
                                 param_hint="--selector")


def _print_secrets(console: Console, rows: list[tuple[str, str]]) -> None:
    """One value per line, never wrapped or cropped (a password split over two lines is mis-copied)."""
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        console.print(f"[bold]{label.ljust(width)}[/]{escape(value)}", soft_wrap=True, highlight=False)


def _print_how_to_use(console: Console, project_id: int, written: Path | None, out: Path) -> None:
    where = f"they read {written}" if written else "set LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY / REDIS_URL first"
    console.print(f"From another terminal ({where}):", soft_wrap=True)
    alc = alc_command()
    cleaned = out.absolute() / f"cleaned-{project_id}.csv"
    for line in (f"{alc} status --project {project_id}",
                 f"{alc} export --project {project_id} --format csv --out {cleaned}",
                 f"{alc} connect --project {project_id} --budget 150    # change the budget"):
        console.print(f"  {line}", soft_wrap=True, markup=False, highlight=False, style="bold")
