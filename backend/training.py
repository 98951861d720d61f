"""The retrain's science side: a project's tasks -> what the selector reads -> scoring.pipeline.rank.

What a task is ranked on, decided from the label config and the settings (first match wins):
  posteriors   ALC_POSTERIORS_FIELD / ALC_POSTERIORS_FILE: the team's own class probabilities, ranked as given;
  features     ALC_FEATURES_FIELD / ALC_FEATURES_FILE: the team's own embeddings -> the calibrated out-of-fold
               head (``pretrained-linear`` reading features; ``linear`` if that is the chosen selector);
  text         a ``<Text>`` / ``<HyperText>`` object: the ``text`` selector;
  image        an ``<Image>`` (anything else): the configured selector on the task's image.
A task whose input cannot be read (no image, an empty text, a vector of the wrong length, a NaN) is
skipped with its reason (shown on the dashboard); the retrain goes on with the others.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.images import ImageError, ImageLoader
from backend.model_store import ModelStateError, ModelStore, ModelVersion, Ranking
from backend.settings import Settings
from scoring.selectors import DEFAULT_FEATURE_SELECTOR

log = logging.getLogger(__name__)

TEXT_OBJECTS = ("text", "hypertext")
FEATURE_SELECTORS = ("pretrained-linear", "linear")  # selectors that read a float (N, D) array as features


@dataclass
class Snapshot:
    """What a retrain trains on, one row per task."""

    task_ids: list[int]
    class_names: list[str]
    counts: np.ndarray  # (N, C) initial label plus every re-annotation
    image_refs: list[str | None]  # the value of the labelled object's data field (an image URL, a text)
    label_config: str
    initial_counts: np.ndarray | None = None  # (N, C) the initial label(s) only
    task_data: list[dict] = field(default_factory=list)  # each task's data (own-model fields are read from it)
    object_type: str = "image"  # the labelled object's tag, lower case


def training_snapshot(state: Any) -> Snapshot:
    snap = state.snapshot()
    config = snap.config
    key = config.data_key if config is not None else None
    refs = []
    for data in snap.task_data:
        value = data.get(key) if key and isinstance(data, dict) else None
        refs.append(value if isinstance(value, str) else None)
    return Snapshot(list(snap.task_ids), list(snap.class_names), np.asarray(snap.counts, float), refs, snap.label_config,
                    np.asarray(snap.initial_counts, float), list(snap.task_data),
                    getattr(config, "object_type", "image") if config is not None else "image")


def input_kind(settings: Settings, object_type: str) -> str:
    """posteriors, features, text or image (see the module docstring)."""
    if settings.posteriors_field or settings.posteriors_file:
        return "posteriors"
    if settings.features_field or settings.features_file:
        return "features"
    return "text" if object_type in TEXT_OBJECTS else "image"


def selector_name(settings: Settings, kind: str) -> str:
    if kind == "posteriors":
        return "posteriors"
    if kind == "features":
        return settings.selector if settings.selector in FEATURE_SELECTORS else DEFAULT_FEATURE_SELECTOR
    if kind == "text":
        return "text"
    return settings.selector


# --- images: fetched once per task, kept as one array per project ------------------------------


def load_images(loader: ImageLoader, store: ModelStore, project_id: int, task_ids: list[int], refs: list[str],
                size: int) -> tuple[np.ndarray, dict[int, str]]:
    """The images of these tasks at ``size``: from the project's array cache, fetching (concurrently, by the
    loader) only tasks not seen before or whose image reference changed. Errors are per index, not cached.

    Memory: one (N, size, size, 3) array in the usual case; the cached array itself is returned when it
    holds exactly these tasks (a retrain after new labels), so 100,000 32 px images cost 293 MiB, not 3x.
    """
    path = store.project_dir(project_id) / f"images-{size}px.npz"
    keys = list(zip(task_ids, refs))
    pixels, row_of = np.zeros((0, size, size, 3), dtype=np.uint8), {}
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                ids, names, pixels = f["task_ids"], json.loads(str(f["refs"])), f["images"]
            row_of = {(int(t), r): i for i, (t, r) in enumerate(zip(ids, names))}
        except (OSError, ValueError, KeyError) as exc:  # a torn cache file costs one refetch, nothing else
            log.warning("project %s: image cache %s unreadable (%s); fetching again", project_id, path, exc)
    rows = [row_of.get(key, -1) for key in keys]
    if len(pixels) == len(keys) and rows == list(range(len(keys))):
        return pixels, {}
    out = np.zeros((len(keys), size, size, 3), dtype=np.uint8)
    found = [i for i, row in enumerate(rows) if row >= 0]
    out[found] = pixels[[rows[i] for i in found]]
    del pixels
    missing = [i for i, row in enumerate(rows) if row < 0]
    errors: dict[int, str] = {}
    if missing:
        fetched, failed = loader.load_many([refs[i] for i in missing], size=size)
        for j, i in enumerate(missing):
            if j in failed:
                errors[i] = failed[j]
            else:
                out[i] = fetched[j]
        del fetched
        keep = [i for i in range(len(keys)) if i not in errors]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, task_ids=np.asarray([task_ids[i] for i in keep], dtype=np.int64),
                 refs=np.asarray(json.dumps([refs[i] for i in keep])), images=out[keep] if errors else out)
        os.replace(tmp, path)
    return out, errors


# --- texts and the team's own vectors ----------------------------------------------------------

_TAG = re.compile(r"<[^>]*>")


def task_text(value: Any, object_type: str) -> str | None:
    """The text of a task's object: HTML tags and entities out for <HyperText>; None when empty."""
    if not isinstance(value, str):
        return None
    if object_type == "hypertext":
        value = html.unescape(_TAG.sub(" ", value))
    return value if value.strip() else None


