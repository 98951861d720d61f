"""The demo dataset: the simulated annotator model, the seeded noise, and the Label Studio import it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image
from sklearn.datasets import load_digits

from backend.demo.dataset import (
    DIGIT_CLASSES,
    INITIAL_MODEL_VERSION,
    LOOK_ALIKES,
    label_config,
    label_studio_tasks,
    load_truth,
    make_cifar10h,
    make_digits,
    write_demo,
)


@pytest.fixture(scope="module")
def digits():
    return make_digits(n_images=400, seed=3, noise_rate=0.2, ambiguous_fraction=0.15, size=64)


def test_truth_follows_the_source_digit_and_the_annotator_model(digits):
    source = load_digits().target[digits.source_indices]
    assert np.array_equal(digits.true_labels, source)
    assert np.allclose(digits.true_distribution.sum(axis=1), 1)
    clear = ~digits.ambiguous
    assert np.allclose(digits.true_distribution[clear].max(axis=1), 0.96)
    for row, d in zip(digits.true_distribution, source):
        support = set(np.flatnonzero(row))
        assert d in support and support - {d} <= set(LOOK_ALIKES[int(d)])
    blends = digits.true_distribution[digits.ambiguous]
    assert np.all((blends.max(axis=1) >= 0.55) & (blends.max(axis=1) <= 0.7))
    assert np.all((blends > 0).sum(axis=1) == 2)
    assert 0.08 < digits.ambiguous.mean() < 0.22


def test_ambiguous_images_are_blends_and_clear_ones_are_the_source(digits):
    raw = load_digits().images[digits.source_indices]
    again = make_digits(n_images=400, seed=3, noise_rate=0.2, ambiguous_fraction=0.0, size=64)
    assert np.array_equal(again.source_indices, digits.source_indices)
    # With no ambiguity the images are the plain digits; with it, exactly the ambiguous ones change.
    differs = np.abs(digits.images.astype(int) - again.images.astype(int)).max(axis=(1, 2, 3)) > 0
    assert np.array_equal(differs, digits.ambiguous)
    # Dark ink on white: a rendered image is dark where the 8x8 scan has ink.
    small = np.asarray(Image.fromarray(again.images[0]).convert("L").resize((10, 10), Image.BOX))[1:-1, 1:-1]
    assert np.corrcoef(small.ravel(), -raw[0].ravel())[0, 1] > 0.8


def test_initial_noise_matches_the_documented_model(digits):
    # Expected error of the first-pass labeller: noise_rate + (1 - noise_rate) * (1 - p_true).
    p_true = digits.true_distribution.max(axis=1)
    expected = np.mean(0.2 + 0.8 * (1 - p_true))
    assert abs(digits.initial_noise_rate - expected) < 0.05
    wrong = digits.initial_labels != digits.true_labels
    for label, truth in zip(digits.initial_labels[wrong], digits.true_labels[wrong]):
        assert label in LOOK_ALIKES[int(truth)]


def test_seeded_and_noise_rate_controls_the_noise():
    a = make_digits(n_images=200, seed=1, size=32)
    b = make_digits(n_images=200, seed=1, size=32)
    c = make_digits(n_images=200, seed=2, size=32)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.initial_labels, b.initial_labels)
    assert not np.array_equal(a.source_indices, c.source_indices)
    clean = make_digits(n_images=200, seed=1, noise_rate=0.0, ambiguous_fraction=0.0, slip=0.0, size=32)
    assert clean.initial_noise_rate == 0.0
    noisy = make_digits(n_images=200, seed=1, noise_rate=0.6, size=32)
    assert noisy.initial_noise_rate > 0.45


@pytest.mark.parametrize(
    "kwargs",
    [{"n_images": 0}, {"n_images": 5000}, {"noise_rate": 1.5}, {"ambiguous_fraction": -0.1},
     {"slip": 0.6}, {"blend_range": (0.4, 0.6)}],
)
def test_bad_arguments_are_refused_clearly(kwargs):
    with pytest.raises(ValueError):
        make_digits(**kwargs)


def test_write_demo_gives_a_valid_label_studio_import_without_the_truth(tmp_path, digits):
    out = write_demo(digits, tmp_path / "demo", image_url=lambda name: f"/data/local-files/?d=demo/{name}")
    tasks = json.loads((out / "tasks.json").read_text())
    config = (out / "label_config.xml").read_text()
    interface = LabelInterface(config)
    assert interface.get_control("label").labels == DIGIT_CLASSES
    assert len(tasks) == digits.n_tasks
    for k, task in enumerate(tasks[:50]):
        assert task["data"]["demo_id"] == k
        assert task["data"]["image"] == f"/data/local-files/?d=demo/img_{k:05d}.png"
        assert interface.validate_annotation(task["annotations"][0])
        [choice] = task["annotations"][0]["result"][0]["value"]["choices"]
        assert choice == DIGIT_CLASSES[digits.initial_labels[k]]
        assert task["annotations"][0]["ground_truth"] is False  # unstarred: connect has nothing to un-star
        png = Image.open(out / "images" / f"img_{k:05d}.png")
        assert png.size == (64, 64) and png.mode == "RGB"
        assert np.array_equal(np.asarray(png), digits.images[k])
    assert "true" not in (out / "tasks.json").read_text()
    truth = load_truth(out / "truth.json")
    assert np.array_equal(truth["true_labels"], digits.true_labels)
    assert np.array_equal(truth["initial_labels"], digits.initial_labels)
    assert truth["initial_noise_rate"] == pytest.approx(digits.initial_noise_rate)


def test_other_initial_label_sources(digits):
    as_data = label_studio_tasks(digits, str, "data")
    as_pred = label_studio_tasks(digits, str, "prediction")
    first = DIGIT_CLASSES[digits.initial_labels[0]]
    assert as_data[0]["data"]["initial_label"] == first and "annotations" not in as_data[0]
    assert as_pred[0]["predictions"][0]["model_version"] == INITIAL_MODEL_VERSION
    assert as_pred[0]["predictions"][0]["result"][0]["value"]["choices"] == [first]
    with pytest.raises(ValueError, match="initial label source"):
        label_studio_tasks(digits, str, "nowhere")


def test_label_config_escapes_class_names():
    interface = LabelInterface(label_config(["cat & dog", 'say "hi"']))
    assert interface.get_control("label").labels == ["cat & dog", 'say "hi"']


def test_cifar10h_counts_are_the_truth_and_temperature_adds_noise(data_dir):
    counts = np.load(data_dir / "cifar10h" / "cifar10h-counts.npy")
    mild = make_cifar10h(data_dir, n_images=60, seed=0, temperature=1.0, size=48)
    hot = make_cifar10h(data_dir, n_images=60, seed=0, temperature=50.0, size=48)
    assert np.array_equal(mild.source_indices, hot.source_indices)
    rows = counts[mild.source_indices]
    assert np.allclose(mild.true_distribution, rows / rows.sum(axis=1, keepdims=True))
    assert mild.images.shape == (60, 48, 48, 3) and mild.class_names[0] == "airplane"
    assert hot.initial_noise_rate > mild.initial_noise_rate + 0.2
