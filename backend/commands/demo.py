"""`alc demo`: the whole loop on 127.0.0.1 with one command, nothing installed by hand.

Starts an embedded Redis, Label Studio 1.23.2 (its own venv, installed on first use), the backend and
a worker; creates a demo project with noisy labels, connects it, fits the selector, opens the cleaning
queue, and optionally lets simulated annotators work through Label Studio's label stream.
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import json
import time
import webbrowser
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from backend.demo.runner import DemoConfig, DemoRun, Order
from backend.demo.services import Services, free_port
from backend.labelstudio_runtime import ensure_installed


def demo(
    simulate_annotators: Annotated[int, typer.Option(help="simulated annotators working the label stream (0: you annotate)")] = 0,
    pace: Annotated[float, typer.Option(help="seconds a simulated annotator looks at a task (+-50%)")] = 2.0,
    budget: Annotated[int, typer.Option(min=1, help="re-annotations the queue may spend")] = 100,
    order: Annotated[Order, typer.Option(help="priority (active label cleaning) or random (the baseline)")] = "priority",
    images: Annotated[int, typer.Option(min=10, help="tasks in the demo project")] = 400,
    noise_rate: Annotated[float, typer.Option(help="digits: the first-pass labeller's look-alike error rate")] = 0.15,
    data_dir: Annotated[Optional[Path], typer.Option(help="use CIFAR-10H from this folder instead of digits")] = None,
    temperature: Annotated[float, typer.Option(help="CIFAR-10H: initial labels drawn at this temperature")] = 2.0,
    selector: Annotated[str, typer.Option(help="selector behind the priority order")] = "linear",
    window: Annotated[int, typer.Option(min=1, help="tasks open in the queue at a time")] = 20,
    retrain_after: Annotated[int, typer.Option(min=1, help="retrain after this many new annotations")] = 10,
    seed: Annotated[int, typer.Option(help="seed of the dataset and the annotators")] = 0,
    home: Annotated[Path, typer.Option(help="where Label Studio, Redis and models keep their data")] = Path.home() / ".local" / "share" / "alc" / "demo",
    ls_port: Annotated[int, typer.Option(help="Label Studio's port (0: any free port)")] = 8080,
    port: Annotated[int, typer.Option(help="the backend's port (0: any free port)")] = 9090,
    headless: Annotated[bool, typer.Option("--headless", help="do not open a browser")] = False,
    exit_when_done: Annotated[bool, typer.Option("--exit-when-done", help="stop once the budget is spent and the stream is empty")] = False,
    report: Annotated[Optional[Path], typer.Option(help="write the JSON report here")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="give up after this many seconds of annotating")] = None,
) -> None:
    """Bring up Label Studio, Redis, the backend and a worker; create and clean a demo project."""
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
    with Services(home) as services:
        try:
            redis_url = services.start_redis()
            exe = ensure_installed()  # installs on first use, with its own progress display
            with console.status("starting Label Studio (the first start migrates its database: about a minute)"):
                ls = services.start_label_studio(exe, ls_port or free_port())
            env = {
                "LABEL_STUDIO_URL": ls.url,
                "LABEL_STUDIO_API_KEY": ls.token,
                "REDIS_URL": redis_url,
                "ALC_DATA_HOME": str(services.home / "backend"),
                **config.backend_env(),
            }
            backend_url = services.start_backend(port or free_port(), env)
            services.start_worker(env)
            console.print(f"[bold]Label Studio[/] {ls.url}  user [bold]{ls.email}[/]  password [bold]{ls.password}[/]")
            up_seconds = time.monotonic() - started
            console.print(f"services up in {up_seconds:.0f} s; logs in {services.home / 'logs'}; Ctrl-C stops everything")
            run = DemoRun(config, ls.url, ls.token, backend_url, env, console)
            project = run.setup()
            dashboard = f"{backend_url}/dashboard?project={project.id}"
            console.print(f"cleaning queue open: {ls.url}/projects/{project.id}/data  "
                          f"(annotate with 'Label All Tasks')")
            console.print(f"[bold]Dashboard[/]    {dashboard}")
            if not headless:
                webbrowser.open(dashboard)
            if simulate_annotators:
                run.start_annotators()
            run.watch(exit_when_done, services.check_alive, timeout)
        except KeyboardInterrupt:
            console.print("stopping")
        finally:
            if run is not None:
                run.stop_annotators()
                if run.project is not None:
                    try:
                        result = {**run.report(), "services_up_seconds": round(up_seconds or 0.0, 1)}
                    except Exception as exc:  # the run's own error (if any) is the one to see
                        console.print(f"no report: {exc}")
    if result is not None:
        console.print_json(json.dumps({k: v for k, v in result.items() if k != "config"}))
        if report is not None:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(result, indent=2))
            console.print(f"report written to {report}")