def read_vectors_file(path: Path) -> dict[int, np.ndarray]:
    """task id -> vector from an .npz with ``ids`` (N,) and one other (N, D) array; ValueError naming the problem."""
    if not path.is_file():
        raise ValueError(f"{path} not found")
    with np.load(path, allow_pickle=False) as f:
        names = [n for n in f.files if n != "ids"]
        if "ids" not in f.files or len(names) != 1:
            raise ValueError(f"{path} needs an array 'ids' (N,) and one (N, D) array; found {f.files}")
        ids, values = f["ids"], f[names[0]]
    if values.ndim != 2 or len(values) != len(ids):
        raise ValueError(f"{path}: '{names[0]}' has shape {values.shape}, expected ({len(ids)}, D)")
    return {int(t): np.asarray(v, dtype=np.float64) for t, v in zip(ids, values)}


def own_vectors(settings: Settings, loader: ImageLoader, snapshot: Snapshot, rows: list[int], kind: str,
                n_classes: int) -> tuple[np.ndarray, dict[int, str]]:
    """(len(rows), D) vectors of these tasks and {row index: why skipped}. D is C for probabilities, else the
    length most tasks have. A missing vector, a wrong length, a NaN or a negative probability skips that task."""
    name = settings.posteriors_field if kind == "posteriors" else settings.features_field
    path = settings.posteriors_file if kind == "posteriors" else settings.features_file
    from_file = read_vectors_file(Path(path)) if path else None
    vectors: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    what = "probabilities" if kind == "posteriors" else "features"
    for j, i in enumerate(rows):
        task_id = snapshot.task_ids[i]
        try:
            if from_file is not None:
                if task_id not in from_file:
                    raise ValueError(f"no {what} for this task in {Path(path).name}")
                value = from_file[task_id]
            else:
                data = snapshot.task_data[i] if i < len(snapshot.task_data) else {}
                raw = data.get(name) if isinstance(data, dict) else None
                if raw is None:
                    raise ValueError(f"no {what} in data[{name!r}]")
                value = loader.load_vector(raw) if isinstance(raw, str) else _floats(raw)
            vectors[j] = value
        except (ValueError, TypeError, ImageError) as exc:
            errors[j] = f"{what}: {exc}"
    lengths = Counter(len(v) for v in vectors.values())
    width = n_classes if kind == "posteriors" else (lengths.most_common(1)[0][0] if lengths else 0)
    for j, v in list(vectors.items()):
        problem = (f"length {len(v)}, expected {width}" if len(v) != width
                   else "not finite (NaN or infinity)" if not np.isfinite(v).all()
                   else "negative or all-zero probabilities" if kind == "posteriors" and (v.min() < 0 or v.sum() <= 0)
                   else None)
        if problem:
            errors[j] = f"{what}: {problem}"
            del vectors[j]
    out = np.zeros((len(rows), width), dtype=np.float64 if kind == "posteriors" else np.float32)
    for j, v in vectors.items():
        out[j] = v / v.sum() if kind == "posteriors" else v
    return out, errors


