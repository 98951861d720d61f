"""The per-project working state in Redis: what the loop decides on without reading the whole project.

Label Studio stays the source of truth; this is a cache of it that the loop keeps current from each
webhook plus a read of that one task, rebuilt by a full read when it is missing and by ``reconcile``
(:func:`compare` is the proof that it equals Label Studio's). Keys, per project ``alc:ws:<id>:``:

- ``config``: the :class:`connectors.project.ProjectConfig` (label config parsed once, alc-state line,
  the model version Label Studio serves by); ``users``: annotator id -> email;
- ``tasks``: task id -> its :class:`connectors.counts.TaskRecord` as JSON (annotations, counts, overlap,
  initial label, data as Label Studio holds it);
- ``slots``: task id -> ``"<re-annotations>,<open slots>,<held>"`` and ``ledger``: ``spent`` / ``committed``
  / ``held``, their sums, kept exact by Lua scripts (registered once, redis-py's ``register_script``) so that
  budget is reserved atomically across any number of workers: open slots never pass B, and a new task opens
  only when what it reserves (:func:`connectors.plan.opening_cost`) fits beside what the tasks in cleaning
  hold (:func:`connectors.plan.held`); ``seq``: the touched_seq counter (tasks opened so far);
- ``wrong_prob``: the current ranking's 1 - p[label] per task (an audit draw made by a refill uses it);
- ``spares``: the current ranking's next candidates (task id -> score) that already carry a prediction
  of the current model version: a settled task's free place is refilled from them without a retrain;
- ``skipped``: tasks the last retrain could not rank (task id -> reason);
- ``touched``: task id -> time of its last update (a rebuild re-reads the tasks touched during its read);
- ``changes``: task id -> the ledger's ``generation`` at its last update; with the ledger's ``epoch`` (new at
  each rebuild) it lets a process that read the tasks before re-read only those changed since
  (:meth:`WorkingState.tasks`: a status page or a retrain costs O(changes), not O(N) parsing);
- ``annotations``: annotation id -> task id (ANNOTATIONS_DELETED names annotations only);
- ``starred``: the annotations that still carry Label Studio's ground-truth star (imported ones get it by
  default, and its task lock ignores them), scored by the order the latest push would open their tasks
  in; ``backend.jobs.unstar`` takes the stars off in that order in the background, and whatever opens a
  task takes its own off first;
- ``reconciles``: the records of the last reconciles (newest first).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

import redis

from backend.queue import PROJECTS_KEY
from connectors.counts import ProjectSnapshot, TaskRecord, opening_of, snapshot_of
from connectors.ledger import Budget, Ledger, ledger_of
from connectors.plan import held, held_total
from connectors.project import ProjectConfig

log = logging.getLogger(__name__)

RECONCILE_RECORDS_KEPT = 50
UNRANKED = 1e12  # the ``starred`` score of an annotation whose task no push has ranked yet: taken off last
RECORD_CACHE_PROJECTS = 4  # projects whose parsed task records a process keeps (100,000 tasks: ~150 MiB)


@dataclass
class _Records:
    """The task records a process last read for one project, as of ``generation`` within ``epoch``."""

    epoch: bytes
    generation: int
    tasks: dict[int, TaskRecord]


_records: OrderedDict[int, _Records] = OrderedDict()  # project id -> its last read, most recent last
_records_lock = threading.Lock()  # the web process reads from several threads

# a task's numbers "<spent>,<open>,<held>" (a state from before held: "<spent>,<open>", held = open)
_NUMBERS = """
local function numbers(raw)
  if not raw then return 0, 0, 0 end
  local a, b, c = string.match(raw, '^(-?%d+),(-?%d+),?(-?%d*)$')
  if c == '' then c = b end
  return tonumber(a), tonumber(b), tonumber(c)
