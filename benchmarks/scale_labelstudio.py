"""The cleaning loop at real size: an N-task project (default 10,000) in a real Label Studio 1.23.2.

Builds the project once (32x32 PNGs of the CIFAR-10 test images uploaded to Label Studio in bulk, one
initial label each drawn from CIFAR-10H at T = 2, as `alc demo --data-dir` does) and keeps Label
Studio's data dir as a template (``--template-dir``), so later runs start from a copy in seconds.
Then it runs the real services as processes: an embedded Redis, `alc serve` and `alc worker`, with
two counting HTTP proxies on the way: backend -> Label Studio (every request the backend makes,
images included) and Label Studio -> backend (webhooks). It prints and writes as JSON (``--out``):

- ``connect``: `alc connect` -> the first ranking live (the project's model_version switched), with
  the requests it took, when the first task was opened relative to the switch, the images fetched,
  and how long the backend's queues stayed busy afterwards;
- ``annotate``: per annotation (an annotator taking Label Studio's next task and labelling it), the
  requests the backend made to Label Studio and the time from its webhook until the backend is idle,
  for a settling annotation and a tie; after every 10th (``ALC_RETRAIN_AFTER_ANNOTATIONS``) the time
  until the new ranking is live;
- ``dashboard``: ``GET /api/status`` and ``GET /dashboard`` (uncached: 11 s apart);
- ``background``: with no annotation coming in for 60 s, how fast the background job takes the ground-truth
  stars off (``--starred``);
- ``push``: on a fresh copy of the project, a first push opening K tasks and a re-rank push of the same
  window (``--push-windows``), called directly through the connectors, counted by the proxy;
- peak memory (RSS) of the web process tree, the worker and its work horses (psutil, every 0.5 s).

Each wait has a limit (``--step-timeout``); a step that passes it is reported as such. Prints figures,
asserts nothing about time. Run it nice'd on a shared machine:

    nice -n 10 .venv/bin/python benchmarks/scale_labelstudio.py --tasks 2000 --steps connect,annotate
    nice -n 10 .venv/bin/python benchmarks/scale_labelstudio.py --out runs/scale-10000.json
    .venv/bin/python benchmarks/scale_labelstudio.py --ls-workers 4 --starred --out runs/scale-10000-w4-starred.json
"""

from __future__ import annotations

import argparse
import http.client
import inspect
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil
import requests
from label_studio_sdk import LabelStudio
from rich.console import Console
from rich.table import Table

from backend import queue as q
from backend.demo.dataset import choice_result, label_config, label_studio_tasks, make_cifar10h
from backend.demo.project import upload_images
from backend.demo.services import Services
from backend.labelstudio_runtime import LABEL_STUDIO_VERSION, LabelStudioServer, create_user, ensure_installed, free_port

console = Console(stderr=True)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade", "te"}


# --- a counting reverse proxy ------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    started: float  # time.monotonic()
    ended: float
    method: str
    path: str
    status: int
    switches_version: bool = False  # a project PATCH carrying model_version
    ignored: bool = False  # a webhook the backend acknowledged and ignored (our own edit: nothing changed)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client closing its kept-alive connection
        pass


