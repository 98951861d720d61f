"""Versioned model artifacts in MODEL_DIR, switched atomically.

Layout: ``<MODEL_DIR>/project-<id>/versions/<version>/`` holds the fitted selector (``selector.ckpt``,
the selector's own checkpoint when it has ``save``/``load``, else ``selector.pkl``),
``ranking.json`` (per-task priority, components, counts) and ``meta.json``; ``current`` is a symlink
to the serving version, replaced with one ``os.replace`` so a reader sees the old or the new version,
never half of one. A training that fails never touches ``current``: the previous version keeps serving.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scoring.ranked import Ranking  # re-exported: the value type lives in scoring/

VERSIONS_KEPT = 5
CHECKPOINT = "selector.ckpt"
PICKLE = "selector.pkl"


@dataclass
class ModelVersion:
    """A published version: its name, where it lives, its metadata and ranking (selector loaded lazily)."""

    version: str
    path: Path
    meta: dict[str, Any]
    ranking: Ranking
    _selector: Any = field(default=None, repr=False)

    def selector(self) -> Any:
        """The fitted selector: from its own checkpoint (learned selectors, loaded onto the CPU first) or a pickle."""
        if self._selector is None:
            checkpoint = self.path / CHECKPOINT
            if checkpoint.is_file():
                module_name, _, attr = self.meta["selector_class"].partition(":")
                cls = getattr(importlib.import_module(module_name), attr)
                self._selector = cls.load(checkpoint)
            else:
                with open(self.path / PICKLE, "rb") as f:
                    self._selector = pickle.load(f)
        return self._selector


class ModelStore:
    """All projects' artifacts under one root (MODEL_DIR)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._cache: dict[int, ModelVersion] = {}

    def project_dir(self, project_id: int) -> Path:
        return self.root / f"project-{int(project_id)}"

    def current_version(self, project_id: int) -> str | None:
        link = self.project_dir(project_id) / "current"
        try:
            return Path(os.readlink(link)).name
        except OSError:
            return None

    def load(self, project_id: int) -> ModelVersion | None:
        """The serving version (cached per process until ``current`` moves), or None before the first training."""
        version = self.current_version(project_id)
        if version is None:
            return None
        cached = self._cache.get(project_id)
        if cached is not None and cached.version == version:
            return cached
        path = self.project_dir(project_id) / "versions" / version
        meta = json.loads((path / "meta.json").read_text())
        ranking = Ranking.from_json(json.loads((path / "ranking.json").read_text()))
        loaded = ModelVersion(version, path, meta, ranking)
        self._cache[project_id] = loaded
        return loaded

    def publish(self, project_id: int, selector: Any, ranking: Ranking, meta: dict[str, Any]) -> str:
        """Write a new version completely, then switch ``current`` to it in one atomic rename."""
        project = self.project_dir(project_id)
        versions = project / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        version = make_version(meta.get("selector", "model"))
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=versions))
        try:
            cls = type(selector)
            if callable(getattr(selector, "save", None)) and callable(getattr(cls, "load", None)):
                selector.save(staging / CHECKPOINT)  # learned selectors: their own versioned checkpoint
            else:
                with open(staging / PICKLE, "wb") as f:
                    pickle.dump(selector, f, protocol=pickle.HIGHEST_PROTOCOL)
            (staging / "ranking.json").write_text(json.dumps(ranking.to_json()))
            meta = {**meta, "version": version, "created_at": time.time(), "selector_class": f"{cls.__module__}:{cls.__qualname__}"}
            (staging / "meta.json").write_text(json.dumps(meta))
            os.rename(staging, versions / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        tmp_link = project / f".current-{version}"
        os.symlink(Path("versions") / version, tmp_link)
        os.replace(tmp_link, project / "current")
        self._prune(project_id, keep=version)
        return version

    def _prune(self, project_id: int, keep: str) -> None:
        versions = sorted(
            (p for p in (self.project_dir(project_id) / "versions").iterdir() if not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        for old in versions[:-VERSIONS_KEPT]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)


def make_version(selector_name: str) -> str:
    """'alc-<selector>-<UTC time>-<short id>': sortable, unique, readable in Label Studio's UI."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    suffix = os.urandom(3).hex()
    return f"alc-{selector_name}-{stamp}-{suffix}"