end
"""

# KEYS: tasks, slots, ledger, touched, changes. ARGV: task id, record JSON (empty: delete), re-annotations,
# open slots, held, now. Every change bumps the ledger's ``generation`` and logs the task in ``changes`` under it.
_PUT_TASK = _NUMBERS + """
local old_spent, old_open, old_held = numbers(redis.call('HGET', KEYS[2], ARGV[1]))
local spent, open, held = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  spent, open, held = 0, 0, 0
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], spent .. ',' .. open .. ',' .. held)
end
redis.call('HINCRBY', KEYS[3], 'spent', spent - old_spent)
redis.call('HINCRBY', KEYS[3], 'committed', open - old_open)
redis.call('HINCRBY', KEYS[3], 'held', held - old_held)
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
redis.call('ZADD', KEYS[5], redis.call('HINCRBY', KEYS[3], 'generation', 1), ARGV[1])
return 1
"""

# KEYS: slots, ledger. ARGV: total (-1 = no limit), most open slots (-1 = no limit), then pairs of task id and
# cost in order of preference: what opening it reserves (0: a task in cleaning whose opinions are held already,
# e.g. a tie). A task is granted when it has no open slot, one more open slot stays within B (and the window),
# and B covers what is spent plus what every task holds with this one's hold raised to its cost. Returns the
# granted ids.
_RESERVE = _NUMBERS + """
local total = tonumber(ARGV[1])
local most = tonumber(ARGV[2])
local granted = {}
for i = 3, #ARGV - 1, 2 do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local spent_here, open_here, held_here = numbers(raw)
    local hold = math.max(tonumber(ARGV[i + 1]), held_here, 1)
    local spent = tonumber(redis.call('HGET', KEYS[2], 'spent') or '0')
    local committed = tonumber(redis.call('HGET', KEYS[2], 'committed') or '0')
    local held = tonumber(redis.call('HGET', KEYS[2], 'held') or committed)
    local slot_ok = total < 0 or spent + committed + 1 <= total
    local hold_ok = total < 0 or tonumber(ARGV[i + 1]) == 0 or spent + held - held_here + hold <= total
    if open_here == 0 and slot_ok and hold_ok and (most < 0 or committed + 1 <= most) then
      redis.call('HSET', KEYS[1], ARGV[i], spent_here .. ',1,' .. hold)
      redis.call('HINCRBY', KEYS[2], 'committed', 1)
      redis.call('HINCRBY', KEYS[2], 'held', hold - held_here)
      table.insert(granted, ARGV[i])
    end
  end
end
return granted
"""

# KEYS: a counter. ARGV: a value. The counter raised to the value (never lowered).
_RAISE_TO = """
local now = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > now then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

_scripts: dict[str, Any] = {}


def _script(conn: redis.Redis, name: str, source: str) -> Any:
    """The script, registered once per process (redis-py's Script: EVALSHA, loaded again if a Redis forgot
    it), called on ``conn``."""
    if name not in _scripts:
        _scripts[name] = conn.register_script(source)
    script = _scripts[name]
    return lambda keys, args: script(keys=keys, args=args, client=conn)


def default_cap() -> int:
    """The cap on annotations per task when none is handed in: the setting's default."""
    from backend.settings import Settings

    return int(Settings.model_fields["max_annotations_per_task"].default)


def key(project_id: int, what: str) -> str:
    return f"alc:ws:{int(project_id)}:{what}"


