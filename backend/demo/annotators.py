"""Simulated annotators that work through Label Studio's own label stream, as a person's browser does.

Each annotator has its own Label Studio account (signed up through the sign-up page, or signed in
when it exists), keeps a browser-like session (cookie + CSRF header), asks for its next task with
``GET /api/projects/{id}/next`` (Label Studio 1.23.2's ``ProjectNextTaskAPI``: the same call the
labelling UI makes, so sampling, overlap, task locks and the active learning order all apply), looks
at it for a while (the pace), and submits ``POST /api/tasks/{id}/annotations/`` with a label drawn
from the image's true label distribution. Nothing is written to Label Studio's database behind its back.

An annotator stops when told to, when its share of an optional cap is spent, or when the stream has
stayed empty for ``idle_timeout`` seconds (the queue may be re-ranking: a short empty spell is normal).
An empty stream is asked again after a growing pause (0.5 s doubling to ``MAX_BACKOFF``), and first
cheaply (the project view's ``queue_total - queue_done`` for this account): Label Studio logs a
traceback for every empty next-task call, and polling it twice a second filled its log.
The pool measures its *stalls*: spells when every annotator found the stream empty (``longest_stall``).

Label Studio 1.23.2's next-task call is not atomic: two calls in the same few milliseconds can both
take the last open slot of a task (its log then says "Num takes=3 > overlap=2 ... it's a bug").
People rarely click that close together; threads do, so a pool serialises the next-task call only
(the looking and the submitting still overlap).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import requests

from backend.demo.dataset import choice_result

log = logging.getLogger(__name__)
MAX_BACKOFF = 2.0  # seconds between next-task calls of an annotator whose stream is empty


class AnnotatorError(RuntimeError):
    """An annotator could not sign in or Label Studio refused its work for a reason retrying won't fix."""


@dataclass(frozen=True)
class Submitted:
    """One annotation a simulated annotator submitted."""

    annotator: str
    task_id: int
    demo_id: int
    label: str
    annotation_id: int
    at: float  # unix time
    lead_time: float


class LabelStream:
    """One account's browser-like session on Label Studio: sign in, next task, submit."""

    def __init__(self, base_url: str, email: str, password: str, timeout: float = 15.0, retries: int = 3,
                 invite_token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.email = email
        self.password = password
        self.timeout = timeout
        self.retries = retries
        self.invite_token = invite_token
        self.session = requests.Session()

    def sign_in(self) -> "LabelStream":
        """Sign up through the sign-up page, or sign in when the account already exists."""
        params = {"token": self.invite_token} if self.invite_token else None
        if self._form("/user/signup/", params) or self._form("/user/login/", None):
            return self
        raise AnnotatorError(
            f"could not sign up or sign in {self.email} at {self.base_url} (sign-up disabled without an "
            "invite link, or the account exists with another password)"
        )

    def next_task(self, project_id: int) -> dict | None:
        """The task Label Studio serves this annotator next, or None when its stream is empty."""
        response = self._request("GET", f"/api/projects/{project_id}/next")
        if response.status_code == 404:
            return None
        self._check(response, "ask for the next task")
        return response.json()

    def left_for_me(self, project_id: int) -> int | None:
        """Tasks Label Studio still has for this account (its project view's queue_total - queue_done), asked
        before a next-task call while the stream is empty: an empty next-task call logs a traceback there."""
        response = self._request("GET", f"/api/projects/{project_id}/")
        if not response.ok:
            return None
        body = response.json()
        total, done = body.get("queue_total"), body.get("queue_done")
        return int(total) - int(done) if isinstance(total, int) and isinstance(done, int) else None

    def submit(self, project_id: int, task_id: int, result: list[dict], lead_time: float, started_at: str) -> dict:
        """Submit an annotation the way the labelling UI does."""
        body = {"result": result, "lead_time": lead_time, "started_at": started_at, "project": str(project_id)}
        response = self._request("POST", f"/api/tasks/{task_id}/annotations/", params={"project": project_id}, json=body)
        self._check(response, f"submit an annotation for task {task_id}")
        return response.json()

    def _form(self, path: str, params: dict | None) -> bool:
        """Post the email/password form; Django redirects (302) on success and re-renders (200) on failure."""
        url = self.base_url + path
        self._request("GET", path, params=params)
        response = self._request(
            "POST", path, params=params, allow_redirects=False,
            data={"email": self.email, "password": self.password, "csrfmiddlewaretoken": self._csrf()},
            headers={"Referer": url},
        )
        return response.status_code == 302

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        """A request with the session's CSRF header; connection errors and 5xx are retried with backoff."""
        headers = {"X-CSRFToken": self._csrf(), "Referer": self.base_url + "/", **kwargs.pop("headers", {})}
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(method, self.base_url + path, headers=headers,
                                                timeout=self.timeout, **kwargs)
                if response.status_code < 500 or attempt == self.retries:
                    return response
            except requests.RequestException as exc:
                if attempt == self.retries:
                    raise AnnotatorError(f"Label Studio at {self.base_url} is unreachable: {exc}") from exc
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _csrf(self) -> str:
        return self.session.cookies.get("csrftoken", "")

    @staticmethod
    def _check(response: requests.Response, what: str) -> None:
        if not response.ok:
            raise AnnotatorError(f"{what}: Label Studio answered {response.status_code}: {response.text[:300]}")


@dataclass
class Budget:
    """An optional cap on the annotations all simulated annotators may submit together (thread-safe)."""

    limit: int | None = None
    used: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self) -> bool:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.used -= 1


