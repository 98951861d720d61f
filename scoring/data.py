"""Datasets for the relabelling simulation: CIFAR-10H (the paper's benchmark) and any user's arrays.

A simulation needs the true label distribution of every task (N, C), an initial (possibly wrong)
label per task, and, for learned selectors, the images (N, H, W, 3) uint8.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoring.checks import check_counts, check_probs
from scoring.rules import normalised_entropy

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
AMBIGUITY_THRESHOLD = 0.3  # normalised entropy of the true distribution above which an image is ambiguous
DEFAULT_DATA_DIR = Path("../shared/data")


@dataclass
class SimulationData:
    """Everything a simulation run needs, indexed by task."""

    true_distribution: np.ndarray  # (N, C) rows sum to 1
    initial_counts: np.ndarray  # (N, C) non-negative ints, at least one label per row
    class_names: list[str]
    images: np.ndarray | None = None  # (N, H, W, 3) uint8, only for learned selectors
    indices: np.ndarray | None = None  # positions in the source dataset, for traceability

    def __post_init__(self) -> None:
        self.true_distribution = check_probs(self.true_distribution, "true_distribution")
        self.initial_counts = check_counts(self.initial_counts).astype(np.int64)
        if self.initial_counts.shape != self.true_distribution.shape:
            raise ValueError(
                f"initial counts have shape {self.initial_counts.shape} but the true distribution has "
                f"shape {self.true_distribution.shape}"
            )
        if len(self.class_names) != self.n_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.n_classes} classes")
        if self.images is not None and len(self.images) != self.n_tasks:
            raise ValueError(f"{len(self.images)} images for {self.n_tasks} tasks")

    @property
    def n_tasks(self) -> int:
        return self.true_distribution.shape[0]

    @property
    def n_classes(self) -> int:
        return self.true_distribution.shape[1]

    @property
    def true_labels(self) -> np.ndarray:
        return self.true_distribution.argmax(axis=1)

    @property
    def ambiguous(self) -> np.ndarray:
        """Tasks whose true label distribution has normalised entropy above AMBIGUITY_THRESHOLD."""
        return normalised_entropy(self.true_distribution) > AMBIGUITY_THRESHOLD

    @property
    def initial_noise_rate(self) -> float:
        """Fraction of tasks whose initial majority label differs from the true label."""
        return float(np.mean(self.initial_counts.argmax(axis=1) != self.true_labels))

    def budget_for(self, factor: float) -> int:
        """Re-annotations in a budget of ``factor`` per initially wrong label (the simulation's --budget-factor)."""
        return int(round(factor * self.n_tasks * self.initial_noise_rate))


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """--data-dir, else $ALC_DATA_DIR, else ../shared/data."""
    return Path(data_dir or os.environ.get("ALC_DATA_DIR") or DEFAULT_DATA_DIR)


def temperature_scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """p_T proportional to p^(1/T): T > 1 flattens the distribution, so initial labels get noisier."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scaled = np.power(probs, 1.0 / temperature)
    return scaled / scaled.sum(axis=1, keepdims=True)


def draw_initial_labels(probs: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """One label per task drawn from p^(1/T) renormalised (the paper's noise model)."""
    cdf = np.cumsum(temperature_scale(probs, temperature), axis=1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return (u > cdf).sum(axis=1)


def paper_subset(probs: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The reference implementation's subset: every ambiguous image plus a seeded random rest, sorted."""
    n = probs.shape[0]
    if size >= n:
        return np.arange(n)
    ambiguous = np.flatnonzero(normalised_entropy(probs) > AMBIGUITY_THRESHOLD)
    if ambiguous.size >= size:
        return np.sort(rng.choice(ambiguous, size, replace=False))
    rest = np.setdiff1d(np.arange(n), ambiguous)
    extra = rng.choice(rest, size - ambiguous.size, replace=False)
    return np.sort(np.concatenate([ambiguous, extra]))


def load_cifar10_test_images(data_dir: Path, indices: np.ndarray) -> np.ndarray:
    """Decode the chosen CIFAR-10 test images (JPEG, CIFAR-10H order) from cifar10_test_jpeg.zip."""
    from PIL import Image

    path = data_dir / "cifar10_test_jpeg.zip"
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 test images not found: {path}")
    out = np.empty((len(indices), 32, 32, 3), dtype=np.uint8)
    with zipfile.ZipFile(path) as zf:
        for k, idx in enumerate(indices):
            with Image.open(io.BytesIO(zf.read(f"{int(idx):05d}.jpg"))) as im:
                out[k] = np.asarray(im.convert("RGB"))
    return out


def load_cifar10h(
    data_dir: str | Path | None = None,
    subset: int | None = 5000,
    temperature: float = 2.0,
    seed: int = 0,
    with_images: bool = False,
) -> SimulationData:
    """CIFAR-10H as in the paper: human label counts as the truth, initial labels drawn at temperature T.

    ``seed`` fixes the subset and the initial labels, so every selector and simulation seed cleans
    the same noisy dataset. T = 2 gives about 15% noise on the 5,000 subset, T = 10 about 30%.
    """
    root = resolve_data_dir(data_dir)
    counts_path = root / "cifar10h" / "cifar10h-counts.npy"
    if not counts_path.is_file():
        raise FileNotFoundError(f"CIFAR-10H counts not found: {counts_path} (set --data-dir or ALC_DATA_DIR)")
    counts = np.load(counts_path).astype(float)
    probs = counts / counts.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    indices = paper_subset(probs, subset or len(probs), rng)
    probs = probs[indices]
    labels = draw_initial_labels(probs, temperature, rng)
    initial = np.eye(probs.shape[1], dtype=np.int64)[labels]
    images = load_cifar10_test_images(root, indices) if with_images else None
    return SimulationData(probs, initial, list(CIFAR10_CLASSES), images, indices)


def load_arrays(
    true_dist: str | Path,
    initial_labels: str | Path | None = None,
    initial_counts: str | Path | None = None,
    images: str | Path | None = None,
    class_names: list[str] | None = None,
) -> SimulationData:
    """A user's own data: (N, C) true distributions (.npy) and initial labels (N,) or counts (N, C)."""
    probs = _load_npy(true_dist, "true distribution")
    if (initial_labels is None) == (initial_counts is None):
        raise ValueError("give exactly one of initial labels (N,) or initial counts (N, C)")
    if initial_labels is not None:
        labels = _load_npy(initial_labels, "initial labels")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"initial labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        if labels.min() < 0 or labels.max() >= probs.shape[1]:
            raise ValueError(f"initial labels must lie in [0, {probs.shape[1] - 1}]")
        counts = np.eye(probs.shape[1], dtype=np.int64)[labels]
    else:
        counts = _load_npy(initial_counts, "initial counts")
    imgs = _load_npy(images, "images") if images is not None else None
    names = class_names or [str(c) for c in range(probs.shape[1])]
    return SimulationData(probs, counts, names, imgs)


def _load_npy(path: str | Path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return np.load(path, allow_pickle=False)
