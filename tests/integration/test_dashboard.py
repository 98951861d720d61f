"""The project manager's view against a real Label Studio, read in a real headless Chromium.

A small project: six tasks with an initial label each; two annotators re-annotate through Label
Studio's API (task 1: both say 'dog' over the initial 'cat' -> settled and corrected; task 2: one agrees
-> settled, unchanged), one task is re-opened for a third opinion. A published model ranking with
known noisiness gives a known accuracy estimate. /api/status and the rendered /dashboard must show
exactly those numbers; a screenshot is written for people to look at.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from werkzeug.serving import make_server

from backend.app import create_app
from backend.model_store import ModelStore, Ranking
from backend.settings import load_settings

pytestmark = pytest.mark.integration

CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="label" toName="image"><Choice value="cat"/><Choice value="dog"/><Choice value="bird"/></Choices></View>"""
INITIAL = ["cat", "cat", "dog", "bird", "cat", "dog"]
P_INITIAL = [0.1, 0.9, 0.5, 0.8, 0.6, 0.95]  # the model's probability of each initial label
BUDGET = 10
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def api(url: str, token: str, method: str, path: str, **kwargs) -> requests.Response:
    response = requests.request(method, url + path, headers={"Authorization": f"Token {token}"}, timeout=30, **kwargs)
    assert response.ok, f"{method} {path}: {response.status_code} {response.text[:300]}"
    return response


@pytest.fixture(scope="module")
def project(label_studio) -> dict:
    url, token = label_studio.url, label_studio.token
    pid = api(url, token, "POST", "/api/projects", json={"title": "dashboard check", "label_config": CONFIG}).json()["id"]
    api(url, token, "POST", f"/api/projects/{pid}/import",
        json=[{"data": {"image": f"/img/{i}.png"}, "annotations": [{"result": choice(label)}]} for i, label in enumerate(INITIAL)])
    tasks = sorted(t["id"] for t in api(url, token, "GET", "/api/tasks", params={"project": pid, "page_size": 100}).json()["tasks"])
    first, second = label_studio.create_user("dash"), label_studio.create_user("dash")
    api(url, first.token, "POST", f"/api/tasks/{tasks[0]}/annotations/", json={"result": choice("dog"), "lead_time": 4.0})
    api(url, second.token, "POST", f"/api/tasks/{tasks[0]}/annotations/", json={"result": choice("dog"), "lead_time": 6.0})
    api(url, first.token, "POST", f"/api/tasks/{tasks[1]}/annotations/", json={"result": choice("cat"), "lead_time": 2.0})
    api(url, token, "PATCH", f"/api/tasks/{tasks[2]}", json={"overlap": 2, "is_labeled": False})  # one open slot
    return {"id": pid, "tasks": tasks, "annotators": [first.email, second.email]}


@pytest.fixture(scope="module")
def backend(label_studio, project, tmp_path_factory) -> str:
    home = tmp_path_factory.mktemp("dashboard-backend")
    settings = load_settings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
                             data_home=home, budget=BUDGET, selector="random")
    counts = np.eye(3)[[["cat", "dog", "bird"].index(label) for label in INITIAL]]
    noisiness = -np.log(np.array(P_INITIAL))
    ranking = Ranking(task_ids=project["tasks"], class_names=["cat", "dog", "bird"], counts=counts, priority=noisiness,
                      noisiness=noisiness, ambiguity=np.zeros(6), scores=-noisiness, predicted=np.zeros(6, dtype=int))
    ModelStore(settings.models_path).publish(project["id"], None, ranking, {"selector": "fixed"})
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


def expected_accuracy() -> float:
    unsettled = [p for i, p in enumerate(P_INITIAL) if i not in (0, 1)]  # tasks 1 and 2 are settled
    return 1 - sum(1 - p for p in unsettled) / len(P_INITIAL)


def test_api_status_reports_what_happened_in_label_studio(backend, project):
    status = requests.get(f"{backend}/api/status", params={"project": project["id"]}, timeout=60).json()
    assert status["budget"] == {"total": BUDGET, "spent": 3, "committed": 1, "remaining": 6, "exhausted": False}
    assert status["tasks"]["settled"] == 2
    assert status["tasks"]["labels_changed"] == 1
    assert [c["task_id"] for c in status["recent_changes"]] == [project["tasks"][0]]
    assert (status["recent_changes"][0]["from"], status["recent_changes"][0]["to"]) == ("cat", "dog")
    assert [q["task_id"] for q in status["queue"]] == [project["tasks"][2]]
    per = {a["annotator"]: a for a in status["annotators"]}
    assert per[project["annotators"][0]]["annotations"] == 2 and per[project["annotators"][0]]["mean_lead_time"] == 3.0
    assert math.isclose(status["estimate"]["accuracy"], round(expected_accuracy(), 4))
    assert [e["spent"] for e in status["timeline"]] == [1, 2, 3]
    # forecast: (1.15 wrong - 5% of 6) corrections at 3 re-annotations each; suggestion: 2.15 wrong x 3
    assert status["estimate"]["forecast_spend"] == math.ceil((sum(1 - p for p in P_INITIAL[2:]) - 0.3) * 3)
    assert status["estimate"]["suggested_budget"] == math.ceil(sum(1 - p for p in P_INITIAL) * 3)


def test_bad_requests_get_clear_errors(backend):
    response = requests.get(f"{backend}/api/status", params={"project": "abc"}, timeout=30)
    assert response.status_code == 400 and "positive integer" in response.json()["error"]
    response = requests.get(f"{backend}/api/status", params={"project": 999999}, timeout=30)
    assert response.status_code == 404 and "999999" in response.json()["error"]


def test_dashboard_in_headless_chromium_shows_the_key_numbers(backend, project, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("ALC_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            response = page.goto(f"{backend}/dashboard?project={project['id']}&refresh=600", timeout=60_000)
            assert response is not None and response.status == 200
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
            assert page.inner_text("#budget-total") == str(BUDGET)
            assert page.inner_text("#budget-spent") == "3"
            assert page.inner_text("#budget-remaining") == "6"
            assert page.inner_text("#tasks-settled") == "2"
            assert page.inner_text("#labels-changed") == "1"
            assert page.inner_text("#accuracy") == f"{100 * expected_accuracy():.1f}%"
            assert page.locator("svg").count() >= 2  # the two charts
            link = page.locator("#queue a").first
            assert link.get_attribute("href").endswith(f"/projects/{project['id']}/data?task={project['tasks'][2]}")
            assert "cat" in page.inner_text("#changes") and "dog" in page.inner_text("#changes")
        finally:
            browser.close()
    assert (shots / "dashboard.png").stat().st_size > 10_000
