"""Retraining: real selectors on real images, versioned artifacts switched atomically, failures keep the old one."""

from __future__ import annotations

import os

import numpy as np
import pytest

from backend import jobs
from backend.images import ImageLoader
from backend.model_store import VERSIONS_KEPT, ModelStore


@pytest.fixture
def parts(settings, fake_ls):
    return settings, ModelStore(settings.models_path), ImageLoader.from_settings(settings), fake_ls


def test_fit_then_update_and_publish(parts):
    settings, store, loader, fake = parts
    snapshot = fake.read_snapshot(settings, 1)
    selector, ranking, meta = jobs.train_and_score(settings, 1, snapshot, store, loader)
    assert meta["mode"] == "fit" and meta["tasks"] == 60 and meta["rule"] == "alc"
    assert ranking.counts.shape == (60, 10) and np.all(np.isfinite(ranking.priority))
    # lowest score = highest priority
    assert np.array_equal(np.argsort(ranking.scores, kind="stable"), np.argsort(-ranking.priority, kind="stable"))
    v1 = store.publish(1, selector, ranking, meta)
    assert store.current_version(1) == v1 and os.path.islink(store.project_dir(1) / "current")

    fake.projects[1].add_annotation(1000, 3)
    _, ranking2, meta2 = jobs.train_and_score(settings, 1, fake.read_snapshot(settings, 1), store, loader)
    assert meta2["mode"] == "update" and ranking2.counts[0].sum() == 2
    loaded = store.load(1)
    assert loaded.version == v1 and loaded.selector().predict_proba(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 10)


def test_tasks_without_labels_or_images_are_skipped_and_reported(parts):
    settings, store, loader, fake = parts
    project = fake.projects[1]
    project.counts[0] = 0
    project.image_refs[1] = None
    project.image_refs[2] = "/data/upload/1/404.png"
    _, ranking, meta = jobs.train_and_score(settings, 1, fake.read_snapshot(settings, 1), store, loader)
    assert meta["tasks"] == 57 and 1000 not in ranking.task_ids
    assert meta["skipped"] == {"1000": "no label yet", "1001": "no image", "1002": "image request returned HTTP 404"}


def test_failed_training_keeps_the_previous_version_serving(parts, monkeypatch):
    settings, store, loader, fake = parts
    selector, ranking, meta = jobs.train_and_score(settings, 1, fake.read_snapshot(settings, 1), store, loader)
    v1 = store.publish(1, selector, ranking, meta)
    broken = fake.read_snapshot(settings, 1)
    broken.image_refs = [None] * len(broken.image_refs)
    with pytest.raises(ValueError, match="need at least 2"):
        jobs.train_and_score(settings, 1, broken, store, loader)
    monkeypatch.setattr("pickle.dump", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        store.publish(1, selector, ranking, meta)
    assert store.current_version(1) == v1
    assert [p.name for p in (store.project_dir(1) / "versions").iterdir()] == [v1]  # no half-written version


def test_old_versions_are_pruned(parts):
    settings, store, loader, fake = parts
    selector, ranking, meta = jobs.train_and_score(settings, 1, fake.read_snapshot(settings, 1), store, loader)
    versions = [store.publish(1, selector, ranking, meta) for _ in range(VERSIONS_KEPT + 2)]
    kept = sorted(p.name for p in (store.project_dir(1) / "versions").iterdir())
    assert len(kept) == VERSIONS_KEPT and versions[-1] in kept and store.current_version(1) == versions[-1]


@pytest.mark.slow
def test_a_learned_selector_is_stored_as_its_checkpoint_and_updated_next_time(parts):
    settings, store, loader, fake = parts
    settings = settings.model_copy(update={"selector": "vanilla", "selector_options": {"epochs": 1, "update_epochs": 1, "batch_size": 32}})
    selector, ranking, meta = jobs.train_and_score(settings, 1, fake.read_snapshot(settings, 1), store, loader)
    version = store.publish(1, selector, ranking, meta)
    assert (store.project_dir(1) / "versions" / version / "selector.ckpt").is_file()
    fresh = ModelStore(store.root).load(1)  # another process (the web app) loads it
    images, _ = loader.load_many(fake.projects[1].image_refs[:3])
    assert np.allclose(fresh.selector().predict_proba(images), selector.predict_proba(images), atol=1e-5)
    fake.projects[1].add_annotation(1001, 2)
    _, _, meta2 = jobs.train_and_score(settings, 1, fake.read_snapshot(settings, 1), store, loader)
    assert meta2["mode"] == "update" and meta2["selector_version"] != meta["selector_version"]
