"""End to end: real Label Studio, real Redis, the real backend and worker, simulated annotators working
Label Studio's own label stream. On the same noisy project and the same budget, the priority order must
correct at least twice as many labels per annotation as the random order; the budget is spent exactly;
the export agrees with Label Studio's annotations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from backend.demo.report import read_labels
from backend.demo.runner import DemoConfig, DemoRun
from backend.demo.services import Services, free_port

pytestmark = pytest.mark.integration

BUDGET = 40


@pytest.fixture(scope="module")
def stack(label_studio, tmp_path_factory):
    """An embedded Redis for this module; Label Studio is the session's shared one."""
    services = Services(tmp_path_factory.mktemp("demo-e2e"))
    redis_url = services.start_redis()
    yield services, redis_url
    services.stop()


def run_demo(order: str, label_studio, services: Services, redis_url: str) -> tuple[dict, DemoRun, dict]:
    """One demo run with its own backend and worker (the order is a backend setting), then both stop."""
    config = DemoConfig(
        n_images=400, seed=11, noise_rate=0.15, budget=BUDGET, order=order, window=12,
        retrain_after_annotations=8, retrain_after_seconds=10, max_annotations_per_task=5,
        annotators=4, pace=0.0, idle_timeout=12, first_model_timeout=180, title=f"e2e {order}",
    )
    env = {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "REDIS_URL": redis_url,
        "ALC_DATA_HOME": str(services.home / order),
        **config.backend_env(),
    }
    backend_url = services.start_backend(free_port(), env)
    services.start_worker(env, name=f"worker-{order}")
    try:
        run = DemoRun(config, label_studio.url, label_studio.token, backend_url, env)
        run.setup()
        run.start_annotators()
        run.watch(exit_when_done=True, check_alive=services.check_alive, timeout=480)
        report = run.report()
    finally:
        services.stop_processes()
    return report, run, env


def test_priority_order_beats_random_on_the_same_project_and_budget(label_studio, stack, tmp_path):
    services, redis_url = stack
    priority, run, env = run_demo("priority", label_studio, services, redis_url)
    random, _, _ = run_demo("random", label_studio, services, redis_url)
    print("\npriority:", json.dumps({k: v for k, v in priority.items() if k != "config"}))
    print("random:  ", json.dumps({k: v for k, v in random.items() if k != "config"}))

    # the same noisy dataset in both projects
    assert priority["initial_accuracy"] == random["initial_accuracy"]
    # the budget is spent exactly, never exceeded, in both orders
    assert priority["annotations_spent"] == BUDGET
    assert random["annotations_spent"] == BUDGET
    assert len(priority["model_versions"]) >= 2, "the selector was retrained while annotators worked"
    p, r = priority["net_corrections_per_annotation"], random["net_corrections_per_annotation"]
    assert p > 0 and p >= 2 * r, f"priority {p} vs random {r} net corrections per annotation"
    assert priority["final_accuracy"] > priority["initial_accuracy"]

    # the export agrees with Label Studio's own annotations
    out = tmp_path / "export.json"
    result = subprocess.run(
        [sys.executable, "-m", "backend.cli", "export", "--project", str(run.project.id), "--format", "json",
         "--out", str(out)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
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
