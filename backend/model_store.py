"""Versioned model artifacts in MODEL_DIR: written crash-safe, read without executing anything.

Layout: ``<MODEL_DIR>/project-<id>/versions/<version>/`` holds ``ranking.json`` (per-task priority,
components, counts), ``meta.json`` (with the ranking's SHA-256) and ``selector/``, the fitted selector
written by its own ``save(directory)`` (contract 1: JSON + safetensors, never pickle) and read back
by ``SelectorClass.load(directory)``, the class taken from the selector registry only. A selector
without save/load is stored without state (``meta["selector_state"]`` is None): its stored ranking
serves, and a task outside it needs a retrain.

Writes: a version is built in a staging folder, every file and folder fsynced, renamed into place,
then ``current`` (a symlink) is switched with one ``os.replace`` and its folder fsynced. A power cut
leaves the old or the new version serving, never half of one.

Reads: when ``current`` is torn, truncated or corrupt (or missing while versions exist), the newest
intact version serves instead (logged), so one bad file blocks neither /predict nor the retrains.
Intact means: meta.json parses, and ranking.json and every file of ``selector/`` match the SHA-256
recorded in meta.json at publication.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scoring.ranked import Ranking  # re-exported: the value type lives in scoring/

log = logging.getLogger(__name__)

VERSIONS_KEPT = 5
SELECTOR_DIR = "selector"
RANKING_FILE = "ranking.json"
META_FILE = "meta.json"
STALE_STAGING_SECONDS = 3600  # a staging folder this old is a crashed publication


class ModelStateError(ValueError):
    """A version's selector cannot be used (stored without state, unregistered class, torn files)."""


@dataclass
class ModelVersion:
    """A published version: its name, where it lives, its metadata and ranking (selector loaded lazily)."""

    version: str
    path: Path
    meta: dict[str, Any]
    ranking: Ranking
    _selector: Any = field(default=None, repr=False)

    def selector(self) -> Any:
        """The fitted selector that serves this version, loaded once and kept; ModelStateError if it cannot be."""
        if self._selector is None:
            self._selector = self.load_selector()
        return self._selector

    def load_selector(self) -> Any:
        """A fresh copy of the fitted selector from ``selector/`` by its registered class, for a retrain to update
        in place while the kept one goes on serving this version unchanged; ModelStateError if it cannot be loaded."""
        if self.meta.get("selector_state") != "saved":
            raise ModelStateError(
                f"model {self.version} was stored without its selector's state (a selector without "
                "save/load): a retrain is needed to score tasks outside its ranking"
            )
        cls = _registered_class(self.meta.get("selector_class"))
        try:
            return cls.load(self.path / SELECTOR_DIR)
        except Exception as exc:  # torn or hostile files: this version's selector is unusable
            raise ModelStateError(f"the selector of model {self.version} does not load: {type(exc).__name__}: {exc}") from None


def _registered_class(name: Any) -> type:
    """Only classes the selector registry names are imported (never a module named by a file)."""
    from scoring.selectors import available_selectors

    if not isinstance(name, str) or name not in set(available_selectors().values()):
        raise ModelStateError(f"selector class {name!r} is not a registered selector")
    module_name, _, attr = name.partition(":")
    return getattr(__import__(module_name, fromlist=[attr]), attr)


