"""Simulated annotators against a real Label Studio: own accounts, the label stream, the truth they draw from."""

from __future__ import annotations

from collections import Counter

import pytest
import requests
from label_studio_sdk import LabelStudio

from backend.demo.annotators import AnnotatorError, AnnotatorPool, LabelStream
from backend.demo.dataset import label_config, make_digits
from backend.demo.project import create_project
from backend.demo.report import read_labels

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(label_studio) -> LabelStudio:
    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token)


def test_project_holds_the_images_and_initial_labels(label_studio, client):
    dataset = make_digits(n_images=25, seed=5, size=48)
    project = create_project(client, label_studio.url, label_studio.token, dataset, "demo import check")
    labels = read_labels(client, project.id, dataset.class_names, dataset.n_tasks)
    assert labels.initial.tolist() == dataset.initial_labels.tolist()
    assert labels.spent == 0
    task = client.tasks.get(project.task_ids[3])
    png = requests.get(label_studio.url + task.data["image"], headers={"Authorization": f"Token {label_studio.token}"},
                       timeout=10)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


def test_annotators_work_the_stream_with_their_own_accounts(label_studio, client):
    """Three annotators, overlap 3 on unlabelled tasks: every task ends with exactly one label from each."""
    dataset = make_digits(n_images=12, seed=6, size=32)
    project = client.projects.create(title="demo stream check", maximum_annotations=3,
                                     label_config=label_config(dataset.class_names))
    client.projects.import_tasks(project.id, request=[{"data": {"image": "/static/x.png", "demo_id": k}}
                                                      for k in range(dataset.n_tasks)])
    pool = AnnotatorPool(label_studio.url, project.id, dataset.true_distribution, dataset.class_names,
                         n=3, pace=0.0, seed=2, email_domain="stream.test").sign_in()
    pool.start(idle_timeout=2)
    pool.join(120)
    assert not pool.running and not pool.errors
    submitted = pool.submitted
    assert len(submitted) == 3 * dataset.n_tasks
    per_task = Counter(s.task_id for s in submitted)
    assert set(per_task.values()) == {3}
    assert len({(s.annotator, s.task_id) for s in submitted}) == len(submitted), "nobody labels a task twice"
    assert {s.annotator for s in submitted} == {f"annotator{k}@stream.test" for k in (1, 2, 3)}
    # labels follow each image's true distribution (clear images: 96% the true digit)
    agree = sum(dataset.class_names.index(s.label) == dataset.true_labels[s.demo_id] for s in submitted)
    assert agree / len(submitted) > 0.8
    # what Label Studio stored is what the annotators sent
    stored = {a["id"]: a for t in client.tasks.list(project=project.id, fields="all") for a in t.annotations}
    for s in submitted:
        assert stored[s.annotation_id]["result"][0]["value"]["choices"] == [s.label]

    # an existing account signs in again; a wrong password is refused clearly
    LabelStream(label_studio.url, "annotator1@stream.test", pool.annotators[0].stream.password).sign_in()
    with pytest.raises(AnnotatorError, match="could not sign up or sign in"):
        LabelStream(label_studio.url, "annotator1@stream.test", "another-password-1").sign_in()