class SimulatedAnnotator:
    """Works one label stream: next task, look at it for ``pace`` seconds (+-50%), label it from the truth."""

    def __init__(self, stream: LabelStream, project_id: int, true_distribution: np.ndarray, class_names: list[str],
                 pace: float = 1.0, seed: int = 0, budget: Budget | None = None,
                 next_lock: threading.Lock | None = None,
                 on_stream: Callable[["SimulatedAnnotator", bool], None] | None = None) -> None:
        self.stream = stream
        self.on_stream = on_stream or (lambda annotator, empty: None)
        self.next_lock = next_lock or threading.Lock()
        self.project_id = project_id
        self.true_distribution = np.asarray(true_distribution, dtype=float)
        self.class_names = list(class_names)
        self.pace = pace
        self.rng = np.random.default_rng(seed)
        self.budget = budget or Budget()
        self.submitted: list[Submitted] = []
        self.stream_empty = False  # the last ask found nothing: check the cheap count before asking again

    @property
    def name(self) -> str:
        return self.stream.email

    def step(self, stop: threading.Event) -> bool:
        """Annotate one task; False when the stream is empty, the cap is reached or we were stopped."""
        if not self.budget.take():
            return False
        with self.next_lock:
            left = self.stream.left_for_me(self.project_id) if self.stream_empty else None
            task = None if left == 0 else self.stream.next_task(self.project_id)
        self.stream_empty = task is None
        self.on_stream(self, task is None)
        if task is None or stop.is_set():
            self.budget.give_back()
            return False
        started = time.time()
        started_at = datetime.now(timezone.utc).isoformat()
        label = self.draw_label(task)
        stop.wait(self.pace * self.rng.uniform(0.5, 1.5))
        lead_time = round(time.time() - started, 3)
        created = self.stream.submit(self.project_id, task["id"], choice_result(label), lead_time, started_at)
        self.submitted.append(Submitted(self.name, task["id"], int(task["data"]["demo_id"]), label,
                                        int(created["id"]), time.time(), lead_time))
        return True

    def draw_label(self, task: dict) -> str:
        demo_id = task.get("data", {}).get("demo_id")
        if demo_id is None or not 0 <= int(demo_id) < len(self.true_distribution):
            raise AnnotatorError(f"task {task.get('id')} has no valid data.demo_id: not a demo task, no truth to draw from")
        return self.class_names[self.rng.choice(len(self.class_names), p=self.true_distribution[int(demo_id)])]

    def run(self, stop: threading.Event, idle_timeout: float | None = 20.0, poll: float = 0.5) -> None:
        """Work until stopped, capped, or the stream stayed empty for ``idle_timeout`` seconds (None: never).

        While the stream is empty the pause between asks doubles from ``poll`` up to MAX_BACKOFF."""
        idle_since: float | None = None
        pause = poll
        while not stop.is_set():
            if self.step(stop):
                idle_since, pause = None, poll
                continue
            if self.budget.limit is not None and self.budget.used >= self.budget.limit:
                return
            idle_since = idle_since or time.monotonic()
            if idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                log.info("%s: stream empty for %.0f s, stopping", self.name, idle_timeout)
                return
            stop.wait(pause)
            pause = min(2 * pause, max(poll, MAX_BACKOFF))


class AnnotatorPool:
    """N simulated annotators, each in its own thread with its own account and seed."""

    def __init__(self, base_url: str, project_id: int, true_distribution: np.ndarray, class_names: list[str],
                 n: int, pace: float = 1.0, seed: int = 0, max_annotations: int | None = None,
                 password: str = "simulated-annotator-pw", email_domain: str = "demo.local",
                 invite_token: str | None = None) -> None:
        if n < 1:
            raise ValueError(f"need at least one simulated annotator, got {n}")
        if pace < 0:
            raise ValueError(f"pace must be >= 0 seconds, got {pace}")
        self.budget = Budget(max_annotations)
        next_lock = threading.Lock()
        self.annotators = [
            SimulatedAnnotator(
                LabelStream(base_url, f"annotator{k + 1}@{email_domain}", password, invite_token=invite_token),
                project_id, true_distribution, class_names, pace, seed * 1000 + k, self.budget, next_lock,
                on_stream=self._note_stream,
            )
            for k in range(n)
        ]
        self._empty_since: dict[str, float] = {}  # annotator -> when its stream was first found empty
        self._stall_lock = threading.Lock()
        self.longest_stall = 0.0  # seconds: the longest spell when every annotator found the stream empty
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []

    def _note_stream(self, annotator: SimulatedAnnotator, empty: bool) -> None:
        """Track the stalls: a stall starts when the last annotator finds the stream empty and ends when anyone
        is served a task (an empty spell that never ends, e.g. after the budget is spent, is not a stall)."""
        now = time.monotonic()
        with self._stall_lock:
            if empty:
                self._empty_since.setdefault(annotator.name, now)
                return
            if len(self._empty_since) == len(self.annotators):
                self.longest_stall = max(self.longest_stall, now - max(self._empty_since.values()))
            self._empty_since.pop(annotator.name, None)

    def sign_in(self) -> "AnnotatorPool":
        for annotator in self.annotators:
            annotator.stream.sign_in()
        return self

    def start(self, idle_timeout: float | None = 20.0, on_error: Callable[[BaseException], None] | None = None) -> "AnnotatorPool":
        def work(annotator: SimulatedAnnotator) -> None:
            try:
                annotator.run(self.stop_event, idle_timeout)
            except BaseException as exc:  # reported to the caller, never lost in a thread
                self.errors.append(exc)
                if on_error:
                    on_error(exc)

        self._threads = [threading.Thread(target=work, args=(a,), name=a.name, daemon=True) for a in self.annotators]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def submitted(self) -> list[Submitted]:
        return sorted((s for a in self.annotators for s in a.submitted), key=lambda s: s.at)
