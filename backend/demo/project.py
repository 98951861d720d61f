"""Put a demo dataset into Label Studio: a project, its images uploaded, tasks with their initial labels.

Images are uploaded to Label Studio itself (``/data/upload/...``), so the demo works with any Label
Studio, local or remote, without local-file serving; the backend fetches them with the API token.
Two requests: one multipart upload that stores the files without creating tasks
(``commit_to_project=false``, what the import dialog does), then one JSON import of the tasks that
point at those files and carry the initial label as an annotation.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import requests
from label_studio_sdk import LabelStudio
from PIL import Image

from backend.demo.dataset import DemoDataset, InitialLabelSource, image_name, label_config, label_studio_tasks

UPLOAD_BATCH = 100  # files per multipart request: Label Studio's DATA_UPLOAD_MAX_NUMBER_FILES default


@dataclass(frozen=True)
class DemoProject:
    id: int
    title: str
    task_ids: list[int]  # position k holds the task of demo_id k


def create_project(client: LabelStudio, base_url: str, api_key: str, dataset: DemoDataset, title: str,
                   initial_label_source: InitialLabelSource = "annotation", timeout: float = 60.0,
                   description: str | None = None) -> DemoProject:
    """Create the project, upload the images, import the tasks; returns the task id of every demo image.
    ``description`` is what the project card shows (default: what the dataset is)."""
    description = description or (f"Active label cleaning demo: {dataset.n_tasks} {dataset.name} images whose initial "
                                   f"labels are {dataset.initial_noise_rate:.0%} wrong.")
    project = client.projects.create(title=title, label_config=label_config(dataset.class_names), description=description)
    urls = upload_images(base_url, api_key, project.id, dataset, timeout)
    tasks = label_studio_tasks(dataset, urls.__getitem__, initial_label_source)
    client.projects.import_tasks(project.id, request=tasks, return_task_ids=True)
    task_ids = task_ids_by_demo_id(client, project.id, dataset.n_tasks)
    return DemoProject(project.id, title, task_ids)


def upload_images(base_url: str, api_key: str, project_id: int, dataset: DemoDataset, timeout: float = 60.0) -> dict[str, str]:
    """Upload every image as a file of the project (no task yet); returns image name -> /data/upload/... URL.

    The SDK has no multipart upload, so these calls go through requests. The stored names are asked for
    per batch: one query naming every file id is refused at about 10,000 files (414 Request-URI Too Long).
    """
    base = base_url.rstrip("/")
    headers = {"Authorization": f"Token {api_key}"}
    urls: dict[str, str] = {}
    for start in range(0, dataset.n_tasks, UPLOAD_BATCH):
        files = []
        for k in range(start, min(start + UPLOAD_BATCH, dataset.n_tasks)):
            buffer = io.BytesIO()
            Image.fromarray(dataset.images[k]).save(buffer, format="PNG")
            files.append((f"file{k}", (image_name(k), buffer.getvalue(), "image/png")))
        response = requests.post(f"{base}/api/projects/{project_id}/import", headers=headers,
                                 params={"commit_to_project": "false"}, files=files, timeout=timeout)
        response.raise_for_status()
        listed = requests.get(f"{base}/api/projects/{project_id}/file-uploads", headers=headers,
                              params={"ids": json.dumps(response.json()["file_upload_ids"])}, timeout=timeout)
        listed.raise_for_status()
        for upload in listed.json():
            stored = upload["file"]  # upload/<project>/<random prefix>-img_00042.png
            urls[stored.rsplit("/", 1)[-1].split("-", 1)[-1]] = f"/data/{stored}"
    missing = [image_name(k) for k in range(dataset.n_tasks) if image_name(k) not in urls]
    if missing:
        raise RuntimeError(f"Label Studio did not keep {len(missing)} uploaded image(s), e.g. {missing[0]}")
    return urls


def task_ids_by_demo_id(client: LabelStudio, project_id: int, n: int) -> list[int]:
    """Label Studio's task id of each demo image (tasks carry data.demo_id)."""
    ids: list[int | None] = [None] * n
    for task in client.tasks.list(project=project_id, fields="all"):
        ids[int(task.data["demo_id"])] = task.id
    if any(i is None for i in ids):
        raise RuntimeError(f"project {project_id} lacks some demo tasks")
    return ids  # type: ignore[return-value]