class ModelStore:
    """All projects' artifacts under one root (MODEL_DIR)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._cache: dict[int, tuple[str | None, ModelVersion]] = {}

    def project_dir(self, project_id: int) -> Path:
        return self.root / f"project-{int(project_id)}"

    def current_version(self, project_id: int) -> str | None:
        """The name ``current`` points to (which may be corrupt: :meth:`load` says what serves)."""
        link = self.project_dir(project_id) / "current"
        try:
            return Path(os.readlink(link)).name
        except OSError:
            return None

    def load(self, project_id: int) -> ModelVersion | None:
        """The serving version: ``current`` if intact, else the newest intact one (cached per process
        until ``current`` moves); None before the first training or when no version is intact."""
        current = self.current_version(project_id)
        cached = self._cache.get(project_id)
        if cached is not None and cached[0] == current:
            return cached[1]
        candidates = ([current] if current else []) + [v for v in self.versions(project_id) if v != current]
        for version in candidates:
            try:
                loaded = self._read(project_id, version)
            except Exception as exc:
                log.warning("model version %s of project %s is unreadable (%s: %s); trying an older one",
                            version, project_id, type(exc).__name__, str(exc)[:200])
                continue
            if version != current:
                log.warning("project %s: serving %s, the newest intact version (current: %s)", project_id, version, current)
            self._cache[project_id] = (current, loaded)
            return loaded
        return None

    def versions(self, project_id: int) -> list[str]:
        """Published versions, newest first (by folder time: a corrupt meta.json cannot reorder them)."""
        folder = self.project_dir(project_id) / "versions"
        try:
            entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir()]
        except OSError:
            return []
        return [p.name for p in sorted(entries, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)]

    def _read(self, project_id: int, version: str) -> ModelVersion:
        path = self.project_dir(project_id) / "versions" / version
        meta = json.loads((path / META_FILE).read_text())
        if not isinstance(meta, dict):
            raise ValueError("meta.json is not an object")
        raw = (path / RANKING_FILE).read_bytes()
        expected = meta.get("ranking_sha256")
        if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
            raise ValueError("ranking.json does not match its checksum")
        for name, digest in (meta.get("selector_files") or {}).items():
            if _sha256(path / SELECTOR_DIR / name) != digest:
                raise ValueError(f"selector/{name} does not match its checksum")
        ranking = Ranking.from_json(json.loads(raw))
        n = len(ranking.task_ids)
        if any(len(np.asarray(a)) != n for a in (ranking.priority, ranking.noisiness, ranking.ambiguity,
                                                   ranking.scores, ranking.predicted)):
            raise ValueError("ranking.json has columns of different lengths")
        return ModelVersion(version, path, meta, ranking)

    def publish(self, project_id: int, selector: Any, ranking: Ranking, meta: dict[str, Any]) -> str:
        """Write a new version completely (fsynced), then switch ``current`` to it in one atomic rename."""
        project = self.project_dir(project_id)
        versions = project / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        version = make_version(meta.get("selector", "model"))
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=versions))
        try:
            cls = type(selector)
            state, files = None, {}
            if callable(getattr(selector, "save", None)) and callable(getattr(cls, "load", None)):
                selector.save(staging / SELECTOR_DIR)
                state = "saved"
                files = {str(p.relative_to(staging / SELECTOR_DIR)): _sha256(p)
                         for p in sorted((staging / SELECTOR_DIR).rglob("*")) if p.is_file()}
            ranking_bytes = json.dumps(ranking.to_json()).encode()
            _write(staging / RANKING_FILE, ranking_bytes)
            meta = {
                **meta, "version": version, "created_at": time.time(),
                "selector_class": f"{cls.__module__}:{cls.__qualname__}", "selector_state": state,
                "selector_files": files, "ranking_sha256": hashlib.sha256(ranking_bytes).hexdigest(),
            }
            _write(staging / META_FILE, json.dumps(meta).encode())
            _fsync_tree(staging)
            os.rename(staging, versions / version)
            _fsync_dir(versions)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        tmp_link = project / f".current-{version}"
        os.symlink(Path("versions") / version, tmp_link)
        os.replace(tmp_link, project / "current")
        _fsync_dir(project)
        self._prune(project_id, keep=version)
        return version

    def _prune(self, project_id: int, keep: str) -> None:
        """Keep the newest VERSIONS_KEPT versions (fallbacks for a torn one); drop crashed staging folders."""
        folder = self.project_dir(project_id) / "versions"
        for old in self.versions(project_id)[VERSIONS_KEPT:]:
            if old != keep:
                shutil.rmtree(folder / old, ignore_errors=True)
        for staging in folder.glob(".staging-*"):
            try:
                if time.time() - staging.stat().st_mtime > STALE_STAGING_SECONDS:
                    shutil.rmtree(staging, ignore_errors=True)
            except OSError:
                pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Every file and folder under ``root`` (the selector's own save included) reaches the disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def make_version(selector_name: str) -> str:
    """'alc-<selector>-<UTC time>-<short id>': sortable, unique, readable in Label Studio's UI."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    suffix = os.urandom(3).hex()
    return f"alc-{selector_name}-{stamp}-{suffix}"
