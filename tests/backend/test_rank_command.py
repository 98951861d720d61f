"""`alc rank`: a labelled dataset outside Label Studio -> ranked.csv (and a report); bad input is one line."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from backend.cli import app

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
runner = CliRunner()


def rows_of(path):
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def image_dataset(tmp_path, tiny300):
    """60 PNGs, their labels (every fifth flipped), a second label on item 1 and one broken file."""
    folder = tmp_path / "images"
    folder.mkdir()
    truth = tiny300["cifar10h_probs"][:60].argmax(axis=1)
    lines = ["file,label,annotator"]
    for i, image in enumerate(tiny300["images"][:60]):
        Image.fromarray(image).save(folder / f"{i}.png")
        label = CLASSES[(truth[i] + 1) % 10] if i % 5 == 0 else CLASSES[truth[i]]
        lines.append(f"{i}.png,{label},a")
    lines.append(f"1.png,{CLASSES[truth[1]]},b")
    (folder / "60.png").write_bytes(b"not a png")
    lines.append("60.png,cat,a")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path, truth


def test_rank_images_writes_every_item_sorted_by_priority_and_a_report(image_dataset):
    tmp, _ = image_dataset
    result = runner.invoke(app, ["rank", str(tmp / "labels.csv"), "--images", str(tmp / "images"), "--out",
                                 str(tmp / "ranked.csv"), "--report", str(tmp / "report.html"), "--selector", "linear",
                                 "--cache-dir", str(tmp / "cache")])
    assert result.exit_code == 0, result.output
    assert "1 item(s) skipped: 60.png" in result.output
    rows = rows_of(tmp / "ranked.csv")
    assert len(rows) == 60 and set(rows[0]) >= {"file", "label", "suggested", "priority", "noisiness", "ambiguity", "p_label"}
    priorities = [float(r["priority"]) for r in rows]
    assert priorities == sorted(priorities, reverse=True)
    assert next(r for r in rows if r["file"] == "1.png")["labels"] == "2"
    assert all(0 <= float(r["p_label"]) <= 1 for r in rows)
    page = (tmp / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 49  # the scatter and 48 thumbnails
    assert "model-based" in page


def test_rank_images_defaults_to_the_small_ensemble_and_finds_flipped_labels(image_dataset):
    """No --selector: the product's default for images (two Lite heads at 128 px with mirror images)."""
    tmp, _ = image_dataset
    result = runner.invoke(app, ["rank", str(tmp / "labels.csv"), "--images", str(tmp / "images"), "--out",
                                 str(tmp / "ranked.csv"), "--cache-dir", str(tmp / "cache")])
    assert result.exit_code == 0, result.output
    assert "ranking with ensemble" in result.output
    rows = rows_of(tmp / "ranked.csv")
    assert len(rows) == 60
    flipped = {f"{i}.png" for i in range(0, 60, 5)}  # every fifth label was made wrong
    top = {r["file"] for r in rows[:12]}
    assert len(top & flipped) >= 4  # chance: 12 x 12/60 = 2.4
    assert len(list((tmp / "cache").rglob("*"))) > 0  # the embeddings were cached for the next run


def test_rank_features_and_posteriors_in_the_csv_order(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    labels = y.copy()
    labels[:6] = (y[:6] + 1) % 3
    names = ["b", "a", "c"]  # classes are sorted: a, b, c
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"item{i},{names[c]}\n" for i, c in enumerate(labels)))
    order = {"a": 0, "b": 1, "c": 2}  # the column of each class: sorted names
    features = np.eye(3)[y] * 4 + rng.normal(0, 0.5, (90, 3))
    np.save(tmp_path / "f.npy", features)
    result = runner.invoke(app, ["rank", str(tmp_path / "labels.csv"), "--features", str(tmp_path / "f.npy"),
                                 "--out", str(tmp_path / "ranked.csv"), "--selector", "linear"])
    assert result.exit_code == 0, result.output
    top = {r["id"] for r in rows_of(tmp_path / "ranked.csv")[:6]}
    assert top == {f"item{i}" for i in range(6)}
    probs = np.full((90, 3), 0.05)
    probs[np.arange(90), [order[names[c]] for c in y]] = 0.9
    np.save(tmp_path / "p.npy", probs)
    result = runner.invoke(app, ["rank", str(tmp_path / "labels.csv"), "--posteriors", str(tmp_path / "p.npy"),
                                 "--out", str(tmp_path / "ranked2.csv")])
    assert result.exit_code == 0, result.output
    rows = rows_of(tmp_path / "ranked2.csv")
    assert {r["id"] for r in rows[:6]} == {f"item{i}" for i in range(6)}
    assert float(rows[-1]["p_label"]) == pytest.approx(0.9 / 1.0)


def test_rank_texts_from_a_column(tmp_path):
    words = {"sport": ["goal", "match", "team", "league"], "food": ["bake", "flour", "sauce", "oven"]}
    rng = np.random.default_rng(0)
    lines = ["text,label"]
    for i in range(40):
        topic = "sport" if i % 2 else "food"
        label = ("food" if topic == "sport" else "sport") if i < 4 else topic
        lines.append(f"\"{' '.join(rng.choice(words[topic], 6))} {i}\",{label}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["rank", str(tmp_path / "labels.csv"), "--text-column", "text", "--out",
                                 str(tmp_path / "ranked.csv"), "--report", str(tmp_path / "r.html"),
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    rows = rows_of(tmp_path / "ranked.csv")
    assert len(rows) == 40 and "id" in rows[0]
    assert sum(r["id"].endswith((" 0", " 1", " 2", " 3")) for r in rows[:4]) >= 3
    assert 'class="snip"' in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--images", "{tmp}/nowhere"], "no such folder"),
    (["--images", "{tmp}/images", "--label-column", "class"], "no label column class"),
    (["--images", "{tmp}/images", "--classes", "cat,dog"], "not among --classes"),
    ([], "exactly one of"),
    (["--features", "{tmp}/labels.csv"], "not a numeric .npy"),
])
def test_bad_input_is_one_line_and_exit_2(image_dataset, args, message):
    tmp, _ = image_dataset
    args = [a.format(tmp=tmp) for a in args]
    result = runner.invoke(app, ["rank", str(tmp / "labels.csv"), "--out", str(tmp / "o.csv"), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp / "o.csv").exists()
