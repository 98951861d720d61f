"""What a retrain ranks on besides images: texts (chosen from the label config) and the team's own vectors
(embeddings or probabilities from a data field or a file), with a bad vector that task's skip, never a
failed retrain. Through the real rq job against the HTTP-level fake Label Studio."""

from __future__ import annotations

import numpy as np
import pytest
from rq import Queue, SimpleWorker

from backend import jobs
from backend import queue as q
from backend.settings import load_settings
from backend.training import input_kind, task_text
from backend.working_state import WorkingState, rebuild_from_label_studio
from connectors.state import ProjectState, with_state
from tests.backend.conftest import CLASSES

TEXT_CLASSES = ["sport", "cooking"]
TEXT_CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
               + "".join(f'<Choice value="{c}"/>' for c in TEXT_CLASSES) + "</Choices></View>")
SPORT = ["goal", "match", "striker", "league", "referee", "penalty", "stadium", "coach", "tennis", "race"]
COOKING = ["oven", "recipe", "flour", "butter", "simmer", "garlic", "sauce", "bake", "onion", "pepper"]


def connected(ls, pid: int) -> None:
    for t in ls.tasks.values():
        for a in t["annotations"]:
            a["ground_truth"] = False
    baseline = max(a["id"] for t in ls.tasks.values() for a in t["annotations"])
    ls.projects[pid]["description"] = with_state("", ProjectState(budget=None, baseline_annotation_id=baseline))


def retrain(conn, settings, project_id: int) -> dict:
    jobs.configure(settings)
    q.request_retrain(conn, project_id, q.Cadence.from_settings(settings), force=True)
    SimpleWorker([Queue(q.TRAIN_QUEUE, connection=conn)], connection=conn).work(burst=True)
    return q.retrain_records(conn, project_id)[0]


def with_settings(settings, **changes):
    return load_settings(**{**settings.model_dump(), **changes}, use_profile=False)


def test_a_project_with_embeddings_in_a_data_field_is_ranked_without_fetching_any_image(settings, fake_ls, conn,
                                                                                      image_server, tiny300):
    """Embeddings in data["emb"]: the backend ranks on them (0 image requests); a wrong length, a NaN and a
    missing vector are those tasks' skips with their reasons, and the retrain publishes the others."""
    _, handler = image_server
    rng = np.random.default_rng(0)
    truth = tiny300["cifar10h_probs"][:60].argmax(axis=1)
    centres = rng.normal(0, 1, (10, 16))
    ls = fake_ls.ls
    pid = ls.add_project(label_config=ls.projects[1]["label_config"])
    ids = []
    for i, c in enumerate(truth):
        emb = (centres[c] * 3 + rng.normal(0, 1, 16)).tolist()
        label = CLASSES[(c + 1) % 10] if i % 10 == 0 else CLASSES[c]  # every tenth label wrong
        ids.append(ls.add_task(pid, {"image": f"/data/upload/1/{i}.png", "emb": emb}, [label]))
    ls.tasks[ids[1]]["data"]["emb"] = [1.0, 2.0]
    ls.tasks[ids[2]]["data"]["emb"] = ["x"] * 16  # (JSON has no NaN: the file test below carries one)
    del ls.tasks[ids[3]]["data"]["emb"]
    connected(ls, pid)
    handler.requests_seen.clear()
    own = with_settings(settings, features_field="emb", selector_options={"folds": 3})
    record = retrain(conn, own, pid)

    assert "model_version" in record, record
    assert handler.requests_seen == [], "no image is fetched when the project brings its own embeddings"
    model = jobs.context().store.load(pid)
    assert model.meta["input"] == "features" and model.meta["selector"] == "linear" and model.meta["tasks"] == 57
    skipped = WorkingState(conn, pid).skipped()
    assert skipped == {ids[1]: "features: length 2, expected 16", ids[2]: "features: expected a list of numbers or a URL of an .npy file",
                       ids[3]: "features: no features in data['emb']"}
    ranking = model.ranking
    wrong = {ids[i] for i in range(0, 60, 10)} - set(skipped)
    top = {ranking.task_ids[r] for r in np.argsort(-ranking.priority)[: len(wrong)]}
    assert len(top & wrong) >= len(wrong) - 1  # separable embeddings: the wrong labels come first
    np.testing.assert_allclose(ranking.p_label, model.selector().oof_proba(np.zeros((57, 16)))[np.arange(57),
                               ranking.counts.argmax(axis=1)])


