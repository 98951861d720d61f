"""Webhook latency as Label Studio sees it: `alc serve` (gunicorn) + the embedded Redis, real HTTP.

Label Studio posts each webhook with a new connection (requests.post, 1 s timeout) inside the
annotator's submit, so every request here opens its own connection too. Prints p50/p95/p99/max for
sequential posts and for several annotators posting at once. No worker runs: this is the web side only.

    .venv/bin/python benchmarks/webhook_latency.py --requests 2000 --concurrency 8
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(i: int, projects: int) -> dict:
    project = 1 + i % projects
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 100_000 + i, "task": 1 + i % 500, "project": project, "result": []},
        "task": {"id": 1 + i % 500, "project": project},
        "project": {"id": project},
    }


def post(url: str, i: int, projects: int) -> float:
    started = time.perf_counter()
    response = requests.post(url, json=body(i, projects), timeout=1.0)  # what Label Studio does
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")
    return elapsed


def report(name: str, seconds: list[float], wall: float) -> None:
    ms = np.array(seconds) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    print(
        f"{name:<26} n={len(ms):5d}  {len(ms) / wall:6.0f} req/s  p50={p50:6.2f} ms  p95={p95:6.2f} ms  "
        f"p99={p99:6.2f} ms  max={ms.max():7.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--projects", type=int, default=3)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="alc-bench-"))
    port = free_port()
    env = {**os.environ, "ALC_DATA_HOME": str(home), "ALC_SELECTOR": "random", "ALC_RETRAIN_AFTER_ANNOTATIONS": "50"}
    env.pop("REDIS_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/webhook"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["redis"] == "up":
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("alc serve did not come up")
            time.sleep(0.2)
        for i in range(50):  # warm-up
            post(url, i, args.projects)
        print(f"CPU cores: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.2f}")
        started = time.perf_counter()
        timings = [post(url, i, args.projects) for i in range(args.requests)]
        report("sequential", timings, time.perf_counter() - started)
        for workers in sorted({2, args.concurrency}):
            started = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                timings = list(pool.map(lambda i: post(url, i, args.projects), range(args.requests)))
            report(f"{workers} clients back-to-back", timings, time.perf_counter() - started)
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        depth = [line for line in metrics.splitlines() if line.startswith("alc_queue_depth")]
        print("queue after the run:", "; ".join(depth))
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
