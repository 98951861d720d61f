"""End to end: real Label Studio, real Redis, the real backend and worker, simulated annotators working
Label Studio's own label stream. On the same noisy project and the same budget, the priority order must
correct at least twice as many labels per annotation as the random order; the budget is spent exactly
and the window closes; the export agrees with Label Studio's annotations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from backend.demo.report import read_labels
from backend.demo.runner import DemoConfig, DemoRun
from backend.demo.services import Services, free_port

pytestmark = pytest.mark.integration

BUDGET = 40


def open_slots(run: DemoRun) -> int:
    """Slots Label Studio would still serve: overlap above the annotation count."""
    return sum(max(0, (t.overlap or 0) - (t.total_annotations or 0))
               for t in run.client.tasks.list(project=run.project.id, fields="all"))


def settle(run: DemoRun, timeout: float = 180.0) -> None:
    """Let the worker finish what the last annotations queued (settling, closing the window)."""
    deadline = time.monotonic() + timeout
    while run.busy() and time.monotonic() < deadline:
        time.sleep(1.0)


def run_demo(order: str, label_studio, home) -> tuple[dict, DemoRun, dict]:
    """One demo run with its own Redis, backend and worker (the order is a backend setting)."""
    config = DemoConfig(
        n_images=400, seed=11, noise_rate=0.15, budget=BUDGET, order=order, window=12,
        retrain_after_annotations=8, retrain_after_seconds=10, max_annotations_per_task=5,
        annotators=4, pace=0.5, idle_timeout=60, first_model_timeout=300, title=f"e2e {order}",
    )
    with Services(home / order) as services:
        env = {
            "LABEL_STUDIO_URL": label_studio.url,
            "LABEL_STUDIO_API_KEY": label_studio.token,
            "REDIS_URL": services.start_redis(),
            "ALC_DATA_HOME": str(services.home / "backend"),
            **config.backend_env(),
        }
        backend_url = services.start_backend(free_port(), env)
        services.start_worker(env)
        run = DemoRun(config, label_studio.url, label_studio.token, backend_url, env)
        run.setup()
        run.start_annotators()
        run.watch(exit_when_done=True, check_alive=services.check_alive, timeout=1200)
        settle(run)
        report = run.report()
        report["open_slots_after"] = open_slots(run)
    return report, run, env


def test_priority_order_beats_random_on_the_same_project_and_budget(label_studio, tmp_path):
    priority, run, env = run_demo("priority", label_studio, tmp_path)
    print("\npriority:", json.dumps({k: v for k, v in priority.items() if k != "config"}), flush=True)
    random, _, _ = run_demo("random", label_studio, tmp_path)
    print("random:  ", json.dumps({k: v for k, v in random.items() if k != "config"}), flush=True)

    # the same noisy dataset in both projects
    assert priority["initial_accuracy"] == random["initial_accuracy"]
    # the budget is spent exactly, never exceeded, and the window is closed, in both orders
    assert priority["annotations_spent"] == BUDGET
    assert random["annotations_spent"] == BUDGET
    assert priority["open_slots_after"] == 0 and random["open_slots_after"] == 0
    assert len(priority["model_versions"]) >= 2, "the selector was retrained while annotators worked"
    p, r = priority["net_corrections_per_annotation"], random["net_corrections_per_annotation"]
    assert p > 0 and p >= 2 * r, f"priority {p} vs random {r} net corrections per annotation"
    assert priority["final_accuracy"] > priority["initial_accuracy"]

    # the export agrees with Label Studio's own annotations (Label Studio is still up; the backend is not needed)
    out = tmp_path / "export.json"
    result = subprocess.run(
        [sys.executable, "-m", "backend.cli", "export", "--project", str(run.project.id), "--format", "json",
         "--out", str(out)],
        env={**os.environ, **env, "REDIS_URL": ""}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    exported = {int(row["task_id"]): row for row in json.loads(out.read_text())}
    labels = read_labels(run.client, run.project.id, run.dataset.class_names, run.dataset.n_tasks)
    final = labels.labels()
    for k, task_id in enumerate(run.project.task_ids):
        row = exported[task_id]
        assert row["final_label"] == run.dataset.class_names[final[k]], f"task {task_id}"
        assert row["initial_label"] == run.dataset.class_names[labels.initial[k]]
    assert sum(bool(row["settled"]) for row in exported.values()) == int(labels.settled().sum())
    assert np.isclose(priority["final_accuracy"], float(np.mean(final == run.dataset.true_labels)), atol=1e-4)
