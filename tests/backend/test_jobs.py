"""The retrain pipeline and the per-annotation step, through the real client against the HTTP-level fake.

Real selectors on real images, versioned artifacts switched atomically, the working state in a real
Redis, and every Label Studio request counted.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
from rq import Queue, SimpleWorker

from backend import jobs, task_window
from backend import queue as q
from backend.events import NO_CHANGE, handle_event
from backend.model_store import VERSIONS_KEPT, ModelStateError, Ranking
from backend.webhooks import parse_webhook
from backend.working_state import WorkingState, compare, ensure_state, rebuild_from_label_studio, reconcile_records
from connectors.counts import read_project, read_task
from connectors.state import ProjectState, read_state, with_state


@pytest.fixture
def parts(settings, fake_ls, conn):
    ctx = jobs.configure(settings)
    return settings, ctx.store, ctx.loader, fake_ls


def read(conn, settings, project_id: int) -> jobs.Snapshot:
    """A fresh full read into the working state, as a retrain trains on it."""
    ctx = jobs.configure(settings)
    state = WorkingState(conn, project_id)
    rebuild_from_label_studio(state, jobs.client(ctx), settings.initial_label_source)
    return jobs.training_snapshot(state)


def run_jobs(conn, settings, queues=q.QUEUES) -> None:
    jobs.configure(settings)
    SimpleWorker([Queue(n, connection=conn) for n in queues], connection=conn).work(
        burst=True, dequeue_strategy=q.DEQUEUE_STRATEGY)


def retrain_now(conn, settings, project_id: int = 1) -> dict:
    q.request_retrain(conn, project_id, q.Cadence.from_settings(settings), force=True)
    run_jobs(conn, settings, [q.TRAIN_QUEUE])
    return q.retrain_records(conn, project_id)[0]


def requests_of(fake, since: int) -> list[tuple[str, str]]:
    return fake.ls.calls[since:]


def test_fit_then_update_and_publish(parts, conn):
    settings, store, loader, fake = parts
    snapshot = read(conn, settings, 1)
    selector, ranking, meta = jobs.train_and_score(settings, 1, snapshot, store, loader)
    assert meta["mode"] == "fit" and meta["tasks"] == 60 and meta["rule"] == "alc"
    assert ranking.counts.shape == (60, 10) and np.all(np.isfinite(ranking.priority))
    # lowest score = highest priority
    assert np.array_equal(np.argsort(ranking.scores, kind="stable"), np.argsort(-ranking.priority, kind="stable"))
    v1 = store.publish(1, selector, ranking, meta)
    assert store.current_version(1) == v1 and os.path.islink(store.project_dir(1) / "current")

    serving = store.load(1).selector()
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    served = serving.predict_proba(images)

    for task in fake.projects[1].task_ids[:20]:  # enough new labels to move the model
        fake.projects[1].add_annotation(task, 3)
    updated, ranking2, meta2 = jobs.train_and_score(settings, 1, read(conn, settings, 1), store, loader)
    assert meta2["mode"] == "update" and ranking2.counts[0].sum() == 2
    # the update worked on its own copy: until the new version is published, v1 serves what it served
    assert updated is not serving and not np.allclose(updated.predict_proba(images), served)
    loaded = store.load(1)
    assert loaded.version == v1 and loaded.selector() is serving
    np.testing.assert_array_equal(serving.predict_proba(images), served)


def test_the_default_selector_ranks_images_at_128_px_and_reloads_from_the_store(parts, conn):
    """No ALC_SELECTOR: the small ensemble (Lite0 + Lite2 at 128 px, mirror images) is fitted, published, loaded
    back giving the same posteriors, then updated; the project's images are kept at the ensemble's input size."""
    from backend.settings import load_settings
    from scoring.selectors import DEFAULT_IMAGE_SELECTOR

    settings, store, loader, fake = parts
    values = {k: v for k, v in settings.model_dump().items() if k not in ("selector", "selector_options")}
    default = load_settings(**values, use_profile=False)
    assert (default.selector, default.selector_options) == (DEFAULT_IMAGE_SELECTOR, {}) == ("ensemble", {})
    selector, ranking, meta = jobs.train_and_score(default, 1, read(conn, default, 1), store, loader)
    assert meta["mode"] == "fit" and meta["selector"] == "ensemble" and meta["tasks"] == 60
    assert [m["options"]["image_size"] for m in selector.members] == [128, 128]
    assert (store.project_dir(1) / "images-128px.npz").is_file()
    assert np.all(np.isfinite(ranking.priority)) and np.all((ranking.p_label > 0) & (ranking.p_label < 1))
    store.publish(1, selector, ranking, meta)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    np.testing.assert_allclose(store.load(1).selector().predict_proba(images), selector.predict_proba(images), atol=1e-6)
    fake.projects[1].add_annotation(fake.projects[1].task_ids[0], 3)
    _, ranking2, meta2 = jobs.train_and_score(default, 1, read(conn, default, 1), store, loader)
    assert meta2["mode"] == "update" and ranking2.counts[0].sum() == 2


def test_a_version_stored_without_state_is_refitted_not_retried_forever(parts, conn):
    """A third-party selector without save/load is stored without state; the next retrain fits afresh."""
    settings, store, loader, fake = parts
    selector, ranking, meta = jobs.train_and_score(settings, 1, read(conn, settings, 1), store, loader)
    store.publish(1, selector, ranking, meta)
    store.load(1).meta["selector_state"] = None  # what the store records for a selector without save/load
    with pytest.raises(ModelStateError):
        store.load(1).selector()
    fake.projects[1].add_annotation(fake.projects[1].task_ids[0], 3)
    _, ranking2, meta2 = jobs.train_and_score(settings, 1, read(conn, settings, 1), store, loader)
    assert meta2["mode"] == "fit" and ranking2.counts[0].sum() == 2


def test_the_ranking_keeps_each_labels_probability_for_the_audit(parts, conn):
    settings, store, loader, fake = parts
    _, ranking, meta = jobs.train_and_score(settings, 1, read(conn, settings, 1), store, loader)
    assert ranking.p_label.shape == (60,) and ((0 <= ranking.p_label) & (ranking.p_label <= 1)).all()
    assert "label_noise" not in meta, "no confident-learning estimate any more: the audit's is the one"
    again = Ranking.from_json(json.loads(json.dumps(ranking.to_json())))
    assert np.allclose(again.p_label, ranking.p_label)
    old = {k: v for k, v in ranking.to_json().items() if k != "p_label"}  # a version stored before p_label
    assert Ranking.from_json(old).p_label is None


def test_a_retrain_after_new_labels_fetches_no_image(parts, conn, image_server):
    settings, store, loader, fake = parts
    _, handler = image_server
    handler.requests_seen.clear()
    jobs.train_and_score(settings, 1, read(conn, settings, 1), store, loader)
    assert len(handler.requests_seen) == 60  # each image once, on first sight
    fake.projects[1].add_annotation(fake.projects[1].task_ids[5], 2)
    jobs.train_and_score(settings, 1, read(conn, settings, 1), store, loader)
    assert len(handler.requests_seen) == 60, "new labels: no image fetched again"


def test_tasks_without_labels_or_images_are_skipped_and_reported(parts, conn):
    settings, store, loader, fake = parts
    snapshot = read(conn, settings, 1)
    snapshot.counts[0] = 0
    snapshot.image_refs[1] = None
    snapshot.image_refs[2] = "/data/upload/1/404.png"
    _, ranking, meta = jobs.train_and_score(settings, 1, snapshot, store, loader)
    ids = snapshot.task_ids
    assert meta["tasks"] == 57 and ids[0] not in ranking.task_ids
    assert meta["skipped"] == {str(ids[0]): "no label yet", str(ids[1]): "no image",
                               str(ids[2]): "image request returned HTTP 404"}


def test_failed_training_keeps_the_previous_version_serving(parts, conn):
    settings, store, loader, fake = parts
    selector, ranking, meta = jobs.train_and_score(settings, 1, read(conn, settings, 1), store, loader)
    v1 = store.publish(1, selector, ranking, meta)
    broken = read(conn, settings, 1)
    broken.image_refs = [None] * len(broken.image_refs)
    with pytest.raises(ValueError, match="need at least 2"):
        jobs.train_and_score(settings, 1, broken, store, loader)
    assert store.current_version(1) == v1


def test_old_versions_are_pruned(parts, conn):
    settings, store, loader, fake = parts
    selector, ranking, meta = jobs.train_and_score(settings, 1, read(conn, settings, 1), store, loader)
    versions = [store.publish(1, selector, ranking, meta) for _ in range(VERSIONS_KEPT + 2)]
    kept = sorted(p.name for p in (store.project_dir(1) / "versions").iterdir() if not p.name.startswith("."))
    assert len(kept) == VERSIONS_KEPT and versions[-1] in kept and store.current_version(1) == versions[-1]


# --- the push ------------------------------------------------------------------------------------


def test_first_push_switches_the_version_before_opening_and_a_rerank_sends_only_what_changed(parts, conn):
    settings, store, loader, fake = parts
    settings = settings.model_copy(update={"window": 10})
    before = len(fake.ls.calls)
    record = retrain_now(conn, settings)
    calls = requests_of(fake, before)
    project = fake.projects[1]
    assert len(project.open_ids()) == 10 and record["push"]["opened"] == 10
    switch = calls.index(("PATCH", "/api/projects/1"))
    patches = [i for i, c in enumerate(calls) if c[0] == "PATCH" and c[1].startswith("/api/tasks/")]
    assert len(patches) == 10 and switch < min(patches), "the ranking is live before any task is opened"
    assert calls.count(("POST", "/api/projects/1/import/predictions")) == 1
    opened = fake.ls.tasks[project.open_ids()[0]]
    assert opened["is_labeled"] is False and opened["data"]["alc_status"] == "open"
    assert opened["data"]["image"].startswith("/data/upload/")  # the task's own data kept

    # a re-rank (one more label elsewhere): one prediction import, one project PATCH, no task PATCH
    q.record_annotations(conn, 1, 1)
    before = len(fake.ls.calls)
    retrain_now(conn, settings)
    calls = requests_of(fake, before)
    task_patches = [c for c in calls if c[0] == "PATCH" and c[1].startswith("/api/tasks/")]
    assert task_patches == [] and calls.count(("PATCH", "/api/projects/1")) == 1
    assert calls.count(("POST", "/api/projects/1/import/predictions")) == 1
    assert not any(c[1].endswith("/export") or c[1] == "/api/tasks" for c in calls), "no whole-project read"
    assert len(project.open_ids()) == 10


def test_no_retrain_once_the_budget_cannot_pay_a_new_opening(parts, conn):
    settings, store, loader, fake = parts
    settings = settings.model_copy(update={"window": 5})
    baseline = max(a["id"] for t in fake.ls.tasks.values() for a in t["annotations"])
    fake.ls.projects[1]["expert_instruction"] = with_state("", ProjectState(budget=5, baseline_annotation_id=baseline))
    retrain_now(conn, settings)
    assert len(fake.projects[1].open_ids()) == 2  # B = 5 finishes two tasks (two opinions each), not five
    q.record_annotations(conn, 1, 1)
    record = retrain_now(conn, settings)  # one left: no task opens for less than two
    assert record["skipped"].startswith("budget spent or held") and len(fake.pushes) == 1


def test_a_budget_of_two_corrects_one_clear_error_end_to_end(parts, conn, classes):
    settings, store, loader, fake = parts
    settings = settings.model_copy(update={"window": 5})
    baseline = max(a["id"] for t in fake.ls.tasks.values() for a in t["annotations"])
    fake.ls.projects[1]["expert_instruction"] = with_state("", ProjectState(budget=2, baseline_annotation_id=baseline))
    retrain_now(conn, settings)
    project = fake.projects[1]
    [tid] = project.open_ids()  # two opinions held: one task, not two half-finished ones
    wrong = (initial_class(fake, 1, tid) + 1) % 10  # the truth, say: the initial label is a clear error
    outcome, _ = annotate_and_settle(conn, settings, fake, 1, tid, wrong)
    assert outcome["action"].startswith("no majority") and project.open_ids() == [tid], "the tie's slot was held"
    outcome, _ = annotate_and_settle(conn, settings, fake, 1, tid, wrong)
    assert outcome["action"] == "settled" and project.open_ids() == []
    data = fake.ls.tasks[tid]["data"]
    assert data["alc_final_label"] == classes[wrong] and data["alc_changed"] is True
    state = WorkingState(conn, 1)
    assert state.budget().as_dict() == {"total": 2, "spent": 2, "committed": 0, "held": 0, "remaining": 0,
                                        "exhausted": True}
    assert compare(state, read_project(jobs.client(jobs.configure(settings)), 1)) == []


def test_a_push_draws_its_audit_from_the_untouched_pool_and_label_studio_keeps_it(parts, conn):
    from scoring.audit import AuditDraw

    settings, store, loader, fake = parts
    settings = settings.model_copy(update={"window": 5, "audit_share": 0.05})
    retrain_now(conn, settings)
    project = fake.projects[1]
    opened = {t: fake.ls.tasks[t]["data"] for t in project.open_ids()}
    assert sorted(d["alc_seq"] for d in opened.values()) == [0, 1, 2, 3, 4], "every opening numbered once"
    audits = {t: AuditDraw.from_json(d["alc_audit"]) for t, d in opened.items() if "alc_audit" in d}
    assert len(audits) == 1, "the first opening is an audit draw (front-loaded)"
    [(tid, draw)] = audits.items()
    assert draw.task == tid and draw.seq == opened[tid]["alc_seq"] == 0 and draw.pool_size == 60
    assert 0 <= draw.wrong_prob <= 1 and 0 < draw.pool_wrong_prob < 60, "the ranking's 1 - p[label]"
    score = [p["score"] for p in fake.ls.tasks[tid]["predictions"]][-1]
    assert score == 0.0, "served first: its opinions settle the estimate's basis early"
    # a full read rebuilds what the working state holds (Label Studio stays the source of truth)
    state = WorkingState(conn, 1)
    assert state.task(tid).audit == draw.to_json() and state.task(tid).seq == 0
    fresh = read_project(jobs.client(jobs.configure(settings)), 1)
    assert compare(state, fresh) == [] and fresh.task(tid).audit == draw.to_json()
    rebuild_from_label_studio(state, jobs.client(jobs.configure(settings)), "annotations")
    assert state.next_seq() == 5, "the counter goes on after the recorded openings"


def test_a_free_place_goes_to_an_audit_draw_when_one_is_due(parts, conn):
    from scoring.audit import AuditDraw

    settings, store, loader, fake = parts
    settings = settings.model_copy(update={"window": 3, "audit_share": 0.0})
    retrain_now(conn, settings)  # the push draws nothing: three ranked picks
    project = fake.projects[1]
    done = project.open_ids()[0]
    settings = settings.model_copy(update={"audit_share": 0.5})  # now an audit is due (none made yet)
    outcome, calls = annotate_and_settle(conn, settings, fake, 1, done, initial_class(fake, 1, done))
    refilled = outcome["refilled"]
    data = fake.ls.tasks[refilled]["data"]
    draw = AuditDraw.from_json(data["alc_audit"])
    assert draw.task == refilled and draw.seq == data["alc_seq"] == 3, "numbered after the push's three"
    assert draw.pool_size == 60 - 3 and 0 < draw.pool_wrong_prob < draw.pool_size, "the untouched pool, the ranking's"
    version = fake.ls.projects[1]["model_version"]
    scores = [p["score"] for p in fake.ls.tasks[refilled]["predictions"] if p["model_version"] == version]
    imported = ("POST", "/api/projects/1/import/predictions") in calls
    assert scores == ([0.0] if imported else scores[:1]) and len(scores) == 1, "one prediction: served first if new"
    assert len(calls) == 3 + imported, calls
    assert compare(WorkingState(conn, 1), read_project(jobs.client(jobs.configure(settings)), 1)) == []


def test_no_audit_draw_when_the_share_is_zero(parts, conn):
    settings, store, loader, fake = parts
    settings = settings.model_copy(update={"window": 5, "audit_share": 0.0})
    retrain_now(conn, settings)
    assert not any("alc_audit" in fake.ls.tasks[t]["data"] for t in fake.projects[1].open_ids())


# --- one annotation --------------------------------------------------------------------------------


def annotate_and_settle(conn, settings, fake, project_id, task_id, class_index, by=None) -> tuple[dict, list]:
    fake.projects[project_id].add_annotation(task_id, class_index, by)
    before = len(fake.ls.calls)
    ctx = jobs.configure(settings)
    ls = jobs.client(ctx)
    outcome = task_window.settle(settings, ls, ensure_state(conn, ls, project_id), task_id)
    return outcome, requests_of(fake, before)


def initial_class(fake, project_id, task_id) -> int:
    return int(np.argmax(fake.projects[project_id].counts_of(task_id)))


@pytest.mark.parametrize("n_tasks", [60, 1000])
def test_one_annotation_costs_at_most_three_requests_whatever_the_project_size(parts, conn, tiny300, n_tasks,
                                                                               new_project):
    settings, store, loader, fake = parts
    settings = settings.model_copy(update={"window": 5, "selector": "random", "selector_options": {}})
    big = {"cifar10h_probs": np.tile(tiny300["cifar10h_probs"], (n_tasks // 300 + 1, 1))}
    project = new_project(fake.ls, big, n=n_tasks)
    fake.projects[project.project_id] = project
    retrain_now(conn, settings, project.project_id)
    window = project.open_ids()
    tie, agree = window[0], window[1]
    # a tie: the task is read, one more slot opened
    outcome, calls = annotate_and_settle(conn, settings, fake, project.project_id, tie,
                                         (initial_class(fake, project.project_id, tie) + 1) % 10)
    assert outcome["action"].startswith("no majority") and len(calls) <= 3, calls
    assert fake.ls.tasks[tie]["overlap"] == 3
    # agreement: settled, closed with its alc_* fields, and its place refilled from the spares
    outcome, calls = annotate_and_settle(conn, settings, fake, project.project_id, agree,
                                         initial_class(fake, project.project_id, agree))
    assert outcome["action"] == "settled" and len(calls) == 3, calls
    assert calls[0] == ("GET", f"/api/tasks/{agree}")
    # each through Label Studio's lean task view (connectors.client.LEAN_TASK_VIEW)
    assert all(query.get("review") == "1" for query in fake.ls.queries[-len(calls):]), fake.ls.queries[-len(calls):]
    data = fake.ls.tasks[agree]["data"]
    assert data["alc_status"] == "settled" and data["alc_changed"] is False and data["alc_final_label"]
    assert outcome["refilled"] in fake.ls.tasks and len(project.open_ids()) == 5, "the window stays full"


def test_two_workers_racing_for_the_last_slot_open_one(parts, conn):
    settings, store, loader, fake = parts
    project = fake.projects[1]
    ctx = jobs.configure(settings)
    ls = jobs.client(ctx)
    state = ensure_state(conn, ls, 1)
    ties = project.task_ids[:8]
    for tid in ties:  # eight ties on closed tasks, one slot of budget left
        project.add_annotation(tid, (initial_class(fake, 1, tid) + 1) % 10)
    baseline = read_state(ls, 1).baseline_annotation_id
    fake.ls.projects[1]["expert_instruction"] = with_state("", ProjectState(budget=9, baseline_annotation_id=baseline))
    rebuild_from_label_studio(state, ls, "annotations")  # spent 8, committed 0: one slot left
    barrier = threading.Barrier(len(ties))

    def worker(tid):
        barrier.wait()
        task_window.settle(settings, jobs.client(ctx), WorkingState(conn, 1), tid)

    threads = [threading.Thread(target=worker, args=(t,)) for t in ties]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(project.open_ids()) == 1
    assert state.budget().as_dict() == {"total": 9, "spent": 8, "committed": 1, "held": 1, "remaining": 0,
                                        "exhausted": False}
    assert compare(state, read_project(ls, 1)) == []


def test_a_forged_task_costs_one_request_and_no_retry(parts, conn):
    settings, store, loader, fake = parts
    q.record_annotations(conn, 1, 1)
    ctx = jobs.configure(settings)
    ensure_state(conn, jobs.client(ctx), 1)
    q.enqueue_annotation_job(conn, 1, 999_999, q.Cadence.from_settings(settings))
    before = len(fake.ls.calls)
    run_jobs(conn, settings, [q.FAST_QUEUE])
    assert requests_of(fake, before) == [("GET", "/api/tasks/999999")]


def test_the_backends_own_star_removal_is_not_work(parts, conn, settings):
    fake = parts[3]
    ctx = jobs.configure(settings)
    ensure_state(conn, jobs.client(ctx), 1)
    tid = fake.projects[1].task_ids[0]
    annotation = fake.ls.tasks[tid]["annotations"][0]
    app_state = type("S", (), {"redis": conn, "cadence": q.Cadence.from_settings(settings), "settings": settings})
    body = {"action": "ANNOTATION_UPDATED", "project": {"id": 1},
            "annotation": {**annotation, "ground_truth": False, "task": tid}}
    assert handle_event(app_state, parse_webhook(body)) == NO_CHANGE
    assert Queue(q.FAST_QUEUE, connection=conn).count == 0
    changed = {**body, "annotation": {**body["annotation"], "result": [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["ship" if
         annotation["result"][0]["value"]["choices"][0] != "ship" else "cat"]}}]}}
    assert handle_event(app_state, parse_webhook(changed)) != NO_CHANGE
    assert Queue(q.FAST_QUEUE, connection=conn).count == 1


# --- ground-truth stars (Label Studio's task lock ignores starred annotations) ----------------------


def star_every_initial_label(fake, project_id: int) -> set[int]:
    """As imported without ``"ground_truth": false`` (Label Studio's default); the starred annotation ids."""
    for tid in fake.projects[project_id].task_ids:
        for a in fake.ls.tasks[tid]["annotations"]:
            a["ground_truth"] = True
    return stars_in_label_studio(fake, project_id)


def stars_in_label_studio(fake, project_id: int) -> set[int]:
    return {a["id"] for tid in fake.projects[project_id].task_ids for a in fake.ls.tasks[tid]["annotations"]
            if a.get("ground_truth")}


def unstar_calls(calls: list[tuple[str, str]]) -> list[int]:
    return [int(c[1].rsplit("/", 1)[1]) for c in calls if c[0] == "PATCH" and c[1].startswith("/api/annotations/")]


def scheduled_slices(conn) -> list[float]:
    """Seconds from now until each background slice that rq's scheduler holds for later."""
    from rq.registry import ScheduledJobRegistry

    registry = ScheduledJobRegistry(queue=Queue(q.BACKGROUND_QUEUE, connection=conn))
    now = time.time()
    return [registry.get_scheduled_time(job_id).timestamp() - now for job_id in registry.get_job_ids()]


def start_scheduled_slices(conn) -> None:
    """rq's scheduler, at once: the background slices held for later go into their queue now."""
    from rq.job import Job
    from rq.registry import ScheduledJobRegistry

    queue = Queue(q.BACKGROUND_QUEUE, connection=conn)
    registry = ScheduledJobRegistry(queue=queue)
    for job_id in registry.get_job_ids():
        registry.remove(job_id)
        queue.enqueue_job(Job.fetch(job_id, connection=conn))


def test_a_push_takes_the_star_off_each_task_it_opens_first_and_leaves_the_rest_to_the_background(parts, conn):
    from connectors.plan import PATCH_THREADS

    settings, store, loader, fake = parts
    window = PATCH_THREADS + 1  # of 60 tasks, with SPARES = 50 spares: one left to the background
    settings = settings.model_copy(update={"window": window})
    starred = star_every_initial_label(fake, 1)
    before = len(fake.ls.calls)
    record = retrain_now(conn, settings)
    calls = requests_of(fake, before)
    opened = fake.projects[1].open_ids()
    star_of = {tid: fake.ls.tasks[tid]["annotations"][0]["id"] for tid in fake.projects[1].task_ids}
    opened_stars = {star_of[tid] for tid in opened}
    state = WorkingState(conn, 1)
    spares = state.spares()
    spare_stars = {star_of[tid] for tid in spares}
    unstarred = unstar_calls(calls)
    assert sorted(unstarred[:window]) == sorted(opened_stars) and len(opened) == window
    # each task's star comes off just before that task opens, so the best tasks open first, not after the
    # whole window's stars: at most one star per PATCH in flight before the first task is open
    for tid in opened:
        assert calls.index(("PATCH", f"/api/annotations/{star_of[tid]}")) < calls.index(("PATCH", f"/api/tasks/{tid}"))
    first_open = min(i for i, c in enumerate(calls) if c[0] == "PATCH" and c[1].startswith("/api/tasks/"))
    assert calls.index(("PATCH", f"/api/annotations/{unstarred[PATCH_THREADS]}")) > first_open
    # then the spares' (a refill opens one of them without a request more): after the window opened
    last_open = max(i for i, c in enumerate(calls) if c[0] == "PATCH" and c[1].startswith("/api/tasks/"))
    assert sorted(unstarred[window:]) == sorted(spare_stars) and len(spares) == task_window.SPARES
    assert min(i for i, c in enumerate(calls) if c[1] == f"/api/annotations/{unstarred[window]}") > last_open
    assert stars_in_label_studio(fake, 1) == starred - opened_stars - spare_stars
    # predictions, version switch, the window's stars off and its tasks opened, the spares' stars off
    assert record["push"]["requests"] == 1 + 1 + window + window + len(spare_stars)
    # the rest wait for the background job, in the order the ranking would open their tasks
    from backend.status import jobs_status

    assert jobs_status(conn, 1)["stars_left"] == state.n_starred() == len(starred) - window - len(spare_stars)
    ranking = store.load(1).ranking
    by_score = [int(t) for _, t in sorted(zip(ranking.scores, ranking.task_ids))]
    task_of = state.tasks_of_annotations(starred)
    assert [task_of[a] for a in state.next_starred(len(starred))] == [t for t in by_score if t not in
                                                                       set(opened) | set(spares)]
    [due] = scheduled_slices(conn)  # annotations may be coming in: in a pause (rq keeps whole seconds)
    assert q.UNSTAR_PAUSE_SECONDS - 2 < due <= q.UNSTAR_PAUSE_SECONDS

    # one slice, nothing else waiting: every star off, in that order, one request each
    order = state.next_starred(len(starred))
    before = len(fake.ls.calls)
    start_scheduled_slices(conn)
    run_jobs(conn, settings, [q.BACKGROUND_QUEUE])
    assert unstar_calls(requests_of(fake, before)) == order
    assert stars_in_label_studio(fake, 1) == set() and state.n_starred() == 0
    assert Queue(q.BACKGROUND_QUEUE, connection=conn).finished_job_registry.count == 1


def test_the_background_job_gives_way_to_a_waiting_job_and_resumes_later(parts, conn):
    settings, store, loader, fake = parts
    settings = settings.model_copy(update={"window": 5})
    star_every_initial_label(fake, 1)
    retrain_now(conn, settings)
    waiting = Queue(q.FAST_QUEUE, connection=conn)
    waiting.enqueue("backend.jobs.annotation_changed", 1, fake.projects[1].task_ids[0])  # not run here
    state = WorkingState(conn, 1)
    left = state.n_starred()
    start_scheduled_slices(conn)
    before = len(fake.ls.calls)
    run_jobs(conn, settings, [q.BACKGROUND_QUEUE])
    assert len(unstar_calls(requests_of(fake, before))) == jobs.UNSTAR_BATCH == left - state.n_starred()
    [due] = scheduled_slices(conn)
    assert q.UNSTAR_PAUSE_SECONDS - 2 < due <= q.UNSTAR_PAUSE_SECONDS and waiting.count == 1
    waiting.empty()  # the annotation's job ran: the next slice, once due, takes every star left off
    start_scheduled_slices(conn)
    run_jobs(conn, settings, [q.BACKGROUND_QUEUE])
    assert state.n_starred() == 0 and stars_in_label_studio(fake, 1) == set() and scheduled_slices(conn) == []


def test_a_starred_annotation_deleted_meanwhile_is_done_not_a_failure(parts, conn):
    settings, store, loader, fake = parts
    settings = settings.model_copy(update={"window": 5})
    star_every_initial_label(fake, 1)
    retrain_now(conn, settings)
    state = WorkingState(conn, 1)
    first = state.next_starred(1)[0]
    task = next(t for t in fake.ls.tasks.values() if any(a["id"] == first for a in t["annotations"]))
    task["annotations"] = [a for a in task["annotations"] if a["id"] != first]  # deleted in Label Studio
    start_scheduled_slices(conn)
    run_jobs(conn, settings, [q.BACKGROUND_QUEUE])
    assert state.n_starred() == 0 and stars_in_label_studio(fake, 1) == set()
    assert Queue(q.BACKGROUND_QUEUE, connection=conn).failed_job_registry.count == 0


def test_a_refilled_spare_and_a_reopened_tie_lose_their_star_before_they_open(parts, conn):
    settings, store, loader, fake = parts
    settings = settings.model_copy(update={"window": 5})
    star_every_initial_label(fake, 1)
    retrain_now(conn, settings)  # the background job is not due yet
    state = WorkingState(conn, 1)
    project = fake.projects[1]
    agree = project.open_ids()[0]
    spare = state.spares()[0]
    assert not stars_in_label_studio(fake, 1) & {a["id"] for a in fake.ls.tasks[spare]["annotations"]}, \
        "the push took the spares' stars off"
    spare_star = fake.ls.tasks[spare]["annotations"][0]["id"]
    fake.ls.tasks[spare]["annotations"][0]["ground_truth"] = True  # starred again since, as a reconcile finds it
    ls = jobs.client(jobs.configure(settings))
    state.sync_starred(read_task(ls, state.config(), spare, state.users()))
    outcome, calls = annotate_and_settle(conn, settings, fake, 1, agree, initial_class(fake, 1, agree))
    assert outcome["action"] == "settled" and outcome["refilled"] == spare
    star_off = calls.index(("PATCH", f"/api/annotations/{spare_star}"))
    assert star_off < calls.index(("PATCH", f"/api/tasks/{spare}")) and len(calls) == 4
    assert not fake.ls.tasks[spare]["annotations"][0]["ground_truth"] and not state.starred([spare_star])
    # a tie on a closed task whose star is still on (a task closed before connect, annotated since)
    closed = next(t for t in project.task_ids if t not in project.open_ids() and state.starred(
        [a["id"] for a in fake.ls.tasks[t]["annotations"]]))
    project.add_annotation(closed, (initial_class(fake, 1, closed) + 1) % 10)  # a re-annotation: a tie
    task_window.settle(settings, ls, state, closed)
    assert fake.ls.tasks[closed]["overlap"] == 3 and not stars_in_label_studio(fake, 1) & {
        a["id"] for a in fake.ls.tasks[closed]["annotations"]}


def test_reconcile_leaves_new_stars_to_the_background_job(parts, conn):
    settings, store, loader, fake = parts
    retrain_now(conn, settings)
    starred = star_every_initial_label(fake, 1)  # e.g. tasks imported with their annotations since connect
    state = WorkingState(conn, 1)
    assert state.n_starred() == 0
    assert q.enqueue_reconcile(conn, 1, "test")
    before = len(fake.ls.calls)
    run_jobs(conn, settings, [q.TRAIN_QUEUE])
    assert unstar_calls(requests_of(fake, before)) == []
    [record] = reconcile_records(conn, 1)
    assert record["starred_left"] == state.n_starred() == len(starred) and len(scheduled_slices(conn)) == 1
    start_scheduled_slices(conn)
    run_jobs(conn, settings, [q.BACKGROUND_QUEUE])
    assert stars_in_label_studio(fake, 1) == set()


# --- reconcile -------------------------------------------------------------------------------------


def test_reconcile_records_a_lost_webhook_and_restores_the_state(parts, conn):
    settings, store, loader, fake = parts
    settings = settings.model_copy(update={"window": 4})
    retrain_now(conn, settings)
    project = fake.projects[1]
    opened = project.open_ids()
    state = WorkingState(conn, 1)
    ls = jobs.client(jobs.configure(settings))
    assert compare(state, read_project(ls, 1)) == []
    agree = opened[0]
    project.add_annotation(agree, initial_class(fake, 1, agree))  # its webhook is lost
    differences = compare(state, read_project(ls, 1))
    assert differences and all(line.startswith((f"task {agree}:", "ledger:")) for line in differences)
    assert q.enqueue_reconcile(conn, 1, "test") and not q.enqueue_reconcile(conn, 1, "test")
    run_jobs(conn, settings, [q.TRAIN_QUEUE])
    [record] = reconcile_records(conn, 1)
    assert record["trigger"] == "test" and record["n_differences"] == len(differences)
    assert compare(state, read_project(ls, 1)) == []
    # the lost annotation settled the task (Label Studio took it out of the stream itself): reconcile
    # wrote its status and refilled its place
    assert fake.ls.tasks[agree]["data"]["alc_status"] == "settled" and record["corrected"] == [agree]
    assert agree not in project.open_ids() and len(record["opened"]) == 1 and len(project.open_ids()) == 4


def test_a_reconcile_that_dies_mid_run_does_not_block_the_next(parts, conn, monkeypatch):
    """The worker (or Redis) lost in the middle of a reconcile runs no `finally`: the next periodic request
    must still queue one. The mark is free as soon as the job has started."""
    settings, store, loader, fake = parts
    retrain_now(conn, settings)
    seen = []
    real = jobs.rebuild_from_label_studio

    def rebuild_while_asking_again(*args, **kwargs):
        if not seen:  # once: what reconcile_all would do meanwhile
            seen.append(q.enqueue_reconcile(conn, 1, "periodic"))
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "rebuild_from_label_studio", rebuild_while_asking_again)
    assert q.enqueue_reconcile(conn, 1, "test")
    run_jobs(conn, settings, [q.TRAIN_QUEUE])
    assert seen[0] is True, "a request during a running reconcile queued nothing"
    assert [r["trigger"] for r in reconcile_records(conn, 1)][:2] == ["periodic", "test"]


