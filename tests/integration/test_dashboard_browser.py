"""The project manager's view against a real Label Studio, read in a real headless Chromium.

A small project goes through what the backend does in production, with Label Studio's real API:
twelve tasks with an initial label each; `alc connect`'s setup (baseline, budget 10); a published
model ranking with known probabilities; the connectors' push opens the three most suspicious tasks
(each holds two opinions of the budget); three annotators re-annotate through the API and the
connectors' per-annotation step settles a task or asks for one more opinion (task 0: cat -> dog after
a tie; task 6: bird confirmed; task 10: dog -> cat after a tie); a second push opens the next two (the
five re-annotations left pay for two more tasks to finish, not three). No audit draw was made (the
full-read push has none), so no accuracy is shown, and the page says why. /api/status and the
rendered /dashboard must show exactly those numbers. The screenshot is saved in the test's tmp dir, and where
ALC_SCREENSHOT_DIR says (``ALC_SCREENSHOT_DIR=docs`` refreshes docs/dashboard.png).
"""

from __future__ import annotations

import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from werkzeug.serving import make_server

from backend.app import create_app
from backend.model_store import ModelStore, Ranking
from backend.protocol import scores_from_priorities
from backend.settings import load_settings
from connectors.client import connect
from connectors.queue import on_annotation, push_window
from connectors.setup import configure_project

pytestmark = pytest.mark.integration

