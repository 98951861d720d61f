"""One demo run against a running Label Studio and backend: project, connection, queue, annotators, report.

`alc demo` wraps this with the services it starts (backend.demo.services); the end-to-end test uses it
with the shared Label Studio of the test session. The steps:

1. make the dataset (digits, or CIFAR-10H with ``data_dir``) and create the Label Studio project;
2. connect it to the backend (``alc connect``: sampling, webhook, ML backend, budget) and wait for the
   first trained model to open the cleaning queue (the project's model_version switches to it);
3. optionally let N simulated annotators work through the label stream;
4. wait until the budget is spent (or nothing is left to serve, or Ctrl-C), let the worker close the
   queue, then read every annotation back from Label Studio and compare with the truth.

What it measured goes into the report: the longest stall (every simulated annotator found the stream
empty while budget remained), the model versions published after the budget was spent (there should
be none), and the open slots left (none: the queue is closed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import requests
from label_studio_sdk import LabelStudio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from backend.demo.annotators import AnnotatorPool
from backend.demo.config import DemoConfig, Order  # noqa: F401 (re-exported)
from backend.demo.dataset import DemoDataset, make_cifar10h, make_digits
from backend.demo.project import DemoProject, create_project
from backend.demo.report import ProjectLabels, read_labels, summarise, trace_point, trace_summary
from backend.status import write_truth
from scoring.progress import ProgressLines, heartbeat

CONNECT_TIMEOUT = 900.0  # seconds: connect reads the whole project once (minutes for a big one on a busy machine)
TRACE_SECONDS = 10.0  # the estimate is polled this often (GET /api/status; the backend caches it as long)


def make_dataset(config: DemoConfig) -> DemoDataset:
    if config.data_dir is not None:
        return make_cifar10h(config.data_dir, config.n_images, config.seed, config.temperature)
    return make_digits(config.n_images, config.seed, config.noise_rate)


class DemoRun:
    """A demo project in a running Label Studio, connected to a running backend."""

    def __init__(self, config: DemoConfig, ls_url: str, ls_token: str, backend_url: str, backend_env: dict[str, str],
                 console: Console | None = None) -> None:
        self.redis_url = backend_env.get("REDIS_URL")
        self._redis = None
        user, password = backend_env.get("BASIC_AUTH_USER"), backend_env.get("BASIC_AUTH_PASS")
        self.backend_auth = (user, password) if user and password else None
        self.config = config
        self.ls_url = ls_url.rstrip("/")
        self.ls_token = ls_token
        self.backend_url = backend_url.rstrip("/")
        self.backend_env = backend_env  # the environment `alc connect` runs with (same settings as the backend)
        self.console = console or Console(stderr=True)
        self.client = LabelStudio(base_url=self.ls_url, api_key=ls_token)
        self.dataset: DemoDataset | None = None
        self.project: DemoProject | None = None
        self.pool: AnnotatorPool | None = None
        self.model_versions: list[str] = []
        self.version_seen_at: list[float] = []  # monotonic time each model version was first seen
        self.budget_spent_at: float | None = None
        self.finished_because: str | None = None
        self.connect_seconds: float | None = None
        self.trace: list[dict] = []  # the dashboard's estimate at each poll, next to the truth the demo knows
        self.traced_at: float | None = None
        self.started = time.monotonic()

    # --- setup -----------------------------------------------------------------------------------

    def setup(self) -> DemoProject:
        cfg = self.config
        with heartbeat("making the demo dataset"):
            self.dataset = make_dataset(cfg)
        title = cfg.title or f"Label cleaning demo ({self.dataset.name}, {cfg.order} order)"
        with heartbeat(f"creating the project: {self.dataset.n_tasks} images with noisy labels"):
            self.project = create_project(self.client, self.ls_url, self.ls_token, self.dataset, title,
                                          description=self.description())
        self.console.print(f"project {self.project.id}: {self.dataset.n_tasks} tasks, initial label noise "
                           f"{self.dataset.initial_noise_rate:.1%} ({self.dataset.name})")
        if "ALC_DATA_HOME" in self.backend_env:  # the dashboard counts corrections (not only changes) where it knows the truth
            names = self.dataset.class_names
            write_truth(Path(self.backend_env["ALC_DATA_HOME"]), self.project.id,
                        {t: names[int(c)] for t, c in zip(self.project.task_ids, self.dataset.true_labels)})
        self.connect()
        self.wait_for_first_model()
        return self.project

    def description(self) -> str:
        """What the project card in Label Studio says about this run, for a person."""
        cfg, data = self.config, self.dataset
        order = f"{cfg.selector} priority" if cfg.order == "priority" else "random (the baseline)"
        return (f"Active label cleaning demo: {data.n_tasks} {data.name} images, {data.initial_noise_rate:.0%} of their "
                f"initial labels wrong. Budget {cfg.budget} re-annotations, {order} order, {cfg.window} tasks open at "
                f"a time; `alc status --project <id>` shows what is spent and left.")

    def connect(self) -> None:
        """`alc connect --project ID`: the connectors set the project up for this backend."""
        argv = [sys.executable, "-m", "backend.cli", "connect", "--project", str(self.project.id),
                "--backend-url", self.backend_url, "--window", str(self.config.window),
                "--budget", str(self.config.budget)]
        started = time.monotonic()
        with heartbeat("connecting the project (alc connect: sampling, webhook, ML backend, baseline; "
                                 "a whole-project read)"):
            try:
                result = subprocess.run(argv, env={**os.environ, **self.backend_env}, capture_output=True, text=True,
                                        timeout=CONNECT_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"`alc connect` did not finish within {CONNECT_TIMEOUT:.0f} s") from None
        self.connect_seconds = round(time.monotonic() - started, 1)
        if result.returncode != 0:
            raise RuntimeError(f"`alc connect` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        self.console.print(result.stdout.strip(), soft_wrap=True, markup=False, highlight=False)

    def wait_for_first_model(self) -> str:
        """Ask the backend to train now and wait until Label Studio serves the queue under a model version."""
        requests.post(f"{self.backend_url}/train", json={"project": self.project.id}, auth=self.backend_auth,
                      timeout=10).raise_for_status()
        started = time.monotonic()
        deadline = started + self.config.first_model_timeout
        with heartbeat("fitting the selector and opening the cleaning queue") as update:
            while time.monotonic() < deadline:
                version = self.poll_model_version()
                if version:
                    return version
                waiting, failed = self.retrain_state()
                if failed:
                    raise RuntimeError(f"the first retrain failed for good: {failed}; see the worker's log")
                update(waiting)
                time.sleep(1.0)
        raise TimeoutError(f"no model version in Label Studio after {self.config.first_model_timeout:.0f} s; "
                           "see the worker's log")

    def retrain_state(self) -> tuple[str, str | None]:
        """What the retrain queue is doing (queued, running, or waiting to retry after an error: which), and
        the error of a retrain that failed for good (rq's failed-job registry), for the progress line."""
        if self.redis_url is None:
            return "waiting on the worker", None
        from rq.job import Job
        from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

        from backend import queue as q

        if self._redis is None:
            self._redis = q.connect(self.redis_url)
        train = q.queues(self._redis)[q.TRAIN_QUEUE]

        def ours(registry) -> list:  # the Redis may hold jobs of earlier demo projects
            jobs = Job.fetch_many(registry.get_job_ids(), connection=self._redis)
            return [j for j in jobs if j is not None and "retrain" in (j.func_name or "") and j.args
                    and j.args[0] == self.project.id]

        failed = ours(FailedJobRegistry(queue=train))
        if failed:
            return "failed", _last_error(failed[-1]) or "no error recorded"
        retrying = ours(ScheduledJobRegistry(queue=train))
        if retrying:
            error = _last_error(retrying[-1])
            return f"a retrain failed and waits to retry: {error}" if error else "a retrain is scheduled", None
        if StartedJobRegistry(queue=train).count:
            return "the worker is training", None
        return f"{train.count} retrain(s) queued", None

    def poll_model_version(self) -> str | None:
        version = self.client.projects.get(self.project.id).model_version or None
        if version and (not self.model_versions or self.model_versions[-1] != version):
            self.model_versions.append(version)
            self.version_seen_at.append(time.monotonic())
        return version

    # --- annotating --------------------------------------------------------------------------------

    def start_annotators(self) -> AnnotatorPool:
        cfg = self.config
        self.pool = AnnotatorPool(self.ls_url, self.project.id, self.dataset.true_distribution,
                                  self.dataset.class_names, n=cfg.annotators, pace=cfg.pace, seed=cfg.seed)
        self.pool.sign_in().start(idle_timeout=None)  # watch() decides when the queue has nothing left
        return self.pool

    def spent(self) -> int:
        """Re-annotations so far: the project's annotations beyond one initial label per task."""
        project = self.client.projects.get(self.project.id)
        return int(project.total_annotations_number or 0) - self.dataset.n_tasks

    def watch(self, check_alive=lambda: None, timeout: float | None = None) -> str:
        """Show the budget burning down until the cleaning is done; returns why it is done.

        Done when the budget is spent, or (simulated annotators only) when they found nothing to serve
        for ``idle_timeout`` seconds while the backend's queues were idle too (every task settled or
        capped). People annotating: it waits for the budget, however long that takes."""
        cfg = self.config
        deadline = None if timeout is None else time.monotonic() + timeout
        last_activity, seen = time.monotonic(), 0
        columns = [TextColumn("[bold]budget"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn()]
        lines = None if self.console.is_terminal else ProgressLines("cleaning: re-annotations of the budget", cfg.budget)
        with Progress(*columns, console=self.console, transient=False, disable=lines is not None) as progress:
            bar = progress.add_task("", total=cfg.budget)
            while True:
                check_alive()
                spent = self.spent()
                version = self.poll_model_version()
                progress.update(bar, completed=min(spent, cfg.budget), description=f"model {version}")
                if lines is not None:
                    lines.update(min(spent, cfg.budget), self.progress_note(version))
                if version and (self.traced_at is None or time.monotonic() - self.traced_at >= TRACE_SECONDS):
                    self.trace_estimate()
                if spent >= cfg.budget:
                    self.budget_spent_at = time.monotonic()
                    self.finished_because = f"budget spent ({spent} of {cfg.budget} re-annotations)"
                    break
                if self.pool is not None:
                    if self.pool.errors:
                        raise RuntimeError(f"a simulated annotator failed: {self.pool.errors[0]}")
                    if len(self.pool.submitted) > seen or self.busy():
                        last_activity, seen = time.monotonic(), len(self.pool.submitted)
                    elif time.monotonic() - last_activity > cfg.idle_timeout:
                        self.finished_because = (f"nothing left to serve ({spent} of {cfg.budget} spent; every "
                                                 f"task settled or capped, nothing served for {cfg.idle_timeout:.0f} s)")
                        break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"the demo did not finish within {timeout:.0f} s ({spent} of {cfg.budget} spent)")
                time.sleep(1.0)
        if lines is not None:
            lines.finish(self.progress_note(self.model_versions[-1] if self.model_versions else None))
        if self.pool is not None:
            self.pool.stop()  # in-flight submissions finish
        self.settle()
        return self.finished_because

    def progress_note(self, version: str | None) -> str:
        """The model in use and, with simulated annotators, the accuracy of the labels so far against the
        truth (the initial labels plus what they submitted; a strict majority wins, else the initial label)."""
        note = f"model {version or 'none yet'}"
        if self.pool is None or self.dataset is None:
            return note
        names, truth = self.dataset.class_names, self.dataset.true_labels
        counts = np.eye(len(names), dtype=np.int64)[self.dataset.initial_labels]
        for s in list(self.pool.submitted):
            counts[s.demo_id, names.index(s.label)] += 1
        labels = ProjectLabels(self.dataset.initial_labels, counts).labels()
        return (f"{note}; accuracy {np.mean(labels == truth):.1%} "
                f"(was {np.mean(self.dataset.initial_labels == truth):.1%}; the simulated annotators' labels)")

    def settle(self, timeout: float = 120.0) -> None:
        """Wait (with a visible status) until the worker has handled the last annotations (the queue closes)."""
        deadline = time.monotonic() + timeout
        with heartbeat("closing the queue: the worker handles the last annotations"):
            while self.busy() and time.monotonic() < deadline:
                time.sleep(0.5)
        self.poll_model_version()

    def versions_after_budget_spent(self) -> int:
        """Model versions Label Studio switched to after the budget was spent (a retrain nobody needs)."""
        if self.budget_spent_at is None:
            return 0
        return sum(1 for t in self.version_seen_at if t > self.budget_spent_at + 1.0)  # polled once a second

    def busy(self) -> bool:
        """Whether the backend's rq queues hold work for this project: queued, running, or scheduled jobs
        other than the periodic reconcile (always scheduled: it proves the state, it is not work left)."""
        if self.redis_url is None:
            return False
        from rq.job import Job
        from rq.registry import ScheduledJobRegistry, StartedJobRegistry

        from backend import queue as q

        if self._redis is None:
            self._redis = q.connect(self.redis_url)
        for queue in q.queues(self._redis).values():
            if queue.count or StartedJobRegistry(queue=queue).count:
                return True
            scheduled = Job.fetch_many(ScheduledJobRegistry(queue=queue).get_job_ids(), connection=self._redis)
            if any(job is not None and "reconcile" not in (job.func_name or "") for job in scheduled):
                return True
        return False

    def stop_annotators(self) -> None:
        if self.pool is not None:
            self.pool.stop()

    # --- report ------------------------------------------------------------------------------------

    def trace_estimate(self) -> dict | None:
        """One poll of the backend's status (what the dashboard shows): the estimate and its interval next to
        the true accuracy, appended to the trace; None when the backend did not answer."""
        self.traced_at = time.monotonic()
        try:
            answer = requests.get(f"{self.backend_url}/api/status", params={"project": self.project.id},
                                  auth=self.backend_auth, timeout=30)
            answer.raise_for_status()
            status = answer.json()
        except (requests.RequestException, ValueError) as exc:
            self.console.log(f"status poll failed: {exc}")
            return None
        self.trace.append(trace_point(status, round(self.traced_at - self.started, 1)))
        return status

    def report(self) -> dict:
        labels = read_labels(self.client, self.project.id, self.dataset.class_names, self.dataset.n_tasks)
        self.poll_model_version()
        if self.traced_at is not None:  # the last poll after the queue closed (the backend's cache expired)
            time.sleep(max(0.0, TRACE_SECONDS + 0.5 - (time.monotonic() - self.traced_at)))
        final = self.trace_estimate()
        return summarise(
            labels,
            self.dataset.true_labels,
            project=self.project.id,
            dataset=self.dataset.name,
            order=self.config.order,
            budget=self.config.budget,
            model_versions=list(self.model_versions),
            model_versions_after_budget_spent=self.versions_after_budget_spent(),
            finished_because=self.finished_because,
            longest_stall_seconds=round(self.pool.longest_stall, 1) if self.pool is not None else None,
            connect_seconds=self.connect_seconds,
            simulated_annotators=self.config.annotators,
            wall_seconds=round(time.monotonic() - self.started, 1),
            config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()},
            estimate=(final or {}).get("estimate"),
            estimate_trace=self.trace,
            estimate_trace_summary=trace_summary(self.trace),
        )


def _last_error(job) -> str | None:
    """The last line of a job's latest error, if it has one."""
    result = job.latest_result()
    text = (result.exc_string or "").strip() if result is not None else ""
    return text.splitlines()[-1][:200] if text else None