class WorkingState:
    """One project's working state (see the module doc). Cheap to make: it holds only the connection."""

    def __init__(self, conn: redis.Redis, project_id: int, max_annotations: int | None = None) -> None:
        self.conn = conn
        self.project_id = int(project_id)
        # the cap on annotations per task bounds what a task holds (the jobs pass the setting)
        self.max_annotations = int(max_annotations) if max_annotations is not None else default_cap()

    def _k(self, what: str) -> str:
        return key(self.project_id, what)

    # --- reading ---------------------------------------------------------------------------------

    def exists(self) -> bool:
        return bool(self.conn.exists(self._k("config")))

    def config(self) -> ProjectConfig:
        raw = self.conn.get(self._k("config"))
        if raw is None:
            raise LookupError(f"project {self.project_id} has no working state yet")
        return ProjectConfig.from_json(raw)

    def model_version(self) -> str | None:
        return self.config().model_version if self.exists() else None

    def users(self) -> dict[int, str]:
        raw = self.conn.get(self._k("users"))
        return {int(k): v for k, v in json.loads(raw).items()} if raw else {}

    def task(self, task_id: int) -> TaskRecord | None:
        raw = self.conn.hget(self._k("tasks"), int(task_id))
        return TaskRecord.from_json(raw) if raw is not None else None

    def tasks(self) -> dict[int, TaskRecord]:
        """Every task record. This process keeps its last read (a few projects) and re-reads only the tasks
        changed since: the generation is read before the records, so a change racing the read is read again
        next time, never missed; a rebuild starts a new epoch and so a full read."""
        epoch, generation = self.conn.hmget(self._k("ledger"), "epoch", "generation")
        if epoch is None and self.exists():  # a state from before the change log: give it an epoch, read it all
            self.conn.hsetnx(self._k("ledger"), "epoch", uuid.uuid4().hex)
            epoch, generation = self.conn.hmget(self._k("ledger"), "epoch", "generation")
        generation = int(generation or 0)
        with _records_lock:
            last = _records.get(self.project_id)
        if epoch is None or last is None or last.epoch != epoch:  # (within an epoch generations only grow)
            tasks = {int(k): TaskRecord.from_json(v) for k, v in self.conn.hgetall(self._k("tasks")).items()}
        else:
            tasks = dict(last.tasks)
            changed = [int(t) for t in self.conn.zrangebyscore(self._k("changes"), f"({last.generation}", "+inf")]
            for task_id, raw in zip(changed, self.conn.hmget(self._k("tasks"), changed) if changed else []):
                if raw is None:
                    tasks.pop(task_id, None)
                else:
                    tasks[task_id] = TaskRecord.from_json(raw)
        with _records_lock:
            _records[self.project_id] = _Records(epoch, generation, tasks)
            _records.move_to_end(self.project_id)
            while len(_records) > RECORD_CACHE_PROJECTS:
                _records.popitem(last=False)
        return dict(tasks)

    def snapshot(self) -> ProjectSnapshot:
        """The project as the working state knows it: the same type a full read gives."""
        snapshot = snapshot_of(self.config(), list(self.tasks().values()))
        snapshot.users = self.users()
        return snapshot

    def budget(self, default_total: int | None = None) -> Budget:
        """O(1): the ledger's two numbers and the project's B (its own, else ``default_total``)."""
        spent, committed, held = self.conn.hmget(self._k("ledger"), "spent", "committed", "held")
        config = self.config()
        total = config.state.budget if config.state.budget is not None else default_total
        return Budget(total, int(spent or 0), int(committed or 0), int(held if held is not None else committed or 0))

    def ledger(self, default_total: int | None = None) -> Ledger:
        """The same Ledger a full read gives (connectors.ledger.reconcile), from Redis alone."""
        snapshot = self.snapshot()
        snapshot.problems = []
        return ledger_of(snapshot, default_total, self.max_annotations)

    def open_tasks(self) -> list[int]:
        return sorted(int(tid) for tid, numbers in self.conn.hgetall(self._k("slots")).items()
                      if int(numbers.split(b",")[1]) > 0)

    def skipped(self) -> dict[int, str]:
        return {int(k): v.decode() for k, v in self.conn.hgetall(self._k("skipped")).items()}

    def spares(self) -> list[int]:
        """The current ranking's next candidates, best first."""
        return [int(t) for t in self.conn.zrange(self._k("spares"), 0, -1)]

    def wrong_prob(self) -> dict[int, float]:
        """The latest ranking's 1 - p[label] per task it scored (what an audit draw between retrains uses)."""
        return {int(k): float(v) for k, v in self.conn.hgetall(self._k("wrong_prob")).items()}

    def set_wrong_prob(self, values: dict[int, float]) -> None:
        self._replace_hash("wrong_prob", {int(t): float(v) for t, v in values.items()})

    def spare_cost(self, task_id: int) -> int | None:
        """What opening this spare reserves, as the push that named it computed (None: not known)."""
        raw = self.conn.hget(self._k("spare_costs"), int(task_id))
        return int(raw) if raw is not None else None

    # --- writing ---------------------------------------------------------------------------------

    def put_task(self, task: TaskRecord) -> None:
        keys = [self._k("tasks"), self._k("slots"), self._k("ledger"), self._k("touched"), self._k("changes")]
        _script(self.conn, "put", _PUT_TASK)(keys=keys, args=[task.id, task.to_json(), task.reannotations,
                                                              task.open_slots, held(task, self.max_annotations),
                                                              time.time()])
        if task.annotations:
            self.conn.hset(self._k("annotations"), mapping={a.id: task.id for a in task.annotations})

    def tasks_of_annotations(self, annotation_ids: Iterable[int]) -> dict[int, int | None]:
        """annotation id -> its task id (None: not known here); ANNOTATIONS_DELETED names no task."""
        ids = [int(a) for a in annotation_ids]
        found = self.conn.hmget(self._k("annotations"), ids) if ids else []
        return {a: (int(t) if t is not None else None) for a, t in zip(ids, found)}

    def delete_task(self, task_id: int) -> None:
        keys = [self._k("tasks"), self._k("slots"), self._k("ledger"), self._k("touched"), self._k("changes")]
        _script(self.conn, "put", _PUT_TASK)(keys=keys, args=[int(task_id), "", 0, 0, 0, time.time()])
        self.drop_spare(task_id)

    def apply_patch(self, task_id: int, body: dict) -> TaskRecord | None:
        """What a task PATCH of ours changed (overlap, data), as Label Studio now holds it."""
        task = self.task(task_id)
        if task is None:
            return None
        data = body.get("data", task.data)
        seq, audit = opening_of(data)
        task = replace(task, overlap=int(body.get("overlap", task.overlap)), data=data,
                       seq=seq if seq is not None else task.seq, audit=audit if audit is not None else task.audit)
        self.put_task(task)
        return task

    def reserve(self, task_ids: Iterable[int], total: int | None, most_open: int | None = None,
                costs: Iterable[int] | None = None) -> list[int]:
        """Atomically open one slot on each of ``task_ids`` (in order) while B allows it and what each reserves
        (``costs``, aligned; 0 = nothing new: a task in cleaning whose opinions are held, e.g. a tie; without
        ``costs`` every one is such a task) fits beside what the others hold (and, with ``most_open``, while
        fewer slots than that are open: the window); the granted ids. The caller PATCHes them in Label Studio
        and :meth:`release` any it could not."""
        ids = [int(t) for t in task_ids]
        if not ids:
            return []
        costs = [0] * len(ids) if costs is None else [int(c) for c in costs]
        limits = [-1 if total is None else int(total), -1 if most_open is None else int(most_open)]
        pairs = [x for pair in zip(ids, costs) for x in pair]
        granted = _script(self.conn, "reserve", _RESERVE)(keys=[self._k("slots"), self._k("ledger")],
                                                           args=[*limits, *pairs])
        return [int(t) for t in granted]

    def release(self, task_id: int) -> None:
        """A reserved slot whose PATCH did not happen: the task's numbers as its record (unchanged) says."""
        task = self.task(task_id)
        if task is not None:
            self.put_task(task)

    def next_seq(self, n: int = 1) -> int:
        """The first of ``n`` consecutive touched_seq numbers (atomic across workers)."""
        return int(self.conn.incrby(self._k("seq"), int(n))) - int(n)

    def set_model_version(self, version: str) -> None:
        self.conn.set(self._k("config"), self.config().with_model_version(version).to_json())

    def set_project_state(self, project_state: Any) -> None:
        """A new alc-state line (budget, window, baseline) read from the project's description."""
        config = self.config()
        if config.state != project_state:
            self.conn.set(self._k("config"), replace(config, state=project_state).to_json())

    def set_spares(self, scores: dict[int, float], costs: dict[int, int] | None = None) -> None:
        """The spares (task id -> score) and what opening each reserves (task id -> cost)."""
        pipe = self.conn.pipeline()
        pipe.delete(self._k("spares"), self._k("spare_costs"))
        if scores:
            pipe.zadd(self._k("spares"), {int(t): float(s) for t, s in scores.items()})
        if costs:
            pipe.hset(self._k("spare_costs"), mapping={int(t): int(c) for t, c in costs.items()})
        pipe.execute()

    def drop_spare(self, task_id: int) -> None:
        pipe = self.conn.pipeline()
        pipe.zrem(self._k("spares"), int(task_id))
        pipe.hdel(self._k("spare_costs"), int(task_id))
        pipe.execute()

    def set_skipped(self, skipped: dict[Any, str]) -> None:
        self._replace_hash("skipped", {int(k): str(v) for k, v in skipped.items()})

    def _replace_hash(self, name: str, mapping: dict) -> None:
        """The hash ``name`` becomes exactly ``mapping`` (one transaction: readers never see it half-written)."""
        pipe = self.conn.pipeline()
        pipe.delete(self._k(name))
        if mapping:
            pipe.hset(self._k(name), mapping=mapping)
        pipe.execute()

    def touched_since(self, since: float) -> list[int]:
        return [int(t) for t in self.conn.zrangebyscore(self._k("touched"), since, "+inf")]

    def rebuild(self, snapshot: ProjectSnapshot, users: dict[int, str] | None = None) -> None:
        """Replace the state with a full read (one transaction: a reader sees the old or the new state)."""
        assert snapshot.config is not None, "rebuild needs a snapshot from connectors.counts.read_project"
        config = snapshot.config
        pipe = self.conn.pipeline(transaction=True)
        for what in ("tasks", "slots", "ledger", "touched", "changes", "annotations", "starred"):  # (not "seq")
            pipe.delete(self._k(what))
        if snapshot.tasks:
            pipe.hset(self._k("tasks"), mapping={t.id: t.to_json() for t in snapshot.tasks})
            annotations = {a.id: t.id for t in snapshot.tasks for a in t.annotations}
            if annotations:
                pipe.hset(self._k("annotations"), mapping=annotations)
            pipe.hset(self._k("slots"), mapping={t.id: f"{t.reannotations},{t.open_slots},{held(t, self.max_annotations)}"
                                                 for t in snapshot.tasks})
            starred = {a: UNRANKED for t in snapshot.tasks for a in t.ground_truth_ids}
            if starred:
                pipe.zadd(self._k("starred"), starred)
        # the touched_seq counter never goes back: openings made while the read ran are beyond what it saw
        pipe.eval(_RAISE_TO, 1, self._k("seq"), 1 + max((t.seq for t in snapshot.tasks if t.seq is not None), default=-1))
        pipe.hset(self._k("ledger"), mapping={"spent": sum(t.reannotations for t in snapshot.tasks),
                                              "committed": sum(t.open_slots for t in snapshot.tasks),
                                              "held": held_total(snapshot.tasks, self.max_annotations),
                                              "epoch": uuid.uuid4().hex, "generation": 0})
        pipe.set(self._k("config"), config.to_json())
        if users is not None:
            pipe.set(self._k("users"), json.dumps({str(k): v for k, v in users.items()}))
        pipe.set(self._k("synced_at"), time.time())
        pipe.sadd(PROJECTS_KEY, self.project_id)  # a known project: the periodic reconcile covers it
        pipe.execute()

    # --- ground-truth stars still to take off ---------------------------------------------------

    def starred(self, annotation_ids: Iterable[int]) -> list[int]:
        """Those of ``annotation_ids`` that still carry the star."""
        ids = [int(a) for a in annotation_ids]
        scores = self.conn.zmscore(self._k("starred"), ids) if ids else []
        return [a for a, score in zip(ids, scores) if score is not None]

    def next_starred(self, n: int) -> list[int]:
        """The ``n`` starred annotations whose tasks the latest push would open first."""
        return [int(a) for a in self.conn.zrange(self._k("starred"), 0, int(n) - 1)]

    def n_starred(self) -> int:
        return int(self.conn.zcard(self._k("starred")))

    def unstarred(self, annotation_ids: Iterable[int]) -> None:
        """These annotations' stars are off in Label Studio (or the annotations are gone). Their tasks count as
        touched: a full read running meanwhile may have seen the star, and reads them again."""
        ids = [int(a) for a in annotation_ids]
        if not ids:
            return
        tasks = {t for t in self.tasks_of_annotations(ids).values() if t is not None}
        pipe = self.conn.pipeline(transaction=False)
        pipe.zrem(self._k("starred"), *ids)
        if tasks:
            pipe.zadd(self._k("touched"), {t: time.time() for t in tasks})
        pipe.execute()

    def order_starred(self, task_order: Iterable[int], tasks: dict[int, TaskRecord]) -> None:
        """The stars of these tasks (best first) come off in this order (ZADD XX: one already off stays off)."""
        positions = {a: float(i) for i, tid in enumerate(task_order) for a in tasks[tid].ground_truth_ids}
        if positions:
            self.conn.zadd(self._k("starred"), positions, xx=True)

    def sync_starred(self, task: TaskRecord) -> None:
        """A task just read from Label Studio: its annotations' stars as Label Studio holds them."""
        starred = task.ground_truth_ids
        plain = [a.id for a in task.annotations if a.id not in starred]
        pipe = self.conn.pipeline(transaction=False)
        if starred:
            pipe.zadd(self._k("starred"), {a: UNRANKED for a in starred}, nx=True)
        if plain:
            pipe.zrem(self._k("starred"), *plain)
        pipe.execute()

    def record_reconcile(self, record: dict) -> None:
        pipe = self.conn.pipeline()
        pipe.lpush(self._k("reconciles"), json.dumps(record))
        pipe.ltrim(self._k("reconciles"), 0, RECONCILE_RECORDS_KEPT - 1)
        pipe.execute()


