"""Reading a project into label counts: initial label sources, skipped and foreign labels, paging, the state line."""

from __future__ import annotations

import pytest

from connectors.counts import read_project
from connectors.errors import ProjectConfigError
from connectors.state import ProjectState, parse_state, with_state


def test_counts_initial_and_reannotations_from_the_baseline(fake, client_of):
    pid = fake.add_project()
    a = fake.add_task(pid, {"image": "a"}, ["cat"])
    b = fake.add_task(pid, {"image": "b"}, ["dog", "dog"])  # two initial labels
    baseline = max(x["id"] for t in fake.tasks.values() for x in t["annotations"])
    fake.projects[pid]["expert_instruction"] = with_state("Some project.", ProjectState(budget=5, baseline_annotation_id=baseline))
    fake.annotate(a, "dog", by=2)
    fake.annotate(a, None, by=3, cancelled=True)  # skipped: counts nowhere
    fake.annotate(b, "zebra", by=2)  # not a class: reported, not counted, still paid
    fake.users[2] = "ann2@example.com"
    snap = read_project(client_of(fake), pid, page_size=1)  # paged: one task a request

    assert snap.task_ids == [a, b]
    assert snap.class_names == ["cat", "dog", "bird"]
    assert snap.counts.tolist() == [[1, 1, 0], [0, 2, 0]]
    assert snap.initial_counts.tolist() == [[1, 0, 0], [0, 2, 0]]
    assert [t.initial_label for t in snap.tasks] == ["cat", "dog"]
    assert [t.reannotations for t in snap.tasks] == [1, 1]
    assert snap.state.budget == 5
    assert any("zebra" in p for p in snap.problems)
    record = snap.task(a).annotations[1]
    assert (record.annotator, record.label, record.initial, record.lead_time) == ("ann2@example.com", "dog", False, 2.0)
    assert snap.task_data == [{"image": "a"}, {"image": "b"}]


def test_without_a_baseline_the_earliest_annotation_is_initial(fake, client_of):
    pid = fake.add_project()
    t = fake.add_task(pid, {"image": "a"}, ["cat", "dog", "dog"])
    snap = read_project(client_of(fake), pid)
    assert snap.initial_counts.tolist() == [[1, 0, 0]]
    assert snap.counts.tolist() == [[1, 2, 0]]
    assert snap.task(t).reannotations == 2


def test_initial_label_from_a_data_field_or_a_model_version(fake, client_of):
    pid = fake.add_project()
    t1 = fake.add_task(pid, {"image": "a", "label": "bird"}, ["cat"])
    t2 = fake.add_task(pid, {"image": "b", "label": "horse"})
    fake.tasks[t1]["predictions"].append({"id": 99, "model_version": "import", "score": 0.9,
                                          "result": [{"from_name": "label", "value": {"choices": ["dog"]}}]})
    client = client_of(fake)

    snap = read_project(client, pid, "data:label")
    assert snap.initial_counts.tolist() == [[0, 0, 1], [0, 0, 0]]
    assert snap.counts.tolist() == [[1, 0, 1], [0, 0, 0]]  # every annotation is a re-annotation
    assert snap.task(t1).reannotations == 1
    assert any(f"task {t2}" in p and "horse" in p for p in snap.problems)

    snap = read_project(client, pid, "predictions:import")
    assert snap.initial_counts[0].tolist() == [0, 1, 0]
    assert any(f"task {t2}: no initial label" in p for p in snap.problems)


def test_bad_config_and_bad_source_are_clear(fake, client_of):
    client = client_of(fake)
    pid = fake.add_project(label_config='<View><Image name="i" value="$image"/></View>')
    with pytest.raises(ProjectConfigError, match="no <Choices>"):
        read_project(client, pid)
    with pytest.raises(ProjectConfigError, match="initial label source"):
        read_project(client, pid, "labels")


def test_state_line_round_trip_and_errors():
    text = with_state("A project.\nSecond line.", ProjectState(budget=40, window=10, baseline_annotation_id=7))
    assert text.startswith("A project.\nSecond line.")
    assert parse_state(text) == ProjectState(budget=40, window=10, baseline_annotation_id=7)
    again = with_state(text, ProjectState(budget=50, baseline_annotation_id=7))
    assert again.count('class="alc-state"') == 1 and parse_state(again).budget == 50
    assert parse_state("no state here") == ProjectState()
    with pytest.raises(ProjectConfigError, match="alc-state"):
        parse_state('alc-state: {"budget": "many"}')


def test_the_state_hides_in_the_instructions_and_a_description_line_from_before_is_read_and_moved(fake, client_of):
    """The project card shows the description, so the state lives in a never-rendered <template> element of
    the instructions (Label Studio escapes & and < there: read back unescaped); a project connected before
    kept it on a description line, which is read and, on the next write, moved out of the description."""
    from connectors.state import read_state, write_state

    state = ProjectState(budget=40, window=10, baseline_annotation_id=7, connected_at="2026-01-01T00:00:00+00:00")
    element = with_state("Look closely.", state)
    assert element.startswith("Look closely.\n<template class=\"alc-state\">") and element.endswith("</template>")
    assert parse_state(element.replace('"budget"', '"x": "a&amp;b&lt;c", "budget"')) == state
    pid = fake.add_project(description=f"Cats and dogs.\n\nalc-state: {state.to_json()}")  # connected before
    client = client_of(fake)
    assert read_state(client, pid) == state
    write_state(client, pid, ProjectState(budget=50, baseline_annotation_id=7))
    assert fake.projects[pid]["description"] == "Cats and dogs."
    assert read_state(client, pid) == ProjectState(budget=50, baseline_annotation_id=7)
    assert parse_state(fake.projects[pid]["expert_instruction"]).budget == 50


def test_a_task_imported_after_connect_brings_its_initial_label(fake, client_of):
    pid = fake.add_project()
    old = fake.add_task(pid, {"image": "a"}, ["cat"])
    baseline = max(a["id"] for t in fake.tasks.values() for a in t["annotations"])
    fake.projects[pid]["expert_instruction"] = with_state("", ProjectState(budget=3, baseline_annotation_id=baseline))
    new = fake.add_task(pid, {"image": "b"}, ["dog"])  # imported later, with its label
    fake.annotate(new, "cat", by=2)
    fake.annotate(old, "cat", by=2)
    snap = read_project(client_of(fake), pid)
    assert snap.initial_counts.tolist() == [[1, 0, 0], [0, 1, 0]]
    assert [snap.task(old).reannotations, snap.task(new).reannotations] == [1, 1]
