"""A real Label Studio 1.23.2 uses this backend as its model: /setup, /predict, /webhook, retraining.

The project's model is `alc serve --with-worker` (embedded Redis, linear selector), registered with
`ml.create`. Label Studio calls /setup (which queues the first training) and /predict and stores the
scores; an annotation made through the API reaches /webhook, a retrain runs, and the new
model_version shows in Label Studio.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio
from PIL import Image
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
    + "".join(f'<Choice value="{c}"/>' for c in CLASSES)
    + "</Choices></View>"
)
N_TASKS = 16
WINDOW = 4
UNTRAINED = "alc-untrained"


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory, serve_alc):
    """`alc serve --with-worker` on 127.0.0.1 against the session's Label Studio."""
    home = tmp_path_factory.mktemp("alc-backend")
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "ALC_DATA_HOME": str(home),
        "ALC_SELECTOR": "linear",
        "ALC_SELECTOR_OPTIONS": '{"folds": 2, "image_size": 8}',
        "ALC_RETRAIN_AFTER_ANNOTATIONS": "1",
        "ALC_WINDOW": str(WINDOW),
    }
    for name in ("REDIS_URL", "MODEL_DIR", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "ALC_WEBHOOK_SECRET"):
        env.pop(name, None)
    with serve_alc(env, home) as url:
        yield url, home


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def make_project(ls: LabelStudio, label_studio, tiny300: dict) -> tuple[int, list[int]]:
    """N_TASKS uploaded CIFAR images, each with one initial label (every fourth one wrong)."""
    project = ls.projects.create(title="ml backend integration", label_config=CONFIG)
    files = [(f"file{i}", (f"img{i}.png", png(tiny300["images"][i]), "image/png")) for i in range(N_TASKS)]
    response = requests.post(
        f"{label_studio.url}/api/projects/{project.id}/import",
        headers={"Authorization": f"Token {label_studio.token}"},
        files=files,
        timeout=60,
    )
    assert response.status_code == 201, response.text
    tasks = sorted(ls.tasks.list(project=project.id), key=lambda t: t.id)
    assert len(tasks) == N_TASKS
    for i, task in enumerate(tasks):
        label = int(tiny300["labels"][i])
        if i % 4 == 0:
            label = (label + 1) % len(CLASSES)
        ls.annotations.create(id=task.id, result=[choice(CLASSES[label])])
    return project.id, [t.id for t in tasks]


def choice(label: str) -> dict:
    return {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}


def serving_version(backend_url: str, project_id: int) -> str:
    response = requests.post(f"{backend_url}/setup", json={"project": f"{project_id}.0", "schema": CONFIG}, timeout=5)
    return response.json()["model_version"]


def metric(backend_url: str, name: str) -> float:
    """One sample of /metrics by its exact name and labels, e.g. 'alc_jobs_total{kind="retrain",outcome="ok"}'."""
    for line in requests.get(f"{backend_url}/metrics", timeout=5).text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    return 0.0


