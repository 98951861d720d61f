"""Fault injection: Redis restarted and Label Studio unreachable while annotations arrive.

Real Label Studio (the session's), a real embedded Redis this test restarts, the real backend and a
supervised worker as processes. Label Studio is made unreachable with two switchable TCP proxies: one
in front of Label Studio (every request of the backend and the worker goes through it) and one in
front of the backend (Label Studio's webhooks and ML-backend calls go through it). Cutting both is
what an outage of Label Studio looks like from the backend: its calls fail and no webhook arrives.

The sequence, annotations made through Label Studio's own label stream by three annotators:
1. Redis stopped, two annotations (their webhooks are refused with a 503: lost), Redis started again
   on the same data (append-only file);
2. Label Studio cut off for ``OUTAGE_S`` seconds (a minute, as the issue asks; it spans several periodic
   reconcile periods and the jobs' retries), two more annotations meanwhile;
3. the backend reaches Label Studio again, but webhooks stay cut until a periodic reconcile has run,
   so nothing but the reconcile can have repaired the working state.

Afterwards: the working state equals a fresh full read (backend.working_state.compare is empty), its
ledger equals Label Studio's own (connectors.ledger.reconcile), no slot is over budget, and the records
of the reconciles run since the outage ended (a periodic one last) list every task that was still
stale. An annotation made while Redis was down may have been recovered earlier, by a reconcile that
read Label Studio across the restart; one made while Label Studio was cut off cannot have been.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from label_studio_sdk import LabelStudio

from backend import queue as q
from backend.demo.dataset import choice_result, make_digits
from backend.demo.project import create_project
from backend.demo.services import Services, free_port

pytestmark = pytest.mark.integration

OUTAGE_S = 60.0
RECONCILE_S = 8.0
BUDGET = 10
WINDOW = 6


class SwitchableProxy:
    """A TCP proxy on 127.0.0.1:``port`` to 127.0.0.1:``target``. ``down()`` closes the listening socket
    (new connections are refused) and every open connection; ``up()`` listens on the same port again."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> "SwitchableProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:  # wakes the thread blocked in accept() (a bare close() leaves it accepting one more)
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            if self._listener is not listener:  # accepted while going down
                client.close()
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            source.close()


def annotate_next(ls_url: str, token: str, project_id: int, pick_label) -> int:
    """What an annotator does: take Label Studio's next task of the stream and label it; the task id."""
    headers = {"Authorization": f"Token {token}"}
    got = requests.get(f"{ls_url}/api/projects/{project_id}/next", headers=headers, timeout=60)
    assert got.status_code == 200, f"Label Studio served no task: {got.status_code} {got.text[:200]}"
    task = got.json()
    requests.post(f"{ls_url}/api/tasks/{task['id']}/annotations/", headers=headers, timeout=60,
                  json={"result": choice_result(pick_label(task)), "lead_time": 3.0}).raise_for_status()
    return int(task["id"])