def reconcile_records(conn: redis.Redis, project_id: int) -> list[dict]:
    """The project's recent reconciles, newest first: ``time``, ``trigger``, ``differences`` (empty: equal)."""
    return [json.loads(r) for r in conn.lrange(key(project_id, "reconciles"), 0, -1)]


# the numbers of a task that the loop decides on; compare() checks exactly these
COMPARED = ("counts", "initial_counts", "overlap", "n_annotators", "n_annotations", "reannotations", "has_initial",
            "initial_label", "seq", "audit")


def _numbers(task: TaskRecord) -> dict[str, Any]:
    return {name: getattr(task, name) for name in COMPARED}


def compare(state: WorkingState, fresh: ProjectSnapshot, skip: set[int] | None = None) -> list[str]:
    """How the working state differs from a fresh full read, one line per difference; empty = equal.
    ``skip``: tasks updated after the read began (the state is newer there; the ledger is then not compared)."""
    if not state.exists():
        return ["no working state"]
    skip = skip or set()
    mine = state.tasks()
    theirs = {t.id: t for t in fresh.tasks}
    out = []
    for tid in sorted((set(mine) | set(theirs)) - skip):
        if tid not in theirs:
            out.append(f"task {tid}: in the working state, not in Label Studio")
            continue
        if tid not in mine:
            out.append(f"task {tid}: in Label Studio, not in the working state")
            continue
        a, b = _numbers(mine[tid]), _numbers(theirs[tid])
        for name in COMPARED:
            if a[name] != b[name]:
                out.append(f"task {tid}: {name} {a[name]} in the working state, {b[name]} in Label Studio")
    budget = state.budget()
    spent = sum(t.reannotations for t in fresh.tasks)
    committed = sum(t.open_slots for t in fresh.tasks)
    holding = held_total(fresh.tasks, state.max_annotations)
    if not skip and (budget.spent, budget.committed, budget.held) != (spent, committed, holding):
        out.append(f"ledger: spent/committed/held {budget.spent}/{budget.committed}/{budget.held} in the working "
                   f"state, {spent}/{committed}/{holding} in Label Studio")
    compared = [t for t in fresh.tasks if t.id not in skip]
    theirs_starred = {a for t in compared for a in t.ground_truth_ids}
    mine_starred = set(state.starred(a.id for t in compared for a in t.annotations))
    if mine_starred != theirs_starred:
        out.append(f"ground-truth stars: {len(mine_starred - theirs_starred)} in the working state only, "
                   f"{len(theirs_starred - mine_starred)} in Label Studio only")
    config = state.config()
    if fresh.config is not None and config.state != fresh.config.state:
        out.append(f"project state: {config.state} in the working state, {fresh.config.state} in Label Studio")
    return out