def test_the_periodic_reconcile_is_scheduled_once_with_rqs_scheduler(settings, conn):
    from rq.registry import ScheduledJobRegistry

    assert q.schedule_reconcile(conn, 60) is not None
    assert q.schedule_reconcile(conn, 60) is None  # one scheduled already: a SET NX, nothing else
    scheduled = ScheduledJobRegistry(queue=Queue(q.TRAIN_QUEUE, connection=conn)).get_job_ids()
    assert len(scheduled) == 1 and scheduled[0].startswith("reconcile-all-")


def test_a_deleted_annotation_rereads_its_task(parts, conn, settings):
    fake = parts[3]
    tid = fake.projects[1].task_ids[3]
    aid = fake.projects[1].add_annotation(tid, (initial_class(fake, 1, tid) + 1) % 10)
    ctx = jobs.configure(settings)
    ls = jobs.client(ctx)
    state = ensure_state(conn, ls, 1)
    assert state.budget().spent == 1
    fake.ls.tasks[tid]["annotations"] = [a for a in fake.ls.tasks[tid]["annotations"] if a["id"] != aid]
    app_state = type("S", (), {"redis": conn, "cadence": q.Cadence.from_settings(settings), "settings": settings})
    handle_event(app_state, parse_webhook({"action": "ANNOTATIONS_DELETED", "project": {"id": 1},
                                           "annotations": [{"id": aid}]}))
    assert Queue(q.FAST_QUEUE, connection=conn).count == 1  # that task, not a whole-project read
    run_jobs(conn, settings, [q.FAST_QUEUE])
    assert state.budget().spent == 0 and compare(state, read_project(ls, 1)) == []


