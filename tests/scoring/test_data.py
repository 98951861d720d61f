"""CIFAR-10H loading, the paper's noise model, and a user's own arrays."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.data import (
    SimulationData,
    draw_initial_labels,
    load_arrays,
    load_cifar10h,
    paper_subset,
    temperature_scale,
)
from scoring.rules import normalised_entropy


def test_temperature_flattens_and_keeps_rows_normalised():
    p = np.array([[0.8, 0.2], [0.5, 0.5]])
    p2 = temperature_scale(p, 2.0)
    np.testing.assert_allclose(p2.sum(axis=1), 1)
    assert p2[0, 0] < 0.8
    np.testing.assert_allclose(p2[1], [0.5, 0.5])
    np.testing.assert_allclose(temperature_scale(p, 1.0), p)
    with pytest.raises(ValueError, match="positive"):
        temperature_scale(p, 0)


def test_noise_rate_on_all_of_cifar10h_matches_the_paper(data_dir):
    """The data README measured 13.1% expected noise at T=2 and 28.4% at T=10 on all 10k images."""
    counts = np.load(data_dir / "cifar10h" / "cifar10h-counts.npy").astype(float)
    probs = counts / counts.sum(axis=1, keepdims=True)
    truth = probs.argmax(axis=1)
    for temperature, expected in ((2.0, 0.131), (10.0, 0.284)):
        labels = draw_initial_labels(probs, temperature, np.random.default_rng(0))
        assert abs(np.mean(labels != truth) - expected) < 0.01


def test_paper_subset_keeps_every_ambiguous_image(data_dir):
    data = load_cifar10h(data_dir, subset=5000, temperature=2.0, seed=0)
    counts = np.load(data_dir / "cifar10h" / "cifar10h-counts.npy").astype(float)
    probs = counts / counts.sum(axis=1, keepdims=True)
    ambiguous = np.flatnonzero(normalised_entropy(probs) > 0.3)
    assert data.n_tasks == 5000 and len(np.unique(data.indices)) == 5000
    assert np.isin(ambiguous, data.indices).all()
    assert 0.13 < data.initial_noise_rate < 0.17  # the paper's ~15% setting
    again = load_cifar10h(data_dir, subset=5000, temperature=2.0, seed=0)
    np.testing.assert_array_equal(again.initial_counts, data.initial_counts)


def test_images_are_cifar_test_images_in_cifar10h_order(data_dir, tiny300):
    data = load_cifar10h(data_dir, subset=None, temperature=2.0, seed=0, with_images=True)
    assert data.images.shape == (10000, 32, 32, 3) and data.images.dtype == np.uint8
    # JPEG vs exact pixels: about 6/255 apart on average, far less than between different images
    diff = np.abs(data.images[:300].astype(float) - tiny300["images"].astype(float)).mean(axis=(1, 2, 3))
    shuffled = np.abs(data.images[1:301].astype(float) - tiny300["images"].astype(float)).mean(axis=(1, 2, 3))
    assert diff.mean() < 10 and shuffled.mean() > 30


def test_subset_smaller_than_the_ambiguous_pool():
    probs = np.tile([[0.5, 0.5]], (10, 1))
    idx = paper_subset(probs, 4, np.random.default_rng(0))
    assert len(idx) == 4 and len(set(idx)) == 4


def test_missing_data_dir_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar10h-counts.npy"):
        load_cifar10h(tmp_path)


def test_user_arrays(tmp_path):
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    np.save(tmp_path / "truth.npy", probs)
    np.save(tmp_path / "labels.npy", np.array([1, 1, 0]))
    np.save(tmp_path / "counts.npy", np.array([[0, 2], [1, 0], [1, 1]]))
    data = load_arrays(tmp_path / "truth.npy", initial_labels=tmp_path / "labels.npy")
    np.testing.assert_array_equal(data.initial_counts, [[0, 1], [0, 1], [1, 0]])
    assert data.initial_noise_rate == pytest.approx(1 / 3)
    data = load_arrays(tmp_path / "truth.npy", initial_counts=tmp_path / "counts.npy")
    assert data.initial_counts.sum() == 5
    with pytest.raises(ValueError, match="exactly one"):
        load_arrays(tmp_path / "truth.npy")
    np.save(tmp_path / "bad.npy", np.array([0, 5, 1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_arrays(tmp_path / "truth.npy", initial_labels=tmp_path / "bad.npy")
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_arrays(tmp_path / "nothere.npy", initial_labels=tmp_path / "labels.npy")


def test_simulation_data_validates_shapes():
    with pytest.raises(ValueError, match="shape"):
        SimulationData(np.array([[0.5, 0.5]]), np.array([[1, 0, 0]]), ["a", "b"])
    with pytest.raises(ValueError, match="class names"):
        SimulationData(np.array([[0.5, 0.5]]), np.array([[1, 0]]), ["a"])