def ensure_state(conn: redis.Redis, client: Any, project_id: int, initial_label_source: str = "annotations",
                 lock_timeout: float = 900.0, max_annotations: int | None = None) -> WorkingState:
    """The project's working state, built by one full read when it is missing (first job after `alc connect`,
    or a Redis that lost its data); one builder at a time, the others wait for it."""
    state = WorkingState(conn, project_id, max_annotations)
    if state.exists():
        return state
    with conn.lock(key(project_id, "rebuilding"), timeout=lock_timeout, blocking_timeout=lock_timeout):
        if not state.exists():
            rebuild_from_label_studio(state, client, initial_label_source)
    return state


def rebuild_from_label_studio(state: WorkingState, client: Any, initial_label_source: str,
                              before: Callable[[ProjectSnapshot, set[int]], None] | None = None) -> ProjectSnapshot:
    """A full read into the working state; tasks updated while the read ran are read again, one by one,
    so that an annotation handled meanwhile is not overwritten by the older full read. ``before(fresh)``
    runs between the read and the rebuild with the tasks updated meanwhile (reconcile compares there)."""
    from connectors.counts import read_project

    started = time.time()
    fresh = read_project(client, state.project_id, initial_label_source)
    if before is not None:
        before(fresh, set(state.touched_since(started)))
    return adopt(state, client, fresh, started)


def adopt(state: WorkingState, client: Any, fresh: ProjectSnapshot, started: float) -> ProjectSnapshot:
    """``fresh`` (a full read begun at ``started``, e.g. `alc connect`'s) becomes the working state; tasks an
    event updated after ``started`` are read again, one by one, so the older read never overwrites them."""
    from connectors.counts import read_task
    from connectors.errors import TaskNotFound

    touched = state.touched_since(started)
    state.rebuild(fresh, fresh.users)
    for tid in touched:
        try:
            task = read_task(client, fresh.config, tid, fresh.users)
            state.put_task(task)
            state.sync_starred(task)
        except TaskNotFound:
            state.delete_task(tid)
    return fresh
