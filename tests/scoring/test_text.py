"""The text selector (TF-IDF n-grams + wordllama, calibrated out-of-fold head) and the one ranking pipeline."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from scoring.pipeline import rank, scores_from_priorities
from scoring.ranked import Ranking
from scoring.selectors import make_selector
from scoring.selectors.base import Selector
from scoring.selectors.text import TextSelector, as_texts, load_wordllama

TOPICS = {
    0: ["goal", "match", "striker", "league", "referee", "penalty", "stadium", "coach", "tennis", "race", "team"],
    1: ["oven", "recipe", "flour", "butter", "simmer", "garlic", "sauce", "bake", "onion", "pepper", "dinner"],
    2: ["vote", "minister", "election", "party", "senate", "policy", "campaign", "law", "tax", "mayor", "debate"],
}


def corpus(n: int = 90, flip_every: int = 10, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """n short texts of three topics; every ``flip_every``-th label moved to the next topic."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 3
    texts = [" ".join(rng.choice(TOPICS[c], 7)) + f" (note {i})" for i, c in enumerate(truth)]
    labels = truth.copy()
    flipped = np.arange(n) % flip_every == 0
    labels[flipped] = (truth[flipped] + 1) % 3
    return texts, truth, np.eye(3)[labels], flipped


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_wordllama_loads_from_its_wheel_with_the_network_blocked(no_network):
    model = load_wordllama()
    vectors = np.asarray(model.embed(["the striker scored a goal", "simmer the garlic sauce"]))
    assert vectors.shape == (2, 256) and np.isfinite(vectors).all()


@pytest.mark.parametrize("features", ["tfidf", "tfidf,wordllama"])
def test_the_text_selector_ranks_flipped_labels_first(features, tmp_path, no_network):
    texts, truth, counts, flipped = corpus()
    selector = make_selector("text", {"features": features, "folds": 3}, cache_dir=tmp_path)
    _, ranking = rank(texts, counts, selector=selector)
    top = np.argsort(-ranking.priority)[: flipped.sum()]
    assert flipped[top].mean() >= 0.8
    assert (ranking.predicted == truth).mean() >= 0.9


def test_sentence_embeddings_are_cached_per_text(tmp_path, no_network):
    texts, _, counts, _ = corpus(30)
    first = TextSelector(features="wordllama", folds=3, cache_dir=tmp_path)
    first.fit(texts, counts)
    assert first.embedding_cache_.misses == 30
    again = TextSelector(features="wordllama", folds=3, cache_dir=tmp_path)
    again.fit(texts[::-1], counts[::-1])  # other order, same texts: no text embedded again
    assert again.embedding_cache_.misses == 0 and again.embedding_cache_.hits >= 30


def test_a_saved_text_selector_predicts_after_a_refit_and_updates(tmp_path):
    texts, _, counts, _ = corpus(60)
    selector = TextSelector(features="tfidf", folds=3, cache_dir=tmp_path).fit(texts, counts)
    new = ["penalty goal for the team", "bake the flour and butter"]
    assert selector.predict_proba(new).argmax(axis=1).tolist() == [0, 1]
    loaded = Selector.load(selector.save(tmp_path / "saved"))
    with pytest.raises(ValueError, match="without its SVD"):
        loaded.predict_proba(new)  # the SVD is not stored: a loaded selector is refitted first
    more = counts.copy()
    more[0] += np.eye(3)[0]
    loaded.update(texts, more)
    assert loaded.predict_proba(new).argmax(axis=1).tolist() == [0, 1]


def test_the_text_selector_says_what_it_needs():
    with pytest.raises(ValueError, match="strings"):
        as_texts(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="not strings"):
        as_texts(["a", 3])
    with pytest.raises(ValueError, match="features must name"):
        TextSelector(features="bert")


def test_rank_fills_p_label_and_updates_when_the_tasks_are_the_same():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    x = np.eye(3)[y] * 4 + rng.normal(0, 0.5, (120, 3))
    counts = np.eye(3)[y]
    counts[:5] = np.eye(3)[(y[:5] + 1) % 3]
    selector = make_selector("linear", {"folds": 3})
    fitted, ranking = rank(x, counts, selector=selector, task_ids=range(100, 220), class_names=["a", "b", "c"])
    oof = fitted.oof_proba(x)
    np.testing.assert_allclose(ranking.p_label, oof[np.arange(120), counts.argmax(axis=1)])
    np.testing.assert_array_equal(ranking.predicted, oof.argmax(axis=1))
    np.testing.assert_allclose(ranking.scores, scores_from_priorities(ranking.priority))
    assert ranking.task_ids[0] == 100 and ranking.class_names == ["a", "b", "c"]
    assert set(np.argsort(-ranking.priority)[:5]) == set(range(5))
    calls = []
    fitted.update = lambda data, c: calls.append("update") or fitted  # noqa: E731
    rank(x, counts, selector=fitted, task_ids=range(100, 220), previous=ranking)
    assert calls == ["update"]
    with pytest.raises(ValueError, match="data rows"):
        rank(x[:10], counts, selector=selector)


def test_rank_gives_the_initial_labels_probability_where_they_are_known():
    """p_initial is what the accuracy estimate's control variate reads; a re-annotated task's current label
    differs from its initial one, and a task with no initial label gets NaN."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    x = np.eye(3)[y] * 4 + rng.normal(0, 0.5, (90, 3))
    initial = np.eye(3)[y]
    initial[:4] = np.eye(3)[(y[:4] + 1) % 3]  # four wrong initial labels ...
    counts = initial.copy()
    counts[:4] += 2 * np.eye(3)[y[:4]]  # ... overturned by two opinions each
    initial[89] = 0  # a task labelled by annotators only
    fitted, ranking = rank(x, counts, selector=make_selector("linear", {"folds": 3}), initial_counts=initial)
    oof = fitted.oof_proba(x)
    np.testing.assert_allclose(ranking.p_initial[:89], oof[np.arange(89), initial[:89].argmax(axis=1)])
    np.testing.assert_allclose(ranking.p_label, oof[np.arange(90), counts.argmax(axis=1)])
    assert np.isnan(ranking.p_initial[89]) and (ranking.p_initial[:4] < ranking.p_label[:4]).all()
    again = Ranking.from_json(ranking.to_json())
    np.testing.assert_allclose(again.p_initial, ranking.p_initial)
    assert rank(x, counts, selector=make_selector("linear", {"folds": 3}))[1].p_initial is None
    with pytest.raises(ValueError, match="initial_counts must have the shape"):
        rank(x, counts, selector=make_selector("linear", {"folds": 3}), initial_counts=initial[:10])
