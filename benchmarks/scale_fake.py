"""Label Studio requests per operation at 1,000 and 100,000 tasks, against the HTTP-level fake.

The fake is the connectors' and backend tests' in-memory Label Studio (tests/connectors/
fake_label_studio.py, imported as is) under the real label-studio-sdk client; every request it answers
is counted. Each project has one initial label per task (imported without the ground-truth star) and
is connected first (``connectors.setup.configure_project``). Then, per operation:

- the service's path where the code has it (``backend.jobs.TRANSPORT``, the incremental pipeline): the
  first retrain through rq (full read into the working state, every image fetched from a local image
  server, ``linear`` fitted, the window pushed), one annotation per webhook (``POST /webhook`` through
  the Flask app, then the worker's job), for a settling annotation and a tie, the retrain after 10
  annotations, a reconcile, ``/api/status`` and ``/dashboard`` (uncached by the page cache), the status again after one more
  annotation (a process re-reads only the tasks changed since its last read);
- otherwise (the code before it) the connectors' calls the old jobs made: a full read
  (``read_project``), the first push and a re-rank push (``push_window``), one annotation
  (``on_annotation``) settled and tied, and the status read (``project_status``).

Peak RSS of this process (fake, image server and worker together: an upper bound of the worker's) is
sampled every 0.2 s, with its increase over the RSS before the operation (the worker's own data, plus the
fake's transient answers); ``worker_imports_rss_mib`` is the RSS of a fresh process that imports what a
worker imports, so that a worker's peak is about that plus the increase. Prints figures, asserts nothing.

    nice -n 10 .venv/bin/python benchmarks/scale_fake.py --sizes 1000,100000 --out runs/scale-fake.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

import backend
from backend import queue as q

ROOT = Path(backend.__file__).resolve().parents[1]  # the code under test (PYTHONPATH may point elsewhere)
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")
API_KEY = "0123456789abcdef0123456789abcdef01234567"


def fake_class():
    """The fake as the code under test has it (its own file, or the connectors' conftest before that)."""
    for name in ("fake_label_studio.py", "conftest.py"):
        path = ROOT / "tests" / "connectors" / name
        if path.is_file():
            spec = importlib.util.spec_from_file_location(f"_fake_{name[:-3]}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up there
            spec.loader.exec_module(module)
            if hasattr(module, "FakeLabelStudio"):
                return module.FakeLabelStudio
    raise RuntimeError(f"no FakeLabelStudio under {ROOT / 'tests' / 'connectors'}")


def region(label: str) -> dict:
    return {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}


# --- measuring ----------------------------------------------------------------------------------


class Peak:
    """Peak RSS of this process, sampled in a thread."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.value = self.proc.memory_info().rss
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.value = max(self.value, self.proc.memory_info().rss)

    def reset(self) -> None:
        self.value = self.proc.memory_info().rss

    def mib(self) -> float:
        return round(max(self.value, self.proc.memory_info().rss) / 2**20, 1)


def worker_imports_rss() -> float:
    """RSS (MiB) of a fresh Python that has imported the worker, its jobs and the selectors' libraries."""
    code = ("import backend.worker, backend.jobs, scoring.selectors, sklearn.linear_model, torch, psutil; "
            "print(psutil.Process().memory_info().rss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return round(int(out.stdout.split()[-1]) / 2**20, 1)


def measure(fake, peak: Peak, fn) -> dict:
    before = len(fake.calls)
    gc.collect()
    peak.reset()
    rss_before = peak.mib()
    started = time.perf_counter()
    result = fn()
    calls = fake.calls[before:]
    kinds: dict[str, int] = {}
    for method, path in calls:
        pattern = "/".join("{id}" if p.isdigit() else p for p in path.split("/"))
        kinds[f"{method} {pattern}"] = kinds.get(f"{method} {pattern}", 0) + 1
    top = peak.mib()
    return {"requests": len(calls), "seconds": round(time.perf_counter() - started, 3), "peak_rss_mib": top,
            "peak_rss_increase_mib": round(top - rss_before, 1), "kinds": kinds, "result": result}


# --- an image server playing Label Studio's /data/upload/ ---------------------------------------


def image_server(base: np.ndarray) -> tuple[str, ThreadingHTTPServer]:
    """PNG i = CIFAR test image i mod len(base), with its index written into the first pixels (all distinct)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            try:
                i = int(self.path.rsplit("/", 1)[-1].split(".")[0])
            except ValueError:
                self.send_error(404)
                return
            image = base[i % len(base)].copy()
            image[0, :3] = [(i >> 16) & 255, (i >> 8) & 255, i & 255]
            out = io.BytesIO()
            Image.fromarray(image).save(out, format="PNG")
            body = out.getvalue()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


# --- the project ---------------------------------------------------------------------------------


def build(fake_cls, n: int, seed: int):
    rng = np.random.default_rng(seed)
    fake = fake_cls(token=API_KEY)
    pid = fake.add_project(label_config=CONFIG)
    labels = rng.integers(0, len(CLASSES), n)
    ids = [fake.add_task(pid, {"image": f"/data/upload/1/{i}.png"}, [CLASSES[labels[i]]]) for i in range(n)]
    for tid in ids:  # imported with "ground_truth": false
        for a in fake.tasks[tid]["annotations"]:
            a["ground_truth"] = False
    return fake, pid, ids


def open_tasks(fake, ids: list[int]) -> list[int]:
    return [t for t in ids if fake.tasks[t]["overlap"] > fake.n_annotators(t)]


def initial_label(fake, tid: int) -> str:
    return fake.tasks[tid]["annotations"][0]["result"][0]["value"]["choices"][0]


def other_label(label: str) -> str:
    return CLASSES[(CLASSES.index(label) + 1) % len(CLASSES)]


# --- the code before the pipeline: what the old jobs called ---------------------------------------


def run_connectors(fake, pid: int, ids: list[int], peak: Peak, window: int, budget: int) -> dict:
    from connectors.client import connect
    from connectors.counts import read_project
    from connectors.ledger import project_status
    from connectors.queue import on_annotation, push_window
    from connectors.setup import configure_project

    client = connect("http://ls.test", fake.token, timeout=600, retries=0, transport=fake.transport())
    scores = np.random.default_rng(1).random(len(ids))
    push = lambda version: push_window(client, pid, task_ids=ids, scores=scores.tolist(),  # noqa: E731
                                       priorities=(-scores).tolist(), model_version=version, window=window,
                                       budget=budget)
    out = {"connect": measure(fake, peak, lambda: configure_project(client, pid, budget=budget, window=window).get("baseline")),
           "full_read": measure(fake, peak, lambda: len(read_project(client, pid).tasks)),
           "first_push": measure(fake, peak, lambda: len(push("v1").opened)),
           "rerank_push": measure(fake, peak, lambda: len(push("v2").opened))}
    window_ids = open_tasks(fake, ids)
    settled, tie = [], []
    for k, tid in enumerate(window_ids[:10]):
        label = initial_label(fake, tid) if k % 2 == 0 else other_label(initial_label(fake, tid))
        fake.annotate(tid, label, by=100 + k)
        (settled if k % 2 == 0 else tie).append(
            measure(fake, peak, lambda tid=tid: on_annotation(client, pid, tid, budget=budget)["action"]))
    out["annotation_settled"] = summarise(settled)
    out["annotation_tie"] = summarise(tie)
    out["status"] = measure(fake, peak, lambda: project_status(client, pid, budget=budget)["project"]["id"])
    return out


# --- the incremental pipeline: the service's own path --------------------------------------------


def run_service(fake, pid: int, ids: list[int], peak: Peak, window: int, budget: int, work: Path,
                images: np.ndarray, selector: str, selector_options: dict) -> dict:
    from rq import Queue, SimpleWorker

    from backend import jobs
    from backend.app import create_app
    from backend.settings import load_settings
    from backend.working_state import reconcile_records
    from connectors.client import connect
    from connectors.setup import configure_project

    url, server = image_server(images)
    redis_home = q.EmbeddedRedis(work / "redis")
    settings = load_settings(
        redis_url=redis_home.start(), data_home=work / "home", model_dir=work / "models", label_studio_url=url,
        label_studio_api_key=API_KEY, selector=selector, selector_options=selector_options, window=window, budget=budget,
        retrain_after_annotations=10, retrain_after_seconds=3600, job_retries=0, label_studio_timeout=600,
        basic_auth_user=None, basic_auth_pass=None, webhook_secret=None, reconcile_seconds=0,
    )
    jobs.TRANSPORT = fake.transport()
    jobs.configure(settings)
    conn = q.connect(settings.redis_url)
    conn.flushdb()
    app = create_app(settings).test_client()

    def work_off(queues=q.QUEUES) -> None:
        SimpleWorker([Queue(name, connection=conn) for name in queues], connection=conn).work(
            burst=True, dequeue_strategy=getattr(q, "DEQUEUE_STRATEGY", "default"))

    def last_retrain() -> dict:
        record = q.retrain_records(conn, pid)[0]
        return {k: record.get(k) for k in ("model_version", "seconds", "tasks", "mode", "push")}

    def webhook(tid: int, aid: int) -> None:
        task = fake.tasks[tid]
        annotation = next(a for a in task["annotations"] if a["id"] == aid)
        body = {"action": "ANNOTATION_CREATED", "project": {"id": pid},
                "annotation": {**annotation, "task": tid, "project": pid}, "task": {"id": tid, "project": pid}}
        response = app.post("/webhook", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        work_off([q.FAST_QUEUE])

    try:
        client = connect("http://ls.test", fake.token, timeout=600, retries=0, transport=fake.transport())
        out = {"connect": measure(fake, peak, lambda: configure_project(client, pid, budget=budget, window=window).get("baseline"))}

        def first() -> dict:
            q.request_retrain(conn, pid, q.Cadence.from_settings(settings), force=True)
            work_off([q.TRAIN_QUEUE])
            return last_retrain()

        out["first_retrain"] = measure(fake, peak, first)
        window_ids = open_tasks(fake, ids)
        settled, tie = [], []
        for k, tid in enumerate(window_ids[:9]):
            label = initial_label(fake, tid) if k % 2 == 0 else other_label(initial_label(fake, tid))
            aid = fake.annotate(tid, label, by=100 + k)
            (settled if k % 2 == 0 else tie).append(measure(fake, peak, lambda tid=tid, aid=aid: webhook(tid, aid)))
        out["annotation_settled"] = summarise(settled)
        out["annotation_tie"] = summarise(tie)
        tenth = open_tasks(fake, ids)[0]
        aid = fake.annotate(tenth, initial_label(fake, tenth), by=200)

        def rerank() -> dict:
            webhook(tenth, aid)  # the 10th annotation queues the retrain
            work_off([q.TRAIN_QUEUE])
            return last_retrain()

        out["tenth_annotation_and_retrain"] = measure(fake, peak, rerank)

        def reconcile() -> dict:
            q.enqueue_reconcile(conn, pid, "benchmark")
            work_off([q.TRAIN_QUEUE])
            record = reconcile_records(conn, pid)[0]
            return {"n_differences": record["n_differences"], "seconds": record["seconds"]}

        out["reconcile"] = measure(fake, peak, reconcile)

        def page(path: str) -> int:
            app.application.extensions.pop("alc_status_cache", None)  # uncached, as a request past the cache
            response = app.get(f"{path}?project={pid}")
            assert response.status_code == 200, response.get_data(as_text=True)[:300]
            return len(response.get_data())

        out["api_status"] = measure(fake, peak, lambda: page("/api/status"))  # the first read since the rebuild
        out["dashboard"] = measure(fake, peak, lambda: page("/dashboard"))
        one_more = open_tasks(fake, ids)[0]
        webhook(one_more, fake.annotate(one_more, other_label(initial_label(fake, one_more)), by=300))
        out["api_status_after_an_annotation"] = measure(fake, peak, lambda: page("/api/status"))  # re-reads 1 task
        return out
    finally:
        jobs.TRANSPORT = None
        server.shutdown()
        redis_home.stop()


def summarise(items: list[dict]) -> dict:
    if not items:
        return {}
    return {"n": len(items), "requests": [i["requests"] for i in items],
            "requests_median": statistics.median(i["requests"] for i in items),
            "seconds_median": round(statistics.median(i["seconds"] for i in items), 3),
            "seconds_max": max(i["seconds"] for i in items), "kinds": items[-1]["kinds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--selector", default="linear")
    parser.add_argument("--selector-options", type=json.loads, default={},
                        help='JSON, e.g. \'{"folds": 2, "max_iter": 100}\' to bound the fit on a shared CPU')
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from backend import jobs

    service = hasattr(jobs, "TRANSPORT")
    fake_cls = fake_class()
    base = np.load(args.data_dir / "cifar10h_test1000_lossless.npz")["images"]
    peak = Peak()
    figures = {"label": args.label, "code": str(ROOT), "selector": args.selector, "selector_options": args.selector_options,
               "path": "service (rq jobs)" if service else "connectors calls",
               "sizes": {}}
    figures["worker_imports_rss_mib"] = worker_imports_rss()
    for n in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        fake, pid, ids = build(fake_cls, n, seed=n)
        baseline = round(psutil.Process().memory_info().rss / 2**20, 1)
        print(f"{n:,} tasks: fake built in {time.perf_counter() - started:.1f} s, RSS {baseline} MiB", flush=True)
        budget = n // 2
        with tempfile.TemporaryDirectory(prefix="alc-scale-fake-") as tmp:
            if service:
                result = run_service(fake, pid, ids, peak, args.window, budget, Path(tmp), base, args.selector,
                                     args.selector_options)
            else:
                result = run_connectors(fake, pid, ids, peak, args.window, budget)
        result["rss_after_building_the_fake_mib"] = baseline
        figures["sizes"][str(n)] = result
        for name, item in result.items():
            if isinstance(item, dict):
                shown = {k: v for k, v in item.items() if k not in ("kinds",)}
                print(f"  {name}: {json.dumps(shown, default=str)}", flush=True)
        del fake
        if args.out:  # after each size, so that a long run stopped half-way keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