def test_label_studio_uses_the_backend_and_a_new_annotation_retrains_it(label_studio, backend, tiny300):
    backend_url, home = backend
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project_id, task_ids = make_project(ls, label_studio, tiny300)

    # Label Studio connects: /health and /setup; /setup queues the first training
    ml = ls.ml.create(project=project_id, url=backend_url, title="active label cleaning")
    assert ml.state == "CO", ml.error_message
    v1 = wait_for("the first model version", lambda: (v := serving_version(backend_url, project_id)) != UNTRAINED and v)

    # Label Studio asks /predict for the tasks without a prediction of v1 (the push imports predictions for
    # the window and its spares, which in a project this small is every task) and stores the scores
    wait_for("the push of v1", lambda: ls.projects.get(id=project_id).model_version == v1, timeout=60)
    ls.actions.create(id="retrieve_tasks_predictions", project=project_id, selected_items={"all": True, "excluded": []})
    stored = [p for p in ls.predictions.list(project=project_id) if p.model_version == v1]
    by_task = {p.task: p for p in stored}
    assert sorted(by_task) == task_ids  # every task has a v1 prediction: pushed (the window) or predicted
    answered = requests.post(
        f"{backend_url}/predict",
        json={"tasks": [{"id": t} for t in task_ids], "project": f"{project_id}.0", "label_config": CONFIG},
        timeout=30,
    ).json()["results"]
    audited = {t for t in task_ids if "alc_audit" in ls.tasks.get(id=t).data}
    assert len(audited) == 1, "the first push opens one audit draw (ALC_AUDIT_SHARE's default, front-loaded)"
    for task_id, result in zip(task_ids, answered):
        if task_id in audited:  # a random audit draw is served first, whatever its rank
            assert by_task[task_id].score == 0.0
        else:
            assert by_task[task_id].score == pytest.approx(result["score"])
    ranked = [(by_task[t].score, r["explanation"]["priority"]) for t, r in zip(task_ids, answered) if t not in audited]
    scores, priorities = zip(*ranked)
    assert int(np.argmin(scores)) == int(np.argmax(priorities))  # lowest score = re-annotate first

    # an annotation through the API reaches /webhook; a retrain runs and publishes a new version
    webhooks_before = metric(backend_url, 'alc_webhooks_total{action="ANNOTATION_CREATED",outcome="queued"}')
    ls.annotations.create(id=task_ids[0], result=[choice(CLASSES[int(tiny300["labels"][0])])])
    assert metric(backend_url, 'alc_webhooks_total{action="ANNOTATION_CREATED",outcome="queued"}') == webhooks_before + 1
    v2 = wait_for("a new model version", lambda: (v := serving_version(backend_url, project_id)) not in (v1, UNTRAINED) and v)

    # ... and Label Studio shows it: the project's model_version (switched by the push that follows the
    # publication) and the ML backend's (from /setup; listing the backends refreshes their state)
    wait_for("the project to switch to the new version", lambda: ls.projects.get(id=project_id).model_version == v2, timeout=60)
    backends = {m.id: m for m in ls.ml.list(project=project_id)}
    assert backends[ml.id].model_version == v2
    status = requests.get(f"{backend_url}/metrics", timeout=5).text
    assert 'alc_jobs_total{kind="retrain",outcome="ok"}' in status
    assert not list((Path(home) / "models").glob("project-*/versions/.staging-*"))


def test_hostile_image_urls_never_carry_the_token_and_do_not_block_the_project(label_studio, backend, tiny300):
    """Tasks whose image URLs try to trick the loader (backslash, credentials, climbing path, bad IPv6,
    port 99999, a loopback host) are skipped with a reason; the capture server on 127.0.0.1 receives
    nothing; every other task is ranked by a real retrain in a real Label Studio."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict] = []

    class Capture(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    capture = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    cap = f"127.0.0.1:{capture.server_address[1]}"
    ls_host = label_studio.url.removeprefix("http://")
    backend_url, home = backend
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    try:
        project_id, task_ids = make_project(ls, label_studio, tiny300)
        hostile = [
            f"http://{cap}\\@{ls_host}/data/upload/1/x.png",
            f"http://{ls_host}@{cap}/data/upload/1/x.png",
            f"{label_studio.url}/data/upload/../../api/projects",
            "http://[::1/x.png",
            "http://127.0.0.1:99999/x.png",
            f"http://{cap}/data/upload/1/x.png",
        ]
        tasks = [{"data": {"image": url}, "annotations": [{"result": [choice(CLASSES[i % 10])]}]} for i, url in enumerate(hostile)]
        response = requests.post(f"{label_studio.url}/api/projects/{project_id}/import",
                                 headers={"Authorization": f"Token {label_studio.token}", "Content-Type": "application/json"},
                                 data=json.dumps(tasks), timeout=60)
        assert response.status_code == 201, response.text
        ml = ls.ml.create(project=project_id, url=backend_url, title="active label cleaning")
        assert ml.state == "CO", ml.error_message
        version = wait_for("the first model version", lambda: (v := serving_version(backend_url, project_id)) != UNTRAINED and v)
        meta = json.loads((Path(home) / "models" / f"project-{project_id}" / "versions" / version / "meta.json").read_text())
        assert len(meta["skipped"]) == len(hostile), meta["skipped"]
        assert meta["tasks"] == N_TASKS  # every genuine task is ranked
        assert seen == []
    finally:
        capture.shutdown()
        capture.server_close()
