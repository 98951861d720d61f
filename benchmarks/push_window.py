"""Time the cleaning-queue push against a real Label Studio for K = 100 and 1,000, step by step.

For each K: a fresh project of N tasks, one initial label each; then
- ``read``: one paged read of every task with annotations and predictions (connectors.counts.read_project);
- ``first push``: push_window opening K tasks (read + K overlap updates + one bulk prediction import + the
  model_version switch);
- ``re-rank push``: a new model_version over the same open window (read + K predictions, no overlap change);
- ``on_annotation``: one annotation's bookkeeping (a read + at most one update).
Prints figures; asserts nothing about time.

    .venv/bin/python benchmarks/push_window.py                      # starts its own Label Studio
    .venv/bin/python benchmarks/push_window.py --url http://127.0.0.1:8080 --token <40 hex>
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack

import numpy as np
from rich.console import Console
from rich.table import Table

from connectors.client import connect
from connectors.counts import read_project
from connectors.queue import on_annotation, push_window

CLASSES = ["cat", "dog", "bird"]
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")


def choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def make_project(client, n: int, seed: int) -> tuple[int, list[int]]:
    rng = np.random.default_rng(seed)
    project = client.projects.create(title=f"push benchmark, {n} tasks", label_config=CONFIG)
    tasks = [{"data": {"image": f"/img/{i}.png"}, "annotations": [{"result": choice(CLASSES[rng.integers(3)])}]}
             for i in range(n)]
    ids = client.projects.import_tasks(project.id, request=tasks, return_task_ids=True).task_ids
    return project.id, sorted(ids)


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per project (N)")
    parser.add_argument("--windows", type=int, nargs="+", default=[100, 1000], help="window sizes K")
    parser.add_argument("--repeats", type=int, default=3, help="re-rank pushes per K (the median is shown)")
    args = parser.parse_args()
    console = Console()
    with ExitStack() as stack:
        if args.url:
            url, token = args.url.rstrip("/"), args.token
        else:
            from backend.labelstudio_runtime import LabelStudioServer

            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            with console.status("starting Label Studio (first start migrates its database: about a minute)"):
                server = stack.enter_context(LabelStudioServer(f"{tmp}/ls"))
            url, token = server.url, server.token
        client = connect(url, token, timeout=300)
        table = Table(title=f"push_window against Label Studio at {url}, N = {args.tasks} tasks")
        for column in ("K", "read (s)", "first push (s)", "opened", "re-rank push (s, median)", "predictions",
                       "on_annotation (s)"):
            table.add_column(column, justify="right")
        for k in args.windows:
            with console.status(f"K = {k}: importing {args.tasks} tasks"):
                pid, ids = make_project(client, args.tasks, seed=k)
            rng = np.random.default_rng(k)
            scores = rng.random(len(ids))

            def push(version: str):
                return timed(push_window, client, pid, task_ids=ids, scores=scores, priorities=-scores,
                             model_version=version, window=k, budget=None)

            with console.status(f"K = {k}: read, first push, re-rank pushes"):
                _, read_s = timed(read_project, client, pid)
                first, first_s = push(f"bench-{k}-0")
                reranks = [push(f"bench-{k}-{r + 1}") for r in range(args.repeats)]
                task = first.opened[0]
                client.annotations.create(id=task, result=choice("bird"), lead_time=1.0)
                _, settle_s = timed(on_annotation, client, pid, task)
            table.add_row(str(k), f"{read_s:.2f}", f"{first_s:.2f}", str(len(first.opened)),
                          f"{statistics.median(s for _, s in reranks):.2f}", str(reranks[-1][0].predictions),
                          f"{settle_s:.2f}")
            client.projects.delete(pid)
        console.print(table)


if __name__ == "__main__":
    main()