def test_probabilities_from_a_file_are_ranked_as_given(settings, fake_ls, conn, image_server, tmp_path, tiny300):
    _, handler = image_server
    project = fake_ls.projects[1]
    probs = tiny300["cifar10h_probs"][:60].copy()
    probs[2, 3] = np.nan
    path = tmp_path / "posteriors.npz"
    np.savez(path, ids=np.asarray(project.task_ids[1:]), posteriors=probs[1:])  # the first task has none
    handler.requests_seen.clear()
    record = retrain(conn, with_settings(settings, posteriors_file=path), 1)
    assert "model_version" in record and handler.requests_seen == []
    ranking = jobs.context().store.load(1).ranking
    assert WorkingState(conn, 1).skipped() == {
        project.task_ids[0]: "probabilities: no probabilities for this task in posteriors.npz",
        project.task_ids[2]: "probabilities: not finite (NaN or infinity)"}
    rows = [project.task_ids.index(t) for t in ranking.task_ids]
    labels = ranking.counts.argmax(axis=1)
    np.testing.assert_allclose(ranking.p_label, probs[rows, labels] / probs[rows].sum(axis=1))
    np.testing.assert_allclose(ranking.p_initial, ranking.p_label)  # nothing re-annotated: the initial labels are current


def test_a_text_project_is_ranked_with_the_text_selector(settings, fake_ls, conn, image_server):
    """<Text> + <Choices>: the text selector is chosen from the label config, no image is fetched, an empty
    text is skipped, and the flipped labels rank first."""
    _, handler = image_server
    rng = np.random.default_rng(1)
    ls = fake_ls.ls
    pid = ls.add_project(label_config=TEXT_CONFIG)
    ids, flipped = [], set()
    for i in range(60):
        c = i % 2
        words = rng.choice(SPORT if c == 0 else COOKING, 8)
        label = TEXT_CLASSES[1 - c] if i % 12 == 0 else TEXT_CLASSES[c]
        tid = ls.add_task(pid, {"text": "Today: " + " ".join(words) + "."}, [label])
        ids.append(tid)
        if i % 12 == 0:
            flipped.add(tid)
    ls.tasks[ids[5]]["data"]["text"] = "   "
    connected(ls, pid)
    handler.requests_seen.clear()
    record = retrain(conn, settings, pid)
    assert "model_version" in record, record
    assert handler.requests_seen == []
    model = jobs.context().store.load(pid)
    assert model.meta["input"] == "text" and model.meta["selector"] == "text"
    assert WorkingState(conn, pid).skipped() == {ids[5]: "no text"}
    ranking = model.ranking
    top = {ranking.task_ids[r] for r in np.argsort(-ranking.priority)[: len(flipped)]}
    assert top == flipped


def test_the_input_follows_the_settings_then_the_object_tag():
    base = load_settings(use_profile=False)
    assert input_kind(base, "image") == "image" and input_kind(base, "text") == "text"
    assert input_kind(base, "hypertext") == "text"
    assert input_kind(with_settings(base, features_field="emb"), "text") == "features"
    assert input_kind(with_settings(base, posteriors_field="p"), "image") == "posteriors"
    with pytest.raises(ValueError, match="set one of"):
        with_settings(base, features_field="emb", posteriors_field="p")
    assert task_text("<p>Hello &amp; <b>bye</b></p>", "hypertext").split() == ["Hello", "&", "bye"]
    assert task_text(" ", "text") is None and task_text(None, "text") is None


def test_the_label_config_says_which_object_is_labelled():
    from backend.protocol import ChoicesConfig

    assert ChoicesConfig.parse(TEXT_CONFIG).object_type == "text"
    assert ChoicesConfig.parse(TEXT_CONFIG.replace("<Text ", "<HyperText ")).object_type == "hypertext"


def test_a_full_read_records_the_object_type(settings, fake_ls, conn):
    ls = fake_ls.ls
    pid = ls.add_project(label_config=TEXT_CONFIG)
    for i in range(4):
        ls.add_task(pid, {"text": f"text {i}"}, [TEXT_CLASSES[i % 2]])
    connected(ls, pid)
    jobs.configure(settings)
    state = WorkingState(conn, pid)
    rebuild_from_label_studio(state, jobs.client(jobs.context()), settings.initial_label_source)
    snapshot = jobs.training_snapshot(state)
    assert snapshot.object_type == "text" and snapshot.image_refs[0] == "text 0"


def test_a_text_task_is_shown_as_a_card_of_its_first_words():
    import io

    from PIL import Image

    from backend.images import ImageLoader

    png = ImageLoader.text_card("The striker scored a late goal " * 20, 96)
    with Image.open(io.BytesIO(png)) as card:
        pixels = np.asarray(card.convert("L"))
    assert pixels.shape == (96, 96) and (pixels < 100).mean() > 0.02  # dark text drawn on a light card
    with pytest.raises(ValueError, match="thumbnail size"):
        ImageLoader.text_card("x", 0)


def test_a_text_task_outside_the_ranking_is_a_task_error_not_an_image_fetch():
    from backend.protocol import ChoicesConfig, TaskError

    config = ChoicesConfig.parse(TEXT_CONFIG)
    assert config.object_value({"data": {"text": "a goal"}}) == "a goal"
    with pytest.raises(TaskError, match="next retrain"):
        config.image_ref({"data": {"text": "a goal"}})
