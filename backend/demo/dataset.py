"""The demo's data: images with noisy initial labels and a known truth, written as a Label Studio import.

Two sources:

* **digits** (default, redistributable, no download): scikit-learn's bundled 8x8 handwritten digits
  (UCI, CC BY 4.0), upscaled to PNG. A documented *simulated annotator model* gives every image a
  true label distribution:

  - a *clear* image of digit d: annotators say d with probability ``1 - slip``; the slip mass is
    spread evenly over d's look-alike digits (``LOOK_ALIKES``, e.g. 1 <-> 7, 3 <-> 8, 4 <-> 9);
  - an *ambiguous* image (a fraction ``ambiguous_fraction``) is a pixel blend ``a * x_d + (1 - a) * x_e``
    of a digit d and an image of one of its look-alikes e, with ``a`` uniform in ``blend_range``;
    annotators say d with probability a and e with probability 1 - a.

  The *initial labels* come from a sloppier first-pass labeller: with probability ``noise_rate`` it
  picks a look-alike of the true digit at random, otherwise it answers like any annotator (a draw from
  the image's true distribution). The truth of an image is the argmax of its true distribution.

* **cifar10h** (``data_dir`` pointing at the shared data; non-commercial licence, never copied into the
  repository): CIFAR-10 test images whose CIFAR-10H human label counts are the true distribution,
  initial labels drawn at temperature T as in the paper (``scoring.data``).

Everything is seeded: the same arguments give the same images, truths and initial labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image

from scoring.data import SimulationData, draw_initial_labels, load_cifar10_test_images, load_cifar10h

DIGIT_CLASSES = [str(d) for d in range(10)]

# Digits that people (and the 8x8 scans) confuse with each other; used for slips, blends and noise.
LOOK_ALIKES: dict[int, tuple[int, ...]] = {
    0: (6, 8),
    1: (7, 4),
    2: (7, 3),
    3: (8, 5, 9),
    4: (9, 1),
    5: (6, 3, 9),
    6: (5, 0, 8),
    7: (1, 2),
    8: (3, 9, 0),
    9: (4, 8, 5),
}

InitialLabelSource = Literal["annotation", "data", "prediction"]
INITIAL_MODEL_VERSION = "initial-labels"  # model_version of the initial labels when imported as predictions
CHOICES_NAME = "label"
IMAGE_NAME = "image"


@dataclass
class DemoDataset:
    """Images (N, H, W, 3) uint8 with their truth; ``data`` is what a relabelling simulation would need."""

    name: str
    images: np.ndarray
    true_distribution: np.ndarray  # (N, C)
    initial_labels: np.ndarray  # (N,) int
    class_names: list[str]
    ambiguous: np.ndarray  # (N,) bool: made ambiguous by the annotator model (digits) or by entropy (CIFAR-10H)
    source_indices: np.ndarray  # (N,) position in the source dataset, for traceability

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        for what, arr in [("true_distribution", self.true_distribution), ("initial_labels", self.initial_labels),
                          ("ambiguous", self.ambiguous), ("source_indices", self.source_indices)]:
            if len(arr) != n:
                raise ValueError(f"{what} has {len(arr)} rows for {n} images")
        # SimulationData validates the distributions and labels.
        self.data = SimulationData(
            self.true_distribution, np.eye(len(self.class_names), dtype=np.int64)[self.initial_labels],
            list(self.class_names), self.images, self.source_indices,
        )

    @property
    def n_tasks(self) -> int:
        return len(self.images)

    @property
    def true_labels(self) -> np.ndarray:
        return self.true_distribution.argmax(axis=1)

    @property
    def initial_noise_rate(self) -> float:
        return float(np.mean(self.initial_labels != self.true_labels))


def make_digits(
    n_images: int = 300,
    seed: int = 0,
    noise_rate: float = 0.15,
    ambiguous_fraction: float = 0.1,
    slip: float = 0.04,
    blend_range: tuple[float, float] = (0.55, 0.7),
    size: int = 96,
) -> DemoDataset:
    """The digits demo dataset under the simulated annotator model described in the module docstring."""
    from sklearn.datasets import load_digits

    if not 0 <= noise_rate <= 1 or not 0 <= ambiguous_fraction <= 1 or not 0 <= slip < 0.5:
        raise ValueError("noise_rate and ambiguous_fraction must lie in [0, 1], slip in [0, 0.5)")
    if not 0.5 < blend_range[0] <= blend_range[1] < 1:
        raise ValueError(f"blend_range must lie in (0.5, 1) so the blended digit stays the majority, got {blend_range}")
    digits = load_digits()
    if not 1 <= n_images <= len(digits.target):
        raise ValueError(f"n_images must lie in [1, {len(digits.target)}], got {n_images}")
    rng = np.random.default_rng(seed)
    n_classes = len(DIGIT_CLASSES)
    pixels = digits.images / 16.0  # (1797, 8, 8) ink in [0, 1]
    indices = np.sort(rng.choice(len(digits.target), n_images, replace=False))
    labels = digits.target[indices]

    true = np.zeros((n_images, n_classes))
    ink = pixels[indices].copy()
    ambiguous = rng.random(n_images) < ambiguous_fraction
    for k, d in enumerate(labels):
        alikes = LOOK_ALIKES[int(d)]
        if ambiguous[k]:
            other = int(rng.choice(alikes))
            partner = rng.choice(np.flatnonzero(digits.target == other))
            a = rng.uniform(*blend_range)
            ink[k] = a * ink[k] + (1 - a) * pixels[partner]
            true[k, d], true[k, other] = a, 1 - a
        else:
            true[k, d] = 1 - slip
            true[k, list(alikes)] += slip / len(alikes)

    first_pass = (1 - noise_rate) * true + noise_rate * _look_alike_rows(labels, n_classes)
    initial = draw_initial_labels(first_pass, 1.0, rng)
    images = np.stack([_render(x, size) for x in ink])
    return DemoDataset("digits", images, true, initial, list(DIGIT_CLASSES), ambiguous, indices)


def make_cifar10h(data_dir: str | Path, n_images: int = 300, seed: int = 0, temperature: float = 2.0,
                  size: int = 96) -> DemoDataset:
    """A seeded random subset of CIFAR-10H: human counts are the truth, initial labels drawn at temperature T."""
    full = load_cifar10h(data_dir, subset=None, temperature=1.0, seed=seed)
    if not 1 <= n_images <= full.n_tasks:
        raise ValueError(f"n_images must lie in [1, {full.n_tasks}], got {n_images}")
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(full.n_tasks, n_images, replace=False))
    true = full.true_distribution[indices]
    initial = draw_initial_labels(true, temperature, rng)
    raw = load_cifar10_test_images(Path(data_dir), indices)
    images = np.stack([np.asarray(Image.fromarray(x).resize((size, size), Image.BICUBIC)) for x in raw])
    ambiguous = full.ambiguous[indices]
    return DemoDataset("cifar10h", images, true, initial, list(full.class_names), ambiguous, indices)


def label_config(class_names: list[str]) -> str:
    """Label Studio config: one image, one single-choice question over the classes."""
    choices = "\n".join(f'    <Choice value="{_xml_escape(c)}"/>' for c in class_names)
    return (
        "<View>\n"
        f'  <Image name="{IMAGE_NAME}" value="$image"/>\n'
        f'  <Choices name="{CHOICES_NAME}" toName="{IMAGE_NAME}" choice="single" showInLine="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def choice_result(label: str) -> list[dict]:
    """The ``result`` of an annotation or prediction that picks one class."""
    return [{"from_name": CHOICES_NAME, "to_name": IMAGE_NAME, "type": "choices", "value": {"choices": [label]}}]


def image_name(k: int) -> str:
    return f"img_{k:05d}.png"


def label_studio_tasks(
    dataset: DemoDataset,
    image_url: Callable[[str], str],
    initial_label_source: InitialLabelSource = "annotation",
) -> list[dict]:
    """Label Studio import tasks: ``data.image`` plus the initial label where the connector will look for it.

    ``annotation``: one imported annotation per task (the connectors' default source); ``data``: a
    ``data.initial_label`` field; ``prediction``: a prediction under ``INITIAL_MODEL_VERSION``.
    The truth is never part of a task.
    """
    tasks = []
    for k in range(dataset.n_tasks):
        label = dataset.class_names[int(dataset.initial_labels[k])]
        task: dict = {"data": {"image": image_url(image_name(k)), "demo_id": k}}
        if initial_label_source == "annotation":
            # Label Studio stars an imported annotation as ground truth unless told otherwise; a starred
            # annotation is ignored by its task lock, so `alc connect` would PATCH every one of them
            # (400 requests, minutes on a busy machine): import them unstarred instead
            task["annotations"] = [{"result": choice_result(label), "ground_truth": False}]
        elif initial_label_source == "data":
            task["data"]["initial_label"] = label
        elif initial_label_source == "prediction":
            task["predictions"] = [{"model_version": INITIAL_MODEL_VERSION, "result": choice_result(label)}]
        else:
            raise ValueError(f"unknown initial label source {initial_label_source!r}: annotation, data or prediction")
        tasks.append(task)
    return tasks


def write_demo(
    dataset: DemoDataset,
    out_dir: str | Path,
    image_url: Callable[[str], str] | None = None,
    initial_label_source: InitialLabelSource = "annotation",
) -> Path:
    """Write ``images/*.png``, ``tasks.json`` (the import), ``label_config.xml`` and ``truth.json`` (kept aside).

    ``image_url`` maps an image file name to the URL a task carries; by default the relative path
    ``images/<name>``, for an import that uploads the files.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(dataset.images):
        Image.fromarray(img).save(out / "images" / image_name(k), optimize=True)
    url = image_url or (lambda name: f"images/{name}")
    (out / "tasks.json").write_text(json.dumps(label_studio_tasks(dataset, url, initial_label_source)))
    (out / "label_config.xml").write_text(label_config(dataset.class_names))
    (out / "truth.json").write_text(json.dumps(truth_record(dataset), indent=1))
    return out


def truth_record(dataset: DemoDataset) -> dict:
    """What the report compares against; demo_id (= position) identifies a task."""
    return {
        "dataset": dataset.name,
        "class_names": dataset.class_names,
        "true_distribution": np.round(dataset.true_distribution, 6).tolist(),
        "true_labels": dataset.true_labels.tolist(),
        "initial_labels": dataset.initial_labels.tolist(),
        "ambiguous": dataset.ambiguous.tolist(),
        "source_indices": dataset.source_indices.tolist(),
        "initial_noise_rate": dataset.initial_noise_rate,
    }


def load_truth(path: str | Path) -> dict:
    """Read truth.json back with numpy arrays."""
    record = json.loads(Path(path).read_text())
    for key in ("true_distribution", "true_labels", "initial_labels", "ambiguous", "source_indices"):
        record[key] = np.asarray(record[key])
    return record


def _look_alike_rows(labels: np.ndarray, n_classes: int) -> np.ndarray:
    rows = np.zeros((len(labels), n_classes))
    for k, d in enumerate(labels):
        alikes = list(LOOK_ALIKES[int(d)])
        rows[k, alikes] = 1.0 / len(alikes)
    return rows


def _render(ink: np.ndarray, size: int) -> np.ndarray:
    """Dark ink on white paper with a one-pixel margin, smoothly upscaled, as RGB uint8."""
    gray = Image.fromarray(np.round(255 * (1 - np.pad(ink, 1))).astype(np.uint8))
    return np.asarray(gray.resize((size, size), Image.BICUBIC).convert("RGB"))


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
