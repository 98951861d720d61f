"""`alc rank labels.csv --out ranked.csv`: rank a labelled dataset outside Label Studio, most suspect label first.

labels.csv has a column naming the item (``file``, or ``id``) and a ``label`` column; several rows for one
item are several labels of it (an ``annotator`` column may say whose). What the model reads, one of:
``--images DIR`` (the files named in the ``file`` column), ``--text-column COL`` (the text in the CSV),
``--features F.npy`` (N, D) or ``--posteriors P.npy`` (N, C): rows in the order the items first appear in
labels.csv, and for probabilities the classes in sorted order (or ``--classes``).
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

TOP_IN_REPORT = 48
SNIPPET_CHARS = 280


class InputError(ValueError):
    """Bad input: reported as one line, exit code 2."""


@dataclass
class Dataset:
    ids: list[str]  # one per item, in first-appearance order
    class_names: list[str]
    counts: Any  # (N, C) label counts
    texts: list[str] | None
    id_column: str


def rank(
    labels: Annotated[Path, typer.Argument(help="CSV with an item column (file or id) and a label column; one row per label")],
    out: Annotated[Path, typer.Option("--out", help="ranked CSV to write, highest priority first")],
    images: Annotated[Optional[Path], typer.Option("--images", help="folder holding the files named in the file column")] = None,
    text_column: Annotated[Optional[str], typer.Option("--text-column", help="rank texts: the CSV column holding them")] = None,
    features: Annotated[Optional[Path], typer.Option("--features", help="your model's embeddings, .npy (N, D), rows in the CSV's item order")] = None,
    posteriors: Annotated[Optional[Path], typer.Option("--posteriors", help="your model's probabilities, .npy (N, C), rows in the CSV's item order, classes sorted")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="also write an HTML report of the top items")] = None,
    id_column: Annotated[Optional[str], typer.Option("--id-column", help="the item column (default: file, else id)")] = None,
    label_column: Annotated[str, typer.Option("--label-column", help="the label column")] = "label",
    classes: Annotated[Optional[str], typer.Option("--classes", help="comma-separated class names (default: the labels seen, sorted)")] = None,
    selector: Annotated[Optional[str], typer.Option("--selector", help="selector (default: ensemble for images, pretrained-linear for features, text for texts)")] = None,
    rule: Annotated[Optional[str], typer.Option("--rule", help="priority rule (default: the selector's own)")] = None,
    cache_dir: Annotated[Path, typer.Option("--cache-dir", help="embedding cache")] = Path(".alc/cache"),
    seed: Annotated[int, typer.Option(help="seed of the folds and the heads")] = 0,
) -> None:
    """Rank a labelled dataset by how likely each label is wrong (out-of-fold posteriors), best to re-check first."""
    started = time.perf_counter()
    try:
        sources = [s for s in (images, text_column, features, posteriors) if s is not None]
        if len(sources) != 1:
            raise InputError("give exactly one of --images, --text-column, --features, --posteriors")
        if images is not None and not images.is_dir():
            raise InputError(f"--images {images}: no such folder")
        dataset = read_labels(labels, id_column, label_column, text_column, classes)
        data, kept, skipped = read_inputs(dataset, images, features, posteriors)
        say(f"{len(dataset.ids)} items, {int(dataset.counts.sum())} labels, {len(dataset.class_names)} classes "
            f"({', '.join(dataset.class_names[:10])}{', ...' if len(dataset.class_names) > 10 else ''})")
        if skipped:
            say(f"{len(skipped)} item(s) skipped: {next(iter(skipped.values()))}" + (" (and others)" if len(skipped) > 1 else ""))
        if len(kept) < 10:
            raise InputError(f"{len(kept)} usable item(s): too few to rank (10 at least, for the out-of-fold folds)")
        result = run_pipeline(dataset, data, kept, images is not None, text_column is not None, posteriors is not None,
                              selector, rule, cache_dir, seed)
    except InputError as exc:
        typer.echo(f"error: alc rank: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(2) from None
    selector_name, ranking, probs = result
    write_ranked(out, dataset, kept, ranking, probs)
    say(f"wrote {out} ({len(kept)} items, highest priority first) in {time.perf_counter() - started:.1f} s")
    if report is not None:
        from backend.rank_report import write_report

        write_report(report, dataset, kept, ranking, probs, images=images, selector=selector_name, top=TOP_IN_REPORT)
        say(f"wrote {report}")


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def read_labels(path: Path, id_column: str | None, label_column: str, text_column: str | None,
                classes: str | None) -> Dataset:
    import numpy as np

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path} could not be read as CSV: {exc}") from None
    id_column = id_column or ("file" if "file" in columns else "id" if "id" in columns else None)
    if text_column is not None and id_column is None:
        id_column = text_column  # texts without ids: the text is the item
    for name, what in ((id_column, "item"), (label_column, "label"), (text_column, "text")):
        if what != "text" or name is not None:
            if name is None or name not in columns:
                raise InputError(f"{path} has no {what} column {name or '(file or id)'}; its columns: {', '.join(columns)}")
    if not rows:
        raise InputError(f"{path} has no rows")
    seen = sorted({r[label_column].strip() for r in rows if (r.get(label_column) or "").strip()})
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else seen
    unknown = sorted(set(seen) - set(names))
    if unknown:
        raise InputError(f"label(s) {', '.join(unknown[:5])} not among --classes ({', '.join(names)})")
    if len(names) < 2:
        raise InputError(f"{len(names)} class(es) in {label_column}: ranking needs at least two")
    index = {c: i for i, c in enumerate(names)}
    ids: dict[str, int] = {}
    texts: list[str] = []
    labelled = []
    for r in rows:
        key = (r.get(id_column) or "").strip() if id_column != text_column else (r.get(id_column) or "")
        label = (r.get(label_column) or "").strip()
        if not key or not label:
            continue
        if key not in ids:
            ids[key] = len(ids)
            if text_column is not None:
                texts.append(r.get(text_column) or "")
        labelled.append((ids[key], index[label]))
    counts = np.zeros((len(ids), len(names)))
    for item, c in labelled:
        counts[item, c] += 1
    return Dataset(list(ids), names, counts, texts if text_column is not None else None,
                   "id" if id_column == text_column else id_column)


def read_inputs(dataset: Dataset, images: Path | None, features: Path | None,
                posteriors: Path | None) -> tuple[Any, list[int], dict[int, str]]:
    """What the selector reads for the usable items, their row numbers, and {row: why skipped}."""
    import numpy as np

    n = len(dataset.ids)
    if images is not None:
        return read_images(images, dataset.ids)
    if dataset.texts is not None:
        kept = [i for i, t in enumerate(dataset.texts) if t.strip()]
        return [dataset.texts[i] for i in kept], kept, {i: "empty text" for i in range(n) if i not in set(kept)}
    path = features if features is not None else posteriors
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path} is not a numeric .npy file ({type(exc).__name__})") from None
    width = len(dataset.class_names) if posteriors is not None else None
    if array.ndim != 2 or len(array) != n or (width is not None and array.shape[1] != width):
        want = f"({n}, {width})" if width else f"({n}, D)"
        raise InputError(f"{path} has shape {array.shape}; expected {want}: one row per item in labels.csv's order")
    bad = ~np.isfinite(array).all(axis=1)
    if posteriors is not None:
        bad |= (array < 0).any(axis=1) | (array.sum(axis=1) <= 0)
    kept = [i for i in range(n) if not bad[i]]
    data = array[kept].astype(np.float64 if posteriors is not None else np.float32)
    if posteriors is not None:
        data = data / data.sum(axis=1, keepdims=True)
    return data, kept, {i: "not finite (or not probabilities)" for i in np.flatnonzero(bad)}


def read_images(folder: Path, files: list[str]) -> tuple[Any, list[int], dict[int, str]]:
    """uint8 (N, H, W, 3): at their own size when all share one, else squared to 224 px; unreadable = skipped."""
    import numpy as np
    from PIL import Image

    from scoring.training import progress_bar

    root = folder.resolve()
    pictures: dict[int, np.ndarray] = {}
    skipped: dict[int, str] = {}
    say(f"reading {len(files)} images from {folder}")
    with progress_bar("reading images", total=len(files)) as advance:
        for i, name in enumerate(files):
            path = (folder / name).resolve()
            try:
                if root not in path.parents:
                    raise ValueError("outside the --images folder")
                with Image.open(path) as img:
                    pictures[i] = np.asarray(img.convert("RGB"), dtype=np.uint8)
            except Exception as exc:  # a missing or broken file is that item's problem
                skipped[i] = f"{name}: {type(exc).__name__}: {str(exc)[:80]}"
            advance(1)
    kept = sorted(pictures)
    shapes = {pictures[i].shape for i in kept}
    if len(shapes) > 1:
        size = 224
        for i in kept:
            pictures[i] = np.asarray(Image.fromarray(pictures[i]).resize((size, size), Image.Resampling.BILINEAR))
    data = np.stack([pictures[i] for i in kept]) if kept else np.zeros((0, 1, 1, 3), np.uint8)
    return data, kept, skipped


def run_pipeline(dataset: Dataset, data: Any, kept: list[int], is_images: bool, is_text: bool, is_posteriors: bool,
                 selector: str | None, rule: str | None, cache_dir: Path, seed: int) -> tuple[str, Any, Any]:
    from scoring.pipeline import rank as rank_tasks
    from scoring.selectors import DEFAULT_FEATURE_SELECTOR, DEFAULT_IMAGE_SELECTOR, make_selector

    name = selector or ("posteriors" if is_posteriors else "text" if is_text
                        else DEFAULT_IMAGE_SELECTOR if is_images else DEFAULT_FEATURE_SELECTOR)
    try:
        model = (make_selector("posteriors", posteriors=data) if name == "posteriors"
                 else make_selector(name, seed=seed, cache_dir=cache_dir, n_classes=len(dataset.class_names)))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    say(f"ranking with {name} (out-of-fold posteriors){': embedding first, cached for next time' if is_images or is_text else ''}")
    counts = dataset.counts[kept]
    try:
        fitted, ranking = rank_tasks(None if name == "posteriors" else data, counts, selector=model, rule=rule,
                                     task_ids=kept, class_names=dataset.class_names)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    probs = fitted.oof_proba(None if name == "posteriors" else data)
    return name, ranking, probs


def write_ranked(out: Path, dataset: Dataset, kept: list[int], ranking: Any, probs: Any) -> None:
    import numpy as np

    order = np.argsort(-ranking.priority, kind="stable")
    names = dataset.class_names
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([dataset.id_column, "label", "labels", "suggested", "priority", "noisiness", "ambiguity",
                         "p_label", "p_suggested"])
        for r in order:
            item = kept[r]
            counts = ranking.counts[r]
            suggested = int(ranking.predicted[r])
            writer.writerow([dataset.ids[item], names[int(np.argmax(counts))], int(counts.sum()), names[suggested],
                             f"{ranking.priority[r]:.6g}", f"{ranking.noisiness[r]:.6g}", f"{ranking.ambiguity[r]:.6g}",
                             f"{ranking.p_label[r]:.6g}", f"{probs[r, suggested]:.6g}"])