def wait_until(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def idle(conn) -> bool:
    from rq import Queue
    from rq.registry import StartedJobRegistry

    return all(queue.count == 0 and StartedJobRegistry(queue=queue).count == 0
               for queue in Queue.all(connection=conn))


def test_redis_restart_and_label_studio_outage_are_repaired_by_the_periodic_reconcile(label_studio, tmp_path):
    from backend.working_state import WorkingState, compare, reconcile_records
    from connectors.client import connect
    from connectors.counts import read_project
    from connectors.ledger import reconcile

    started = time.monotonic()
    dataset = make_digits(n_images=30, seed=5, noise_rate=0.3, size=16)
    admin = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project = create_project(admin, label_studio.url, label_studio.token, dataset, "fault injection")
    pid = project.id
    true_label = {tid: dataset.class_names[int(c)] for tid, c in zip(project.task_ids, dataset.true_labels)}
    ls_port = int(label_studio.url.rsplit(":", 1)[1])
    to_label_studio = SwitchableProxy(ls_port).up()

    with Services(tmp_path / "services") as services:
        redis_url = services.start_redis()
        conn = q.connect(redis_url)
        backend_port = free_port()
        to_backend = SwitchableProxy(backend_port).up()
        env = {
            "LABEL_STUDIO_URL": to_label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
            "REDIS_URL": redis_url, "ALC_DATA_HOME": str(tmp_path / "home"), "ALC_PROFILE": "none",
            "ALC_SELECTOR": "linear", "ALC_SELECTOR_OPTIONS": '{"folds": 2, "image_size": 8}',
            "ALC_BUDGET": str(BUDGET), "ALC_WINDOW": str(WINDOW), "ALC_RETRAIN_AFTER_ANNOTATIONS": "3",
            "ALC_RETRAIN_AFTER_SECONDS": "5", "ALC_RECONCILE_SECONDS": str(RECONCILE_S),
            "ALC_LABEL_STUDIO_TIMEOUT": "10",
        }
        backend = services.start_backend(backend_port, env)
        services.spawn("worker", [sys.executable, "-m", "backend.cli", "worker", "--supervise", "--name", "fault-worker"], env)
        connected = subprocess.run(  # `alc connect`: the webhook and the ML backend behind the proxy
            [sys.executable, "-m", "backend.cli", "connect", "--project", str(pid), "--backend-url", to_backend.url],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
        assert connected.returncode == 0, connected.stdout + connected.stderr
        requests.post(f"{backend}/train", json={"project": pid}, timeout=10).raise_for_status()
        wait_until(lambda: admin.projects.get(pid).model_version, 180, "the first ranking in Label Studio")
        wait_until(lambda: idle(conn) and WorkingState(conn, pid).exists(), 120, "the first push to finish")
        annotators = [label_studio.create_user(f"fault-{k}") for k in range(3)]
        print(f"\nset up in {time.monotonic() - started:.0f} s", flush=True)

        # 1. Redis restarted while annotations arrive: their webhooks get a 503 and are lost
        services.redis.stop()
        during_redis = [annotate_next(label_studio.url, annotators[k].token, pid, lambda t: true_label[t["id"]])
                        for k in (0, 1)]
        services.redis.start()

        # 2. Label Studio unreachable (both ways) while annotations arrive
        to_label_studio.down()
        to_backend.down()
        cut = time.monotonic()
        during_outage = [annotate_next(label_studio.url, annotators[2].token, pid,
                                       lambda t: dataset.class_names[(dataset.class_names.index(true_label[t["id"]]) + 1)
                                                                     % len(dataset.class_names)])]
        during_outage.append(annotate_next(label_studio.url, annotators[0].token, pid, lambda t: true_label[t["id"]]))
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut)))

        # what the backend missed (read while it still cannot reach Label Studio, so nothing can change it)
        state = WorkingState(conn, pid)
        client = connect(label_studio.url, label_studio.token, retries=2)
        stale = compare(state, read_project(client, pid))
        assert stale, "the working state already equals Label Studio before any reconcile: nothing was lost?"

        # 3. the backend reaches Label Studio again; webhooks stay cut until a periodic reconcile has run
        back = time.time()
        to_label_studio.up()

        def repaired() -> dict | None:
            records = [r for r in reconcile_records(conn, pid) if r["time"] > back and r["trigger"] == "periodic"]
            return records[-1] if records else None  # the first periodic reconcile after the outage

        record = wait_until(repaired, 6 * RECONCILE_S + 60, "a periodic reconcile after the outage")
        # every reconcile since the outage ended, oldest first: with webhooks still cut, only the periodic one
        # or an rq retry of a reconcile queued before the outage can have run
        repairs = [r for r in reversed(reconcile_records(conn, pid)) if back < r["time"] <= record["time"]]
        earlier = [r for r in reconcile_records(conn, pid) if r["time"] <= back]
        to_backend.up()
        wait_until(lambda: idle(conn), 120, "the worker to finish what the reconcile queued")
        services.check_alive()

        fresh = read_project(client, pid)
        truth = reconcile(client, pid, budget=BUDGET)
        after = compare(state, fresh)
        mine = state.ledger(BUDGET)
        print(f"lost annotations on tasks {during_redis + during_outage}; before the reconcile: {stale}; "
              f"reconciles since the outage: {repairs}; before it: {[(r['trigger'], r['differences']) for r in earlier]}; "
              f"whole test {time.monotonic() - started:.0f} s", flush=True)

    def tasks_in(lines: list[str]) -> set[int]:
        return {int(line.split(":")[0].split()[1]) for line in lines if line.startswith("task ")}

    lost = tasks_in(stale)
    repaired_tasks = tasks_in([line for r in repairs for line in r["differences"]])
    # an annotation made while Label Studio was cut off (both ways) reached the backend by no webhook
    assert set(during_outage) <= lost
    # one made while Redis was down may have been recovered before the outage (the backend resyncs once
    # Redis is back: the reconcile "webhooks refused while Redis was down", listed in `earlier`); whatever
    # was still missing when the outage ended, the reconciles since (the periodic one last) repaired
    assert lost <= repaired_tasks, f"tasks {sorted(lost - repaired_tasks)} missed"
    # the working state equals Label Studio's own counts and ledger
    assert after == []
    assert mine.budget.as_dict() == truth.budget.as_dict()
    assert mine.snapshot.task_ids == truth.snapshot.task_ids
    assert (mine.snapshot.counts == truth.snapshot.counts).all()
    assert list(mine.settled) == list(truth.settled)
    assert truth.budget.spent == 4  # the four annotations made during the faults, paid and counted
    # no slot over budget, no task with more than one open slot
    assert truth.budget.spent + truth.budget.committed <= BUDGET
    assert all(t.open_slots <= 1 for t in fresh.tasks)
