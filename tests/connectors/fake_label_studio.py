"""A small in-memory Label Studio behind an httpx transport: the endpoints the connectors use, nothing else.

It keeps tasks, annotations and predictions the way Label Studio 1.23.2 returns them (checked against
the live server in tests/integration), and can be told to fail: ``fail`` maps (method, path prefix) to
a number of calls that answer 500 before the real answer, or ``fail_after`` lets N calls through then
fails every later one (a push dying half-way).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          '<Choice value="cat"/><Choice value="dog"/><Choice value="bird"/></Choices></View>')


def region(label: str) -> dict:
    return {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}


@dataclass
class FakeLabelStudio:
    token: str = "t" * 40
    projects: dict[int, dict] = field(default_factory=dict)
    tasks: dict[int, dict] = field(default_factory=dict)
    users: dict[int, str] = field(default_factory=lambda: {1: "admin@example.com"})
    calls: list[tuple[str, str]] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)  # each call's query parameters, as ``calls``
    views: list[dict] = field(default_factory=list)
    fail_after: dict[tuple[str, str], int] = field(default_factory=dict)
    version_log: list[tuple[int, str]] = field(default_factory=list)  # (project, model_version) per switch
    next_id: int = 1

    # --- building a project ---------------------------------------------------------------------

    def add_project(self, title: str = "p", label_config: str = CONFIG, description: str = "") -> int:
        pid = len(self.projects) + 1
        self.projects[pid] = {"id": pid, "title": title, "label_config": label_config, "description": description,
                              "model_version": "", "sampling": "Sequential sampling", "show_overlap_first": False}
        return pid

    def add_task(self, project: int, data: dict, labels: list[str] = (), by: int = 1) -> int:
        """A task imported with its labels: imported annotations carry the ground-truth star, as in Label Studio."""
        tid = self._id()
        self.tasks[tid] = {"id": tid, "project": project, "data": data, "overlap": 1, "is_labeled": bool(labels),
                           "annotations": [], "predictions": []}
        for label in labels:
            self.annotate(tid, label, by, ground_truth=True)
        return tid

    def annotate(self, task_id: int, label: str | None, by: int = 1, cancelled: bool = False,
                 lead_time: float | None = 2.0, ground_truth: bool = False) -> int:
        aid = self._id()
        stamp = f"2026-01-01T{aid // 3600 % 24:02d}:{aid // 60 % 60:02d}:{aid % 60:02d}Z"
        self.tasks[task_id]["annotations"].append({
            "id": aid, "completed_by": by, "was_cancelled": cancelled, "lead_time": lead_time,
            "result": [region(label)] if label else [], "created_at": stamp, "updated_at": stamp,
            "ground_truth": ground_truth,
        })
        task = self.tasks[task_id]
        task["is_labeled"] = self.n_annotators(task_id) >= task["overlap"]  # Label Studio does this on save
        return aid

    def n_annotators(self, task_id: int) -> int:
        """Label Studio's is_labeled test counts distinct users."""
        return len({a["completed_by"] for a in self.tasks[task_id]["annotations"] if not a["was_cancelled"]})

    def starred(self, task_id: int) -> list[int]:
        return [a["id"] for a in self.tasks[task_id]["annotations"] if a.get("ground_truth")]

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def n_annotations(self, task_id: int) -> int:
        return sum(not a["was_cancelled"] for a in self.tasks[task_id]["annotations"])

    # --- the HTTP side --------------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path.rstrip("/"), request.method
        self.calls.append((method, path))
        self.queries.append(dict(request.url.params))
        for (m, prefix), allowed in list(self.fail_after.items()):
            if m == method and path.startswith(prefix):
                if allowed <= 0:
                    return httpx.Response(500, json={"detail": "injected failure"})
                self.fail_after[(m, prefix)] = allowed - 1
        if request.headers.get("authorization") != f"Token {self.token}":
            return httpx.Response(401, json={"detail": "Invalid token."})
        body = json.loads(request.content) if request.content else None
        params = request.url.params
        if path == "/api/current-user/whoami":
            return httpx.Response(200, json={"id": 1, "email": self.users[1]})
        if path == "/api/users":
            return httpx.Response(200, json=[{"id": i, "email": e, "username": e} for i, e in self.users.items()])
        if m := re.fullmatch(r"/api/projects/(\d+)", path):
            project = self.projects.get(int(m.group(1)))
            if project is None:
                return httpx.Response(404, json={"detail": "Not found."})
            if method == "PATCH":
                if "model_version" in body and body["model_version"] != project["model_version"]:
                    self.version_log.append((project["id"], body["model_version"]))
                project.update(body)
            return httpx.Response(200, json=project)
        if m := re.fullmatch(r"/api/projects/(\d+)/import/predictions", path):
            for p in body:
                task = self.tasks[int(p["task"])]
                task["predictions"].append({**p, "id": self._id(), "created_at": f"2026-01-02T00:00:{self.next_id % 60:02d}Z"})
            return httpx.Response(201, json={"created": len(body)})
        if m := re.fullmatch(r"/api/projects/(\d+)/export", path):  # the JSON export leaves out overlap
            rows = self._project_tasks(int(m.group(1)))
            hidden = ("overlap", "is_labeled")
            return httpx.Response(200, json=[
                {**{k: v for k, v in self._task_json(t).items() if k not in hidden},
                 "predictions": [p["id"] for p in t["predictions"]]}  # ids only, as Label Studio exports them
                for t in rows])
        if path == "/api/dm/views":
            if method == "POST":
                self.views.append({"id": len(self.views) + 1, **body})
                return httpx.Response(201, json=self.views[-1])
            return httpx.Response(200, json=[v for v in self.views if v["project"] == int(params["project"])])
        if path == "/api/tasks" and method == "GET":
            page, size = int(params.get("page", 1)), int(params.get("page_size", 100))
            rows = self._project_tasks(int(params["project"]))
            chunk = rows[(page - 1) * size: page * size]
            if page > 1 and not chunk:
                return httpx.Response(404, json={"detail": "Invalid page."})
            keep = params["include"].split(",") if "include" in params else None
            items = [{k: v for k, v in self._task_json(t).items() if keep is None or k in keep} for t in chunk]
            return httpx.Response(200, json={"tasks": items, "total": len(rows)})
        if m := re.fullmatch(r"/api/annotations/(\d+)", path):
            found = [a for t in self.tasks.values() for a in t["annotations"] if a["id"] == int(m.group(1))]
            if not found:
                return httpx.Response(404, json={"detail": "Not found."})
            if method == "PATCH":
                found[0].update({k: v for k, v in body.items() if k in ("ground_truth", "result")})
            return httpx.Response(200, json=found[0])
        if m := re.fullmatch(r"/api/tasks/(\d+)", path):
            task = self.tasks.get(int(m.group(1)))
            if task is None:
                return httpx.Response(404, json={"detail": "Not found."})
            if method == "PATCH":
                task.update({k: v for k, v in body.items() if k in ("overlap", "is_labeled", "data")})
            return httpx.Response(200, json=self._task_json(task))
        return httpx.Response(404, json={"detail": f"fake has no {method} {path}"})

    def _project_tasks(self, project: int) -> list[dict]:
        return sorted((t for t in self.tasks.values() if t["project"] == project), key=lambda t: t["id"])

    def _task_json(self, task: dict) -> dict:
        return {**task, "total_annotations": self.n_annotations(task["id"])}