def _floats(value: Any) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise ValueError("expected a list of numbers or a URL of an .npy file")
    return np.asarray(value, dtype=np.float64)


# --- training and scoring (scoring/) -----------------------------------------------------------


def _stored_selector(version: ModelVersion) -> Any | None:
    """A fresh copy of the serving version's fitted selector, to update (the served one must not change before the
    new version is published), or None when it was stored without usable state (a third-party selector without
    save/load): the retrain then fits a fresh one instead of failing on every retry."""
    try:
        return version.load_selector()
    except ModelStateError as exc:
        log.info("model %s cannot be updated (%s): fitting a fresh selector", version.version, exc)
        return None


def train_and_score(
    settings: Settings, project_id: int, snapshot: Snapshot, store: ModelStore, loader: ImageLoader
) -> tuple[Any, Ranking, dict]:
    """Fit (or update) the selector on the tasks that have labels and a usable input; rank them."""
    from scoring.pipeline import rank
    from scoring.selectors import make_selector

    counts = np.asarray(snapshot.counts, dtype=float)
    kind = input_kind(settings, snapshot.object_type)
    name = selector_name(settings, kind)
    options = settings.selector_options if name == settings.selector else {}
    skipped: dict[int, str] = {}
    usable = []
    for i, (task_id, ref) in enumerate(zip(snapshot.task_ids, snapshot.image_refs)):
        if counts[i].sum() <= 0:
            skipped[task_id] = "no label yet"
        elif kind == "image" and ref is None:
            skipped[task_id] = "no image"
        else:
            usable.append(i)

    previous = store.load(project_id)
    reusable = (kind != "posteriors" and previous is not None and previous.ranking.class_names == list(snapshot.class_names)
                and previous.meta.get("selector") == name and previous.meta.get("input", "image") == kind)
    context = {"cache_dir": store.project_dir(project_id) / "cache", "n_classes": counts.shape[1]}
    selector = _stored_selector(previous) if reusable else None
    last = previous.ranking if selector is not None else None  # the ranking the stored selector was fitted for
    size = None

    if kind == "image":
        if selector is None:
            selector = make_selector(name, options, **context)
        size = getattr(selector, "input_size", None) or settings.image_size  # contract 2
        data, errors = load_images(loader, store, project_id, [snapshot.task_ids[i] for i in usable],
                                   [snapshot.image_refs[i] for i in usable], size)
    elif kind == "text":
        texts = [task_text(snapshot.image_refs[i], snapshot.object_type) for i in usable]
        errors = {j: "no text" for j, t in enumerate(texts) if t is None}
        data = texts
    else:
        data, errors = own_vectors(settings, loader, snapshot, usable, kind, counts.shape[1])
    ok = [j for j in range(len(usable)) if j not in errors]
    for j, message in errors.items():
        skipped[snapshot.task_ids[usable[j]]] = message
    rows = [usable[j] for j in ok]
    if len(rows) < 2:
        reasons = Counter(skipped.values()).most_common(3)
        why = "; ".join(f"{n} x {reason}" for reason, n in reasons)
        raise ValueError(f"project {project_id}: {len(rows)} task(s) with a label and a usable {kind}; need at least 2 "
                         f"(skipped: {why})")
    data = [data[j] for j in ok] if isinstance(data, list) else (data[ok] if errors else data)
    counts = counts[rows]
    task_ids = [snapshot.task_ids[i] for i in rows]

    if last is None or last.task_ids != task_ids:
        last = None  # other tasks than last time (or no usable stored selector): a fresh fit
        selector = make_selector("posteriors", posteriors=data) if kind == "posteriors" else make_selector(
            name, options, **context)
    mode = "fit" if last is None else "update"
    initial = None if snapshot.initial_counts is None else np.asarray(snapshot.initial_counts)[rows]
    selector, ranking = rank(data if kind != "posteriors" else None, counts, selector=selector, rule=settings.rule,
                             task_ids=task_ids, class_names=list(snapshot.class_names), previous=last,
                             initial_counts=initial)
    meta = {
        "project": project_id,
        "selector": name,
        "input": kind,
        "selector_version": str(selector.version),
        "selector_options": options,
        "rule": settings.rule or selector.default_rule,
        "mode": mode,
        "tasks": len(task_ids),
        "annotations": int(counts.sum()),
        **({"image_size": int(size)} if size else {}),
        "skipped": {str(k): v for k, v in skipped.items()},
    }
    return selector, ranking, meta