@pytest.mark.parametrize("field", ["expert_instruction", "description"])  # where it is kept; where it was kept before
def test_a_new_budget_in_the_project_state_is_taken_at_once(parts, conn, settings, field):
    fake = parts[3]
    ctx = jobs.configure(settings)
    state = ensure_state(conn, jobs.client(ctx), 1)
    assert state.budget().total is None
    new = ProjectState(budget=42, window=7, baseline_annotation_id=5)
    text = with_state("notes", new) if field == "expert_instruction" else f"notes\n\nalc-state: {new.to_json()}"
    app_state = type("S", (), {"redis": conn, "cadence": q.Cadence.from_settings(settings), "settings": settings})
    body = {"action": "PROJECT_UPDATED", "project": {"id": 1, field: text}}
    assert handle_event(app_state, parse_webhook(body)) == "unchanged"
    assert state.budget().total == 42 and task_window.window_of(settings, state) == 7


def test_the_periodic_job_reconciles_every_connected_project_and_schedules_its_successor(parts, conn, settings):
    from rq.registry import ScheduledJobRegistry

    ctx = jobs.configure(settings)
    ls = jobs.client(ctx)
    for project_id in (1, 2):
        ensure_state(conn, ls, project_id)
    Queue(q.TRAIN_QUEUE, connection=conn).enqueue(q.RECONCILE_ALL_FUNC)
    run_jobs(conn, settings, [q.TRAIN_QUEUE])
    for project_id in (1, 2):
        [record] = reconcile_records(conn, project_id)
        assert record["trigger"] == "periodic" and record["differences"] == []
    scheduled = ScheduledJobRegistry(queue=Queue(q.TRAIN_QUEUE, connection=conn)).get_job_ids()
    assert [j for j in scheduled if j.startswith("reconcile-all-")] == [conn.get(q.RECONCILE_NEXT_KEY).decode()]


def test_a_retrain_during_which_the_budget_runs_out_publishes_nothing(parts, conn, monkeypatch):
    settings, store, loader, fake = parts
    real_train = jobs.train_and_score

    def train_while_the_last_slot_goes(s, project_id, *args):
        out = real_train(s, project_id, *args)
        WorkingState(conn, project_id).set_project_state(ProjectState(budget=0, baseline_annotation_id=1))
        return out

    monkeypatch.setattr(jobs, "train_and_score", train_while_the_last_slot_goes)
    record = retrain_now(conn, settings)
    assert record["skipped"].startswith("the budget was spent or held during the training")
    assert store.current_version(1) is None and fake.pushes == []
