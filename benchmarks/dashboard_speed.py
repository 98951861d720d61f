"""How long the project manager's view takes against a real Label Studio, for projects of N tasks.

It measures the fallback path: without the backend's working state in Redis (never connected, or Redis
down), each /dashboard and /api/status request reads the whole project from Label Studio. The path with
a working state (no Label Studio read) is measured by scale_labelstudio.py and scale_fake.py. For each N this makes a fresh project of N tasks with an initial
label each, connects it (budget 2N), publishes a model ranking, opens a window of 100 tasks and
adds R re-annotations through the API, then times: the read alone (connectors.ledger.reconcile),
the status (read + ledger + model estimate), the three charts, and the whole /dashboard and
/api/status requests through the Flask app (each one a fresh read, past the 10 s cache). Prints
figures; asserts nothing about time.

    .venv/bin/python benchmarks/dashboard_speed.py                     # starts its own Label Studio
    .venv/bin/python benchmarks/dashboard_speed.py --sizes 1000,5000 --reannotations 200
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from rich.console import Console
from rich.progress import track
from rich.table import Table

from backend.app import create_app
from backend.dashboard import charts
from backend.labelstudio_runtime import LABEL_STUDIO_VERSION, LabelStudioServer, ensure_installed
from backend.model_store import ModelStore, Ranking
from backend.protocol import scores_from_priorities
from backend.settings import load_settings
from backend.status import collect_status
from connectors.client import connect
from connectors.ledger import reconcile
from connectors.queue import push_window
from connectors.setup import configure_project

CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="label" toName="image"><Choice value="cat"/><Choice value="dog"/><Choice value="bird"/></Choices></View>"""
LABELS = ["cat", "dog", "bird"]


def choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def make_project(url: str, token: str, n: int, reannotations: int, models: Path, seed: int) -> int:
    headers = {"Authorization": f"Token {token}"}
    rng = np.random.default_rng(seed)
    pid = requests.post(f"{url}/api/projects", headers=headers, timeout=60,
                        json={"title": f"dashboard benchmark {n}", "label_config": CONFIG}).json()["id"]
    labels = rng.choice(LABELS, n)
    for start in range(0, n, 1000):
        requests.post(f"{url}/api/projects/{pid}/import", headers=headers, timeout=300, json=[
            {"data": {"image": f"/img/{i}.png"}, "annotations": [{"result": choice(str(labels[i]))}]}
            for i in range(start, min(n, start + 1000))]).raise_for_status()
    ids: list[int] = []
    page = 1
    while len(ids) < n:
        got = requests.get(f"{url}/api/tasks", headers=headers, timeout=120,
                           params={"project": pid, "page": page, "page_size": 1000, "fields": "all"}).json()["tasks"]
        ids += [t["id"] for t in got]
        page += 1
    ids.sort()
    client = connect(url, token, retries=2)
    configure_project(client, pid, budget=2 * n)
    noisiness = -np.log(rng.uniform(0.05, 0.99, n))
    ranking = Ranking(task_ids=ids, class_names=LABELS, counts=np.eye(3)[[LABELS.index(x) for x in labels]],
                      priority=noisiness, noisiness=noisiness, ambiguity=np.full(n, 0.5),
                      scores=scores_from_priorities(noisiness), predicted=np.zeros(n, dtype=int))
    version = ModelStore(models).publish(pid, None, ranking, {"selector": "benchmark"})
    opened = push_window(client, pid, task_ids=ids, scores=ranking.scores.tolist(), priorities=noisiness.tolist(),
                         noisiness=noisiness.tolist(), ambiguity=ranking.ambiguity.tolist(), model_version=version,
                         window=100, budget=2 * n).opened
    for k in track(range(reannotations), description=f"{reannotations} re-annotations on {n} tasks"):
        requests.post(f"{url}/api/tasks/{opened[k % len(opened)]}/annotations/", headers=headers, timeout=60,
                      json={"result": choice(LABELS[k % 3]), "lead_time": 2.0}).raise_for_status()
    return pid


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def fresh_get(app, web, path: str):
    """A request that reads Label Studio again (past the dashboard's 10 s cache)."""
    app.extensions.pop("alc_status_cache", None)
    return web.get(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--reannotations", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` still stops our Label Studio (finally)
    work = Path(tempfile.mkdtemp(prefix="alc-dashboard-bench-"))
    template = Path.home() / ".cache" / "alc" / f"ls-{LABEL_STUDIO_VERSION}-migrated-template"
    if (template / "account").is_file():
        shutil.copytree(template, work / "ls")
    server = LabelStudioServer(work / "ls", executable=ensure_installed(progress=True)).start()
    table = Table(title=f"Dashboard against Label Studio {LABEL_STUDIO_VERSION} (median of {args.repeat})")
    for column in ("tasks", "re-annotations", "read from Label Studio", "status (read + ledger + estimate)",
                   "3 charts", "GET /api/status", "GET /dashboard", "page size"):
        table.add_column(column, justify="right")
    try:
        settings = load_settings(label_studio_url=server.url, label_studio_api_key=server.token,
                                 data_home=work / "home", model_dir=work / "models")
        app = create_app(settings)
        web = app.test_client()
        client = connect(server.url, server.token, retries=2)
        for i, n in enumerate(int(s) for s in args.sizes.split(",")):
            pid = make_project(server.url, server.token, n, args.reannotations, settings.models_path, seed=i)
            store = ModelStore(settings.models_path)
            t_read, _ = timed(lambda: reconcile(client, pid), args.repeat)
            t_status, status = timed(lambda: collect_status(client, pid, settings, store=store), args.repeat)
            t_charts, _ = timed(lambda: charts(status), args.repeat)
            t_api, _ = timed(lambda: fresh_get(app, web, f"/api/status?project={pid}"), args.repeat)
            t_page, page = timed(lambda: fresh_get(app, web, f"/dashboard?project={pid}"), args.repeat)
            assert page.status_code == 200, page.get_data(as_text=True)[:300]
            row = (f"{n:,}", str(args.reannotations), f"{t_read:.2f} s", f"{t_status:.2f} s", f"{t_charts:.2f} s",
                   f"{t_api:.2f} s", f"{t_page:.2f} s", f"{len(page.data) / 1024:.0f} KiB")
            print(" | ".join(row), flush=True)
            table.add_row(*row)
        embedded = app.extensions["alc"].embedded_redis
        if embedded is not None:
            embedded.stop()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    Console().print(table)


if __name__ == "__main__":
    main()