class CountingProxy:
    """An HTTP reverse proxy on 127.0.0.1 that forwards to ``upstream`` and records every request."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.log: list[Seen] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                proxy.forward(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = _forward

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "CountingProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(*self.upstream, timeout=900)
        return conn

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
        headers["Host"] = f"{self.upstream[0]}:{self.upstream[1]}"
        status, reply_headers, data = 502, [], b"upstream failed"
        for attempt in range(2):  # a kept-alive upstream connection may have been closed meanwhile
            conn = self._connection()
            try:
                conn.request(handler.command, handler.path, body=body, headers=headers)
                response = conn.getresponse()
                status, reply_headers, data = response.status, response.getheaders(), response.read()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
        path = handler.path.split("?", 1)[0].rstrip("/")
        switches = handler.command == "PATCH" and path.startswith("/api/projects/") and b"model_version" in (body or b"")
        ignored = path == "/webhook" and b'"retrain":"ignored' in data.replace(b" ", b"")
        with self._lock:
            self.log.append(Seen(started, time.monotonic(), handler.command, path, status, switches, ignored))
        handler.send_response(status)
        for key, value in reply_headers:
            if key.lower() not in HOP_BY_HOP:
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def between(self, start: float, end: float | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.log if s.started >= start and (end is None or s.started <= end)]


def kinds(seen: list[Seen]) -> dict[str, int]:
    """Requests grouped by method and a path pattern (ids replaced by {id})."""
    out: dict[str, int] = {}
    for s in seen:
        if s.path.startswith("/data/"):
            pattern = "/data/... (images)"
        else:
            pattern = "/".join("{id}" if part.isdigit() else part for part in s.path.split("/"))
        key = f"{s.method} {pattern}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# --- peak memory --------------------------------------------------------------------------------


class MemoryWatch:
    """Peak RSS of each watched process tree, sampled every ``interval`` seconds (psutil)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.roots: dict[str, int] = {}
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.roots[name] = pid

    def start(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(timeout=5)
        return {k: round(v / 2**20, 1) for k, v in self.peak.items()}

    def _sample(self, name: str, pid: int) -> None:
        try:
            root = psutil.Process(pid)
            procs = [("", root)] + [(" child", c) for c in root.children(recursive=True)]
        except psutil.Error:
            return
        for suffix, proc in procs:
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            key = f"{name}{suffix}"
            self.peak[key] = max(self.peak.get(key, 0.0), float(rss))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pid in list(self.roots.items()):
                self._sample(name, pid)


# --- the project and its template ---------------------------------------------------------------


@dataclass
class Template:
    """A Label Studio data dir holding one untouched N-task project, and what we know of its tasks."""

    dir: Path
    project_id: int
    task_ids: list[int]
    initial_labels: list[str]
    class_names: list[str]

    @property
    def ls_dir(self) -> Path:
        return self.dir / "ls"

    @classmethod
    def load(cls, directory: Path) -> "Template | None":
        meta = directory / "project.json"
        if not meta.is_file() or not (directory / "ls" / "account").is_file():
            return None
        return cls(directory, **json.loads(meta.read_text()))

    def with_stars(self, starred: bool) -> "Template":
        """A copy whose initial annotations carry Label Studio's ground-truth star (``starred``: as imported
        without ``"ground_truth": false``, Label Studio's default) or not (as the demo imports them): made by
        setting the flag in the copy's database, Label Studio stopped."""
        import sqlite3

        target = self.dir.with_name(self.dir.name + ("-starred" if starred else "-unstarred"))
        if Template.load(target) is None:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(self.dir, target, ignore=shutil.ignore_patterns("*.log"))
            with sqlite3.connect(target / "ls" / "label_studio.sqlite3") as db:
                db.execute("UPDATE task_completion SET ground_truth = ?", (int(starred),))
        return Template.load(target)

    def copy_to(self, target: Path) -> Path:
        shutil.copytree(self.ls_dir, target, ignore=shutil.ignore_patterns("*.log"))
        return target


def build_template(directory: Path, n: int, data_dir: Path, seed: int) -> Template:
    """Create the project in a fresh Label Studio (images uploaded in bulk, one JSON import of the tasks)."""
    dataset = make_cifar10h(data_dir, n_images=n, seed=seed, temperature=2.0, size=32)
    work = directory.with_name(directory.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    migrated = Path.home() / ".cache" / "alc" / f"ls-{LABEL_STUDIO_VERSION}-migrated-template"
    if (migrated / "account").is_file():
        shutil.copytree(migrated, work / "ls", ignore=shutil.ignore_patterns("*.log"))
    started = time.monotonic()
    with LabelStudioServer(work / "ls", executable=ensure_installed(progress=True)) as server:
        client = LabelStudio(base_url=server.url, api_key=server.token, timeout=1800)
        project = client.projects.create(title=f"scale benchmark, {n} tasks", label_config=label_config(dataset.class_names))
        with console.status(f"uploading {n} images"):
            urls = upload_images(server.url, server.token, project.id, dataset, timeout=600)
        tasks = label_studio_tasks(dataset, urls.__getitem__, "annotation")
        with console.status(f"importing {n} tasks with their initial labels"):
            for start in range(0, n, 2000):
                client.projects.import_tasks(project.id, request=tasks[start:start + 2000])
        export = requests.get(f"{server.url}/api/projects/{project.id}/export", params={"exportType": "JSON"},
                              headers={"Authorization": f"Token {server.token}"}, timeout=1800).json()
        by_demo = {int(t["data"]["demo_id"]): int(t["id"]) for t in export}
        if len(by_demo) != n:
            raise RuntimeError(f"Label Studio holds {len(by_demo)} of the {n} tasks")
        task_ids = [by_demo[k] for k in range(n)]
    meta = {"project_id": project.id, "task_ids": task_ids, "class_names": list(dataset.class_names),
            "initial_labels": [dataset.class_names[int(c)] for c in dataset.initial_labels]}
    (work / "project.json").write_text(json.dumps(meta))
    shutil.rmtree(directory, ignore_errors=True)
    work.rename(directory)
    console.print(f"built the {n}-task template in {time.monotonic() - started:.0f} s: {directory}")
    return Template(directory, **meta)


# --- the services -------------------------------------------------------------------------------


@dataclass
class Run:
    """One copy of the project in Label Studio, with the backend and a worker in front of it."""

    template: Template
    work: Path
    args: argparse.Namespace
    server: LabelStudioServer | None = None
    services: Services | None = None
    ls_proxy: CountingProxy | None = None
    hook_proxy: CountingProxy | None = None
    memory: MemoryWatch = field(default_factory=MemoryWatch)
    env: dict[str, str] = field(default_factory=dict)
    backend_url: str = ""
    redis: object = None
    connected_at: float | None = None  # time.monotonic() when `alc connect` began

    def start_label_studio(self, name: str) -> LabelStudioServer:
        data = self.template.copy_to(self.work / name)
        self.server = LabelStudioServer(data, executable=ensure_installed(progress=True),
                                        workers=self.args.ls_workers).start()
        self.ls_proxy = CountingProxy(self.server.url).start()
        return self.server

    def stop_label_studio(self) -> None:
        if self.ls_proxy is not None:
            self.ls_proxy.stop()
            self.ls_proxy = None
        if self.server is not None:
            self.server.stop()
            shutil.rmtree(self.server.data_dir, ignore_errors=True)
            self.server = None

    def start_services(self) -> None:
        assert self.server is not None and self.ls_proxy is not None
        self.services = Services(self.work / "services")
        redis_url = self.services.start_redis()
        self.redis = q.connect(redis_url)
        port = free_port()
        self.env = {
            "LABEL_STUDIO_URL": self.ls_proxy.url,
            "LABEL_STUDIO_API_KEY": self.server.token,
            "REDIS_URL": redis_url,
            "ALC_DATA_HOME": str(self.work / "services" / "backend"),
            "ALC_SELECTOR": self.args.selector,
            "ALC_SELECTOR_OPTIONS": self.args.selector_options,
            "ALC_WINDOW": str(self.args.window),
            "ALC_BUDGET": str(self.args.budget),
            "ALC_RETRAIN_AFTER_ANNOTATIONS": str(self.args.retrain_after),
            "ALC_RETRAIN_AFTER_SECONDS": "3600",  # retrain on the count alone, as the issue measures
            "ALC_MAX_ANNOTATIONS_PER_TASK": "5",
            "ALC_LABEL_STUDIO_TIMEOUT": "300",
            "ALC_PROFILE": "none",  # neither read nor write the user's deployment profile (backend.profile)
        }
        self.backend_url = self.services.start_backend(port, self.env, timeout=120)
        self.hook_proxy = CountingProxy(self.backend_url).start()
        worker = self.services.start_worker(self.env)
        backend_pid = next(p.pid for name, p in self.services.processes if name == "backend")
        self.memory.watch("web", backend_pid)
        self.memory.watch("worker", worker.pid)
        self.memory.start()

    def stop_services(self) -> dict[str, float]:
        peak = self.memory.stop()
        if self.hook_proxy is not None:
            self.hook_proxy.stop()
        if self.services is not None:
            self.services.stop()
        return peak

    # --- what the steps look at -----------------------------------------------------------------

    @property
    def ls(self) -> requests.Session:
        """Direct to Label Studio (not through the proxy: our own reads are not the backend's)."""
        session = getattr(self, "_ls", None)
        if session is None:
            session = self._ls = requests.Session()
            session.headers["Authorization"] = f"Token {self.server.token}"
        return session

    def model_version(self) -> str:
        response = self.ls.get(f"{self.server.url}/api/projects/{self.template.project_id}", timeout=120)
        response.raise_for_status()
        return response.json().get("model_version") or ""

    def busy(self) -> int:
        """Jobs queued or running in the per-annotation and training queues (scheduled ones, e.g. a periodic
        reconcile, do not count, nor the background queue's un-starring: it yields to any job of those two)."""
        from rq import Queue
        from rq.registry import StartedJobRegistry

        return sum(queue.count + StartedJobRegistry(queue=queue).count for queue in Queue.all(connection=self.redis)
                   if queue.name != q.BACKGROUND_QUEUE)

    def starred_left(self) -> int:
        """Annotations whose ground-truth star the backend has still to take off."""
        from backend.working_state import WorkingState

        return WorkingState(self.redis, self.template.project_id).n_starred()

    def wait_idle(self, timeout: float, settle: float = 0.3) -> float | None:
        """Seconds until no job is queued or running (from then on for ``settle`` s); None when ``timeout`` passed."""
        started = time.monotonic()
        idle_since = None
        while time.monotonic() - started < timeout:
            if self.busy() == 0:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= settle:
                    return idle_since - started
            else:
                idle_since = None
            time.sleep(0.05)
        return None

    def wait_version_change(self, old: str, timeout: float, poll: float = 1.0) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.model_version() not in ("", old):
                return time.monotonic() - started
            time.sleep(poll)
        return None


# --- the steps ----------------------------------------------------------------------------------


def step_connect(run: Run, figures: dict) -> None:
    """`alc connect` (then Label Studio's train call, as the demo does) -> the first ranking is live."""
    pid = run.template.project_id
    argv = [sys.executable, "-m", "backend.cli", "connect", "--project", str(pid), "--backend-url", run.hook_proxy.url,
            "--budget", str(run.args.budget), "--window", str(run.args.window)]
    t0 = run.connected_at = time.monotonic()
    result = subprocess.run(argv, env={**os.environ, **run.env}, capture_output=True, text=True, timeout=run.args.step_timeout)
    connect_s = time.monotonic() - t0
    if result.returncode != 0:
        raise RuntimeError(f"alc connect failed:\n{result.stdout}\n{result.stderr}")
    requests.post(f"{run.backend_url}/train", json={"project": pid}, timeout=30).raise_for_status()
    with console.status("connect -> first ranking live"):
        live = run.wait_version_change("", max(run.args.step_timeout, run.args.connect_timeout))
    seen = run.ls_proxy.between(t0)
    images = [s for s in seen if s.path.startswith("/data/")]
    switch = next((s for s in seen if s.switches_version), None)
    first_open = next((s for s in seen if s.method == "PATCH" and s.path.startswith("/api/tasks/")), None)
    out = {
        "alc_connect_s": round(connect_s, 1),
        "first_ranking_live_s": None if live is None else round(connect_s + live, 1),
        "timed_out_after_s": None if live is not None else max(run.args.step_timeout, run.args.connect_timeout),
        "requests_until_live": len(seen),
        "images_fetched": len(images),
        "image_fetch_s": round(images[-1].ended - images[0].started, 1) if images else None,
        "first_task_opened_before_live_s": (round(switch.started - first_open.started, 1)
                                             if switch and first_open else None),
        "requests": kinds(seen),
    }
    console.print(f"connect: {json.dumps({k: v for k, v in out.items() if k != 'requests'})}")
    with console.status("waiting for the backend's queues to empty after the first ranking"):
        idle = run.wait_idle(run.args.step_timeout)
    after = run.ls_proxy.between(t0)
    hooks = run.hook_proxy.between(t0)
    out["queue_busy_after_live_s"] = None if idle is None else round(idle, 1)
    out["queue_left_when_stopped_waiting"] = None if idle is not None else run.busy()
    out["requests_until_idle"] = len(after)
    out["first_retrain"] = last_retrain(run, oldest=True)
    out["starred_left_when_idle"] = run.starred_left()
    out["webhooks_caused_by_our_own_edits"] = sum(s.path == "/webhook" for s in hooks)
    out["of_them_ignored"] = sum(s.ignored for s in hooks)
    figures["connect"] = out
    console.print(f"  queue idle after: {out['queue_busy_after_live_s']} s; webhooks from our own edits: "
                  f"{out['webhooks_caused_by_our_own_edits']} ({out['of_them_ignored']} ignored); "
                  f"stars left: {out['starred_left_when_idle']}")


def step_annotate(run: Run, figures: dict) -> None:
    """Rounds of ``--retrain-after`` annotations by one annotator through Label Studio's label stream."""
    pid, args = run.template.project_id, run.args
    annotator = create_user(run.server.url, f"scale-annotator-{os.getpid()}@bench.example", "annotator-pass-1")
    me = requests.Session()
    me.headers["Authorization"] = f"Token {annotator}"
    label_of = dict(zip(run.template.task_ids, run.template.initial_labels))
    others = run.template.class_names
    per: dict[str, list[dict]] = {"settled": [], "tie": []}
    rounds = []
    for r in range(args.rounds):
        if run.wait_idle(args.step_timeout) is None:
            console.print(f"[yellow]round {r}: the queues did not empty within {args.step_timeout} s; measuring anyway")
        version = run.model_version()
        for k in range(args.retrain_after):
            kind = "settled" if k % 2 == 0 else "tie"
            got = me.get(f"{run.server.url}/api/projects/{pid}/next", timeout=300)
            if got.status_code != 200:
                raise RuntimeError(f"Label Studio served no task ({got.status_code}): {got.text[:200]}")
            task = got.json()
            initial = label_of[int(task["id"])]
            label = initial if kind == "settled" else next(c for c in others if c != initial)
            t_submit = time.monotonic()
            me.post(f"{run.server.url}/api/tasks/{task['id']}/annotations/", timeout=300,
                    json={"result": choice_result(label), "lead_time": 2.0}).raise_for_status()
            t_done = time.monotonic()
            if k == args.retrain_after - 1:
                break
            hook = wait_for(lambda: [s for s in run.hook_proxy.between(t_submit) if s.path == "/webhook"], 10)
            t_wait = time.monotonic()
            idle = run.wait_idle(args.step_timeout)
            t_idle = t_wait + (idle if idle is not None else args.step_timeout)  # when the backend went idle
            start = hook[0].started if hook else t_submit
            seen = run.ls_proxy.between(start, t_idle)
            per[kind].append({"task": int(task["id"]), "requests": len(seen), "seconds": None if idle is None else
                              round(t_idle - start, 3), "submit_s": round(t_done - t_submit, 3),
                              "kinds": kinds(seen)})
        live = run.wait_version_change(version, args.step_timeout)
        seconds = None if live is None else round(time.monotonic() - t_done, 1)
        record = None
        if live is not None:  # the retrain's record is written after its push, which switches the version first
            current = run.model_version()
            record = wait_for(lambda: (r := last_retrain(run)) and r["model_version"] == current and r, 60)
        rounds.append({"annotation_to_new_ranking_live_s": seconds, "timed_out": live is None,
                       "last_retrain": record or last_retrain(run), "starred_left": run.starred_left(),
                       "since_connect_s": None if run.connected_at is None else
                       round(time.monotonic() - run.connected_at, 1)})
        console.print(f"round {r}: {rounds[-1]}; settled {[(a['requests'], a['seconds']) for a in per['settled']]}, "
                      f"tie {[(a['requests'], a['seconds']) for a in per['tie']]}")

    def summary(items: list[dict]) -> dict:
        if not items:
            return {}
        secs = [a["seconds"] for a in items if a["seconds"] is not None]
        median = statistics.median(a["requests"] for a in items)
        return {"n": len(items), "requests_median": median, "requests_max": max(a["requests"] for a in items),
                "seconds_median": round(statistics.median(secs), 3) if secs else None,
                "seconds_max": round(max(secs), 3) if secs else None, "example": items[-1]["kinds"],
                "above_median": [a for a in items if a["requests"] > median]}

    figures["annotate"] = {"settled": summary(per["settled"]), "tie": summary(per["tie"]), "rounds": rounds}


def step_background(run: Run, figures: dict, seconds: float = 60.0) -> None:
    """With no annotation coming in: how fast the background job takes the ground-truth stars off."""
    left, started = run.starred_left(), time.monotonic()
    time.sleep(seconds)
    now = run.starred_left()
    figures["background"] = {"starred_left_before": left, "starred_left_after": now, "seconds": seconds,
                             "unstarred_per_second": round((left - now) / (time.monotonic() - started), 1)}
    console.print(f"background: {figures['background']}")


def last_retrain(run: Run, oldest: bool = False) -> dict | None:
    """The backend's own record of a retrain (its duration and the push's summary)."""
    records = q.retrain_records(run.redis, run.template.project_id)
    if not records:
        return None
    record = records[-1 if oldest else 0]
    return {k: record.get(k) for k in ("model_version", "seconds", "tasks", "mode", "push")}


def wait_for(fn, timeout: float, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = fn()
        if found:
            return found
        time.sleep(poll)
    return None


def step_dashboard(run: Run, figures: dict, repeats: int = 2) -> None:
    pid = run.template.project_id
    out = {}
    for path in (f"/api/status?project={pid}", f"/dashboard?project={pid}"):
        times = []
        for _ in range(repeats):
            time.sleep(11)  # past the dashboard's 10 s cache of a project read
            started = time.monotonic()
            response = requests.get(run.backend_url + path, timeout=run.args.step_timeout)
            times.append(round(time.monotonic() - started, 2))
            if response.status_code != 200:
                times[-1] = f"{response.status_code} after {times[-1]} s"
        out[path.split("?")[0]] = times
    figures["dashboard"] = out
    console.print(f"dashboard: {out}")


def push_once(client, pid: int, task_ids: list[int], scores: np.ndarray, version: str, window: int, budget: int):
    """One push of a ranking as the service makes it; returns its start, its result and the seconds until its
    first task was open. With the incremental pipeline (connectors.plan) the service decides on its working
    state, so the project is read first, untimed (``started`` marks the start of what the service would do);
    before it, push_window read the project itself."""
    from connectors.counts import read_project
    from connectors.ledger import budget_of

    try:
        from connectors.plan import apply_plan, clear_ground_truth, entries_of, plan_window
    except ImportError:  # the code before the pipeline
        from connectors.queue import push_window

        started = time.monotonic()
        return started, push_window(client, pid, task_ids=task_ids, scores=scores.tolist(),
                                    priorities=(-scores).tolist(), model_version=version, window=window,
                                    budget=budget), None
    snap = read_project(client, pid)
    started = time.monotonic()
    entries = entries_of(task_ids, scores.tolist(), (-scores).tolist())
    plan = plan_window(snap.tasks, entries, budget=budget_of(snap, budget), window=window, max_annotations=5,
                       model_version=version, spares=50)
    tasks = {t.id: t for t in snap.tasks}
    opened_at: list[float] = []

    def stars_off(task_id: int) -> int:  # as the backend's push: a task's stars off just before it opens
        return clear_ground_truth(client, tasks[task_id].ground_truth_ids, threads=1)

    def patched(task_id: int, body: dict) -> None:
        opened_at.append(time.monotonic())

    def unstar(opening: list[int]) -> list[int]:  # the code before before_open: the window's stars first
        clear_ground_truth(client, [a for tid in opening for a in tasks[tid].ground_truth_ids])
        return opening

    per_task = "before_open" in inspect.signature(apply_plan).parameters
    result = apply_plan(client, snap.config, plan, entries, tasks, max_annotations=5, on_patched=patched,
                        **({"before_open": stars_off} if per_task else {"reserve": unstar}))
    return started, result, (round(min(opened_at) - started, 2) if opened_at else None)


def step_push(run: Run, figures: dict) -> None:
    """On a fresh copy of the project for each K: connect (setup only), first push of K, re-rank push."""
    from connectors.client import connect
    from connectors.setup import configure_project

    pid, ids = run.template.project_id, run.template.task_ids
    out = {}
    for k in run.args.push_windows:
        run.start_label_studio(f"ls-push-{k}")
        try:
            client = connect(run.ls_proxy.url, run.server.token, timeout=900, retries=1)
            t0 = time.monotonic()
            configure_project(client, pid, budget=run.args.budget, window=k)
            t1 = time.monotonic()
            scores = np.random.default_rng(k).random(len(ids))
            p1, first, first_open_s = push_once(client, pid, ids, scores, f"bench-{k}-first", k, run.args.budget)
            t2 = time.monotonic()
            p2, _, _ = push_once(client, pid, ids, scores, f"bench-{k}-rerank", k, run.args.budget)
            t3 = time.monotonic()
            out[str(k)] = {
                "setup_s": round(t1 - t0, 1), "setup_requests": len(run.ls_proxy.between(t0, t1)),
                "first_push_s": round(t2 - p1, 1), "first_push_requests": len(run.ls_proxy.between(p1, t2)),
                "opened": len(getattr(first, "opened", []) or []),
                "first_push_first_task_open_s": first_open_s,
                "rerank_push_s": round(t3 - p2, 1), "rerank_push_requests": len(run.ls_proxy.between(p2, t3)),
                "untimed_reads_s": round((p1 - t1) + (p2 - t2), 1),
                "first_push_kinds": kinds(run.ls_proxy.between(p1, t2)),
                "rerank_push_kinds": kinds(run.ls_proxy.between(p2, t3)),
            }
            console.print(f"push K = {k}: {json.dumps({a: b for a, b in out[str(k)].items() if 'kinds' not in a})}")
        finally:
            run.stop_label_studio()
    figures["push"] = out


def print_table(figures: dict) -> None:
    table = Table(title=f"Scale benchmark: {figures['tasks']:,} tasks, Label Studio {LABEL_STUDIO_VERSION}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    c = figures.get("connect", {})
    if c:
        table.add_row("connect -> first ranking live (s)", str(c["first_ranking_live_s"] or f"> {c['timed_out_after_s']}"))
        table.add_row("  requests to Label Studio / images fetched", f"{c['requests_until_live']} / {c['images_fetched']}")
        table.add_row("  first task opened before the ranking was live (s)", str(c["first_task_opened_before_live_s"]))
        table.add_row("  queues busy after the ranking was live (s)", str(c["queue_busy_after_live_s"]))
        table.add_row("  webhooks caused by our own edits (ignored)",
                      f"{c['webhooks_caused_by_our_own_edits']} ({c.get('of_them_ignored', '-')})")
        table.add_row("  ground-truth stars still to take off when idle", str(c.get("starred_left_when_idle", "-")))
    a = figures.get("annotate", {})
    for kind in ("settled", "tie"):
        if a.get(kind):
            table.add_row(f"one annotation, {kind}: requests (median, max)", f"{a[kind]['requests_median']}, {a[kind]['requests_max']}")
            table.add_row(f"one annotation, {kind}: seconds (median, max)", f"{a[kind]['seconds_median']}, {a[kind]['seconds_max']}")
    if c.get("first_retrain"):
        push = c["first_retrain"].get("push") or {}
        table.add_row("  first retrain (s) / its push (s, opened)",
                      f"{c['first_retrain']['seconds']} / {push.get('seconds')}, {push.get('opened')}")
    for r, item in enumerate(a.get("rounds", [])):
        table.add_row(f"annotation -> new ranking live, round {r} (s)",
                      str(item["annotation_to_new_ranking_live_s"]) if not item["timed_out"] else "timed out")
        if item.get("last_retrain"):
            push = item["last_retrain"].get("push") or {}
            table.add_row("  that retrain (s) / its re-rank push (s, requests)",
                          f"{item['last_retrain']['seconds']} / {push.get('seconds')}, {push.get('requests', '-')}")
    if figures.get("background"):
        b = figures["background"]
        table.add_row("background un-starring, nothing else to do (per s)",
                      f"{b['unstarred_per_second']} ({b['starred_left_before']} -> {b['starred_left_after']} left)")
    for path, times in figures.get("dashboard", {}).items():
        table.add_row(f"GET {path} (s, uncached)", ", ".join(map(str, times)))
    for k, p in figures.get("push", {}).items():
        table.add_row(f"first push K = {k}: s / requests / opened", f"{p['first_push_s']} / {p['first_push_requests']} / {p['opened']}")
        table.add_row("  its first task open after (s)", str(p.get("first_push_first_task_open_s")))
        table.add_row(f"re-rank push K = {k}: s / requests", f"{p['rerank_push_s']} / {p['rerank_push_requests']}")
    for name, mib in figures.get("peak_rss_mib", {}).items():
        table.add_row(f"peak RSS {name} (MiB)", str(mib))
    Console().print(table)


# the steps that run against the services, in the order given; `push` starts Label Studio copies of its own
PIPELINE_STEPS = {"connect": step_connect, "annotate": step_annotate, "dashboard": step_dashboard,
                  "background": step_background}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000, help="N tasks (at most 10,000: the CIFAR-10 test set)")
    parser.add_argument("--steps", default="connect,annotate,dashboard,push")
    parser.add_argument("--window", type=int, default=100, help="K of the pipeline run")
    parser.add_argument("--push-windows", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000])
    parser.add_argument("--budget", type=int, default=None, help="default: N / 2")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --retrain-after annotations")
    parser.add_argument("--retrain-after", type=int, default=10)
    parser.add_argument("--selector", default="linear")
    parser.add_argument("--selector-options", default="{}")
    parser.add_argument("--step-timeout", type=float, default=900.0, help="seconds any one wait may take")
    parser.add_argument("--connect-timeout", type=float, default=2400.0, help="seconds to wait for the first ranking")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ALC_DATA_DIR", "../shared/data")))
    parser.add_argument("--template-dir", type=Path, default=Path.home() / ".cache" / "alc" / "scale-bench")
    parser.add_argument("--starred", action="store_true",
                        help="initial annotations carry Label Studio's ground-truth star (its default for imported "
                             "ones); without: imported with ground_truth false, as the demo does")
    parser.add_argument("--ls-workers", type=int, default=1,
                        help="1: `label-studio start` (Django's development server, one process); N: N gunicorn "
                             "worker processes, as Label Studio's Docker image serves it (uwsgi, 4 processes)")
    parser.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before / after)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` still stops every service (finally)
    args.budget = args.budget if args.budget is not None else args.tasks // 2
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]

    directory = args.template_dir / f"ls-{LABEL_STUDIO_VERSION}-n{args.tasks}-seed{args.seed}"
    template = Template.load(directory) or build_template(directory, args.tasks, args.data_dir, args.seed)
    template = template.with_stars(args.starred)
    work = Path(tempfile.mkdtemp(prefix="alc-scale-"))
    run = Run(template, work, args)
    figures: dict = {"label": args.label, "starred": args.starred, "ls_workers": args.ls_workers, "code": str(Path(q.__file__).resolve().parents[1]), "tasks": args.tasks, "window": args.window, "budget": args.budget, "selector": args.selector,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                              cwd=Path(q.__file__).resolve().parents[1]).stdout.strip()}
    try:
        pipeline = [s for s in steps if s in PIPELINE_STEPS]
        if pipeline:
            run.start_label_studio("ls")
            run.start_services()
            try:
                for name in pipeline:
                    PIPELINE_STEPS[name](run, figures)
            finally:
                figures["peak_rss_mib"] = run.stop_services()
                run.stop_label_studio()
        if "push" in steps:
            step_push(run, figures)
    finally:
        run.stop_label_studio()
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(figures, indent=1))
        shutil.rmtree(work, ignore_errors=True)
    print_table(figures)


if __name__ == "__main__":
    main()