CLASSES = ["cat", "dog", "bird"]
CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="label" toName="image"><Choice value="cat"/><Choice value="dog"/><Choice value="bird"/></Choices></View>"""
INITIAL = ["cat", "cat", "dog", "bird", "cat", "dog", "bird", "dog", "cat", "bird", "dog", "cat"]
P_INITIAL = [0.1, 0.9, 0.5, 0.8, 0.6, 0.95, 0.2, 0.85, 0.7, 0.9, 0.3, 0.97]  # the model's p(initial label)
BUDGET = 10
WINDOW = 3
# (task index, annotator index, label): what the three annotators answer, in this order
ANSWERS = [(0, 0, "dog"), (6, 0, "bird"), (10, 1, "cat"), (0, 1, "dog"), (10, 2, "cat")]
SETTLED, CHANGED = {0, 6, 10}, {0: ("cat", "dog"), 10: ("dog", "cat")}
SECOND_WINDOW = (2, 4)  # two tasks, two opinions held for each
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def api(url: str, token: str, method: str, path: str, **kwargs) -> requests.Response:
    response = requests.request(method, url + path, headers={"Authorization": f"Token {token}"}, timeout=30, **kwargs)
    assert response.ok, f"{method} {path}: {response.status_code} {response.text[:300]}"
    return response


def ranking_of(task_ids: list[int]) -> Ranking:
    noisiness = -np.log(np.array(P_INITIAL))
    counts = np.eye(3)[[CLASSES.index(label) for label in INITIAL]]
    return Ranking(task_ids=task_ids, class_names=CLASSES, counts=counts, priority=noisiness, noisiness=noisiness,
                   ambiguity=np.full(len(task_ids), 0.4), scores=scores_from_priorities(noisiness),
                   predicted=np.zeros(len(task_ids), dtype=int))


@pytest.fixture(scope="module")
def project(label_studio, tmp_path_factory) -> dict:
    url, token = label_studio.url, label_studio.token
    pid = api(url, token, "POST", "/api/projects", json={"title": "Pets: label cleaning", "label_config": CONFIG}).json()["id"]
    api(url, token, "POST", f"/api/projects/{pid}/import",
        json=[{"data": {"image": f"/img/{i}.png"}, "annotations": [{"result": choice(label)}]} for i, label in enumerate(INITIAL)])
    tasks = sorted(t["id"] for t in api(url, token, "GET", "/api/tasks", params={"project": pid, "page_size": 100}).json()["tasks"])
    client = connect(url, token, retries=2)
    configure_project(client, pid, budget=BUDGET)
    models = tmp_path_factory.mktemp("dashboard-models")
    ranking = ranking_of(tasks)
    version = ModelStore(models).publish(pid, None, ranking, {"selector": "linear"})

    def push() -> list[int]:
        return push_window(client, pid, task_ids=tasks, scores=ranking.scores.tolist(),
                           priorities=ranking.priority.tolist(), noisiness=ranking.noisiness.tolist(),
                           ambiguity=ranking.ambiguity.tolist(), model_version=version,
                           window=WINDOW, budget=BUDGET).opened

    first_window = push()
    annotators = [label_studio.create_user("dash") for _ in range(3)]
    for row, who, label in ANSWERS:
        api(url, annotators[who].token, "POST", f"/api/tasks/{tasks[row]}/annotations/",
            json={"result": choice(label), "lead_time": 3.0 + row})
        on_annotation(client, pid, tasks[row], budget=BUDGET)  # what the worker does on the webhook
    second_window = push()
    return {"id": pid, "tasks": tasks, "models": models, "windows": (first_window, second_window),
            "annotators": [a.email for a in annotators]}


@pytest.fixture(scope="module")
def backend(label_studio, project, tmp_path_factory) -> str:
    home = tmp_path_factory.mktemp("dashboard-backend")
    settings = load_settings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
                             data_home=home, model_dir=project["models"], budget=BUDGET, selector="random")
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        embedded = app.extensions["alc"].embedded_redis
        if embedded is not None:
            embedded.stop()


def test_the_windows_opened_the_most_suspicious_tasks(project):
    tasks = project["tasks"]
    assert project["windows"] == ([tasks[0], tasks[6], tasks[10]], [tasks[2], tasks[4]])


def test_api_status_reports_what_happened_in_label_studio(backend, project):
    tasks = project["tasks"]
    status = requests.get(f"{backend}/api/status", params={"project": project["id"]}, timeout=60).json()
    spent = len(ANSWERS)
    held = 2 * len(SECOND_WINDOW)
    assert status["budget"] == {"total": BUDGET, "spent": spent, "committed": len(SECOND_WINDOW), "held": held,
                                "remaining": BUDGET - spent - held, "exhausted": False}
    assert status["tasks"]["settled"] == len(SETTLED) and status["tasks"]["labels_changed"] == len(CHANGED)
    assert [(c["task_id"], c["from"], c["to"]) for c in status["recent_changes"]] == [
        (tasks[10], "dog", "cat"), (tasks[0], "cat", "dog")]  # newest first
    assert [q["task_id"] for q in status["queue"]] == [tasks[r] for r in SECOND_WINDOW]  # the order Label Studio serves
    assert math.isclose(status["queue"][0]["priority"], -math.log(P_INITIAL[2]), rel_tol=1e-3)
    per = {a["annotator"]: a["annotations"] for a in status["annotators"]}
    assert per == {project["annotators"][0]: 2, project["annotators"][1]: 2, project["annotators"][2]: 1}
    assert [e["spent"] for e in status["timeline"]] == list(range(1, spent + 1))
    assert [e["labels_changed"] for e in status["timeline"]] == [0, 0, 0, 1, 2]
    estimate = status["estimate"]
    assert estimate["available"] is False and "no audit draw yet" in estimate["reason"]


def test_bad_requests_get_clear_errors(backend):
    response = requests.get(f"{backend}/api/status", params={"project": "abc"}, timeout=30)
    assert response.status_code == 400 and "positive integer" in response.json()["error"]
    response = requests.get(f"{backend}/api/status", params={"project": 999999}, timeout=30)
    assert response.status_code == 404 and "999999" in response.json()["error"]


def test_dashboard_in_headless_chromium_shows_the_key_numbers(label_studio, backend, project, tmp_path, chromium):
    from playwright.sync_api import sync_playwright

    tasks = project["tasks"]
    shot = tmp_path / "dashboard.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            response = page.goto(f"{backend}/dashboard?project={project['id']}&refresh=600", timeout=60_000)
            assert response is not None and response.status == 200
            page.screenshot(path=str(shot), full_page=True)
            text = page.inner_text("body")
            assert page.inner_text("#budget-total") == str(BUDGET)
            assert page.inner_text("#budget-spent") == str(len(ANSWERS))
            assert page.inner_text("#budget-remaining") == str(BUDGET - len(ANSWERS) - 2 * len(SECOND_WINDOW))
            assert page.inner_text("#labels-changed") == str(len(CHANGED))
            assert page.inner_text("#tasks-settled") == str(len(SETTLED))
            assert page.inner_text("#accuracy") == "-" and "no audit draw yet" in page.inner_text("#no-estimate")
            assert "Label cleaning: Pets: label cleaning" in text
            assert page.locator("svg").count() == 3  # burn-down, corrected vs spend, accuracy
            links = [a.get_attribute("href") for a in page.locator("#queue a").all()]
            assert links == [f"{label_studio.url}/projects/{project['id']}/data?task={tasks[row]}" for row in SECOND_WINDOW]
            assert page.inner_text("#changes").count("cat") == 2 and page.inner_text("#changes").count("dog") == 2
            missing = page.goto(f"{backend}/dashboard?project=999999", timeout=60_000)
            assert missing is not None and missing.status == 404 and "999999" in page.inner_text("#error")
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    if os.environ.get("ALC_SCREENSHOT_DIR"):
        keep = Path(os.environ["ALC_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep / "dashboard.png")
