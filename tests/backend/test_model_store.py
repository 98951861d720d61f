"""The model store: crash-safe publication, fallback to the newest intact version, no code-executing formats."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from backend import model_store
from backend.model_store import ModelStateError, ModelStore, Ranking
from backend.protocol import scores_from_priorities
from scoring.selectors import LinearSelector

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fitted(tiny300, n: int = 40) -> tuple[LinearSelector, np.ndarray, np.ndarray]:
    images = tiny300["images"][:n]
    counts = np.eye(len(CLASSES))[tiny300["labels"][:n].astype(int)]
    return LinearSelector(folds=1, image_size=8, max_iter=100).fit(images, counts), images, counts


def ranking_for(counts: np.ndarray, first_task: int = 1) -> Ranking:
    n = len(counts)
    priority = np.linspace(1, -1, n)
    return Ranking(list(range(first_task, first_task + n)), list(CLASSES), counts, priority, priority / 2,
                   priority / 3, scores_from_priorities(priority), counts.argmax(axis=1))


def publish_versions(store: ModelStore, tiny300, k: int) -> list[str]:
    selector, _, counts = fitted(tiny300)
    names = []
    for i in range(k):
        names.append(store.publish(1, selector, ranking_for(counts, first_task=100 * i + 1), {"selector": "linear"}))
        time.sleep(0.01)  # distinct folder times
    return names


def test_round_trip_without_pickle(tmp_path, tiny300):
    store = ModelStore(tmp_path)
    selector, images, counts = fitted(tiny300)
    version = store.publish(1, selector, ranking_for(counts), {"selector": "linear"})
    loaded = ModelStore(tmp_path).load(1)
    assert loaded.version == version and loaded.ranking.task_ids == list(range(1, 41))
    assert loaded.meta["selector_state"] == "saved"
    np.testing.assert_allclose(loaded.selector().predict_proba(images), selector.predict_proba(images), atol=1e-5)
    files = [p for p in (tmp_path / "project-1").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"ranking.json", "meta.json"}
    for p in files:  # JSON and safetensors only: nothing that runs code when read
        assert p.suffix in (".json", ".safetensors"), p
        assert not p.read_bytes().startswith(b"\x80"), f"{p} looks like a pickle"


def test_every_file_and_folder_is_fsynced(tmp_path, tiny300, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store = ModelStore(tmp_path)
    [version] = publish_versions(store, tiny300, 1)
    final = tmp_path / "project-1" / "versions" / version
    staged = {Path(p).name for p in synced}
    assert {"ranking.json", "meta.json", "state.json", "arrays.safetensors"} <= staged
    assert str(tmp_path / "project-1" / "versions") in synced  # the rename into place
    assert str(tmp_path / "project-1") in synced  # the switch of `current`
    assert final.is_dir()


@pytest.mark.parametrize("damage", ["truncate-ranking", "garbage-meta", "delete-ranking", "flip-a-byte", "drop-link",
                                    "truncate-selector", "delete-selector"])
def test_a_torn_current_version_falls_back_to_the_newest_intact_one(tmp_path, tiny300, damage):
    store = ModelStore(tmp_path)
    names = publish_versions(store, tiny300, 3)
    current = tmp_path / "project-1" / "versions" / names[-1]
    ranking = current / "ranking.json"
    if damage == "truncate-ranking":
        ranking.write_bytes(ranking.read_bytes()[: len(ranking.read_bytes()) // 2])
    elif damage == "garbage-meta":
        (current / "meta.json").write_text("{")
    elif damage == "delete-ranking":
        ranking.unlink()
    elif damage == "flip-a-byte":  # still valid JSON, wrong numbers: caught by the checksum
        ranking.write_bytes(ranking.read_bytes().replace(b"[201,", b"[209,", 1))
        assert b"[209," in ranking.read_bytes()
    elif damage == "truncate-selector":  # the ranking is intact, the selector a retrain would update is not
        [arrays] = (current / "selector").glob("*.safetensors")
        arrays.write_bytes(arrays.read_bytes()[:20])
    elif damage == "delete-selector":
        [state] = (current / "selector").glob("*.json")
        state.unlink()
    else:
        (tmp_path / "project-1" / "current").unlink()
    served = ModelStore(tmp_path).load(1)
    expected = names[-2] if damage != "drop-link" else names[-1]  # without a link the newest intact serves
    assert served is not None and served.version == expected


def test_no_intact_version_means_no_model(tmp_path, tiny300):
    store = ModelStore(tmp_path)
    for name in publish_versions(store, tiny300, 2):
        (tmp_path / "project-1" / "versions" / name / "ranking.json").write_text("[")
    assert ModelStore(tmp_path).load(1) is None


def test_a_failed_publication_leaves_current_alone(tmp_path, tiny300):
    store = ModelStore(tmp_path)
    [first] = publish_versions(store, tiny300, 1)

    class Broken(LinearSelector):
        def save(self, directory):
            raise OSError("disk full")

    selector, _, counts = fitted(tiny300)
    selector.__class__ = Broken
    with pytest.raises(OSError):
        store.publish(1, selector, ranking_for(counts), {"selector": "linear"})
    assert store.current_version(1) == first and store.load(1).version == first
    assert not list((tmp_path / "project-1" / "versions").glob(".staging-*"))


def test_only_registered_selector_classes_are_loaded(tmp_path, tiny300):
    store = ModelStore(tmp_path)
    [name] = publish_versions(store, tiny300, 1)
    meta_path = tmp_path / "project-1" / "versions" / name / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("ranking_sha256")
    meta["selector_class"] = "os:system"
    meta_path.write_text(json.dumps(meta))
    loaded = ModelStore(tmp_path).load(1)
    with pytest.raises(ModelStateError, match="not a registered selector"):
        loaded.selector()


def test_a_selector_without_save_is_stored_without_state(tmp_path, tiny300):
    class ThirdParty:  # no save/load: its ranking serves, live scores need a retrain
        version = "3p"

    _, _, counts = fitted(tiny300)
    store = ModelStore(tmp_path)
    store.publish(1, ThirdParty(), ranking_for(counts), {"selector": "third-party"})
    loaded = ModelStore(tmp_path).load(1)
    assert loaded.meta["selector_state"] is None and loaded.ranking.task_ids[0] == 1
    with pytest.raises(ModelStateError, match="retrain"):
        loaded.selector()


def test_old_versions_are_pruned_and_crashed_staging_folders_removed(tmp_path, tiny300, monkeypatch):
    store = ModelStore(tmp_path)
    versions = tmp_path / "project-1" / "versions"
    versions.mkdir(parents=True)
    stale = versions / ".staging-crashed"
    stale.mkdir()
    os.utime(stale, (time.time() - 2 * model_store.STALE_STAGING_SECONDS,) * 2)
    names = publish_versions(store, tiny300, model_store.VERSIONS_KEPT + 2)
    assert store.versions(1) == names[::-1][: model_store.VERSIONS_KEPT]
    assert not stale.exists()
