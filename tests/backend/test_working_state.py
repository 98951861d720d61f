"""The working state's incremental read: a process re-parses only the tasks changed since its last read.

A real Redis and the HTTP-level fake; the proof each time is a read that parses everything afresh.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from backend import jobs
from backend import working_state
from backend.working_state import WorkingState, ensure_state, rebuild_from_label_studio
from connectors.counts import TaskRecord


@pytest.fixture
def state(settings, fake_ls, conn) -> WorkingState:
    ctx = jobs.configure(settings)
    return ensure_state(conn, jobs.client(ctx), 1)


@pytest.fixture
def parsed(monkeypatch) -> list[int]:
    """How many task records were parsed (TaskRecord.from_json calls)."""
    calls: list[int] = []
    real = TaskRecord.from_json.__func__

    def counting(cls, text):
        calls.append(1)
        return real(cls, text)

    monkeypatch.setattr(TaskRecord, "from_json", classmethod(counting))
    return calls


def full_read(state: WorkingState) -> dict[int, TaskRecord]:
    working_state._records.clear()
    return state.tasks()


def test_a_second_read_parses_only_the_tasks_changed_since(state, parsed):
    first = state.tasks()
    n = len(first)
    assert n == 60 and len(parsed) == 60
    some, other = sorted(first)[:2]
    state.put_task(replace(first[some], overlap=first[some].overlap + 1))
    state.delete_task(other)
    parsed.clear()
    again = state.tasks()
    assert len(parsed) == 1  # the changed task; the deleted one needs no parsing
    assert again[some].overlap == first[some].overlap + 1 and other not in again
    parsed.clear()
    assert state.tasks() == again and parsed == []  # nothing changed: nothing parsed
    assert again == full_read(state)


def test_a_rebuild_starts_a_new_epoch_and_so_a_full_read(state, settings, parsed):
    state.tasks()
    ctx = jobs.configure(settings)
    rebuild_from_label_studio(state, jobs.client(ctx), settings.initial_label_source)
    parsed.clear()
    assert len(state.tasks()) == 60 and len(parsed) == 60


def test_changes_by_another_process_are_seen_and_a_state_from_before_the_log_is_read_in_full(state, conn, parsed):
    mine = state.tasks()
    other = WorkingState(conn, 1)  # another process writes (the cache is per process, the log in Redis)
    tid = sorted(mine)[5]
    other.put_task(replace(mine[tid], data={**mine[tid].data, "note": "theirs"}))
    assert state.tasks()[tid].data["note"] == "theirs"
    conn.hdel(working_state.key(1, "ledger"), "epoch")  # as written before this version
    parsed.clear()
    assert state.tasks() == full_read(state) and len(parsed) == 120


def test_a_rebuild_never_lowers_the_opening_counter(state, settings):
    """Openings made while a full read ran are beyond what it saw: their numbers are never handed out again."""
    assert state.next_seq(3) == 0 and state.next_seq() == 3  # four tasks opened, none recorded in the read
    rebuild_from_label_studio(state, jobs.client(jobs.configure(settings)), settings.initial_label_source)
    assert state.next_seq() == 4


def test_what_a_task_holds_is_kept_per_task_and_summed_in_the_ledger(state):
    [tid, other] = sorted(state.tasks())[:2]
    assert state.budget().held == 0
    assert state.reserve([tid], total=5, costs=[3]) == [tid], "three held for an ambiguous image"
    assert state.budget().held == 3 and state.budget().committed == 1
    assert state.reserve([other], total=5, costs=[3]) == [], "3 + 3 would pass B = 5 (one slot would fit)"
    assert state.reserve([other], total=5, costs=[2]) == [other]
    state.release(other)
    assert state.budget().held == 3 and state.budget().committed == 1
