"""``ensemble``: the average of several selectors' posteriors.

Members make different mistakes (a Lite0 head at 224 px and one at 128 px, or a Lite2 head, err on
different images), so their average is better calibrated and more accurate than each alone.
``members`` is a list of selector names or ``{"name": ..., "options": {...}}``; ``weights``
optionally weights them. Every member gets the same context (seed, cache_dir, device, ...).

Presets:

- ``small`` (the default, and so the product's default selector for images): a Lite0 and a Lite2 head at 128 px,
  each on the mean embedding of the image and its mirror image. Measured on CIFAR-10H, 5 seeds, float32
  (docs/benchmarks/low-noise.md): all 10,000 images at T = 1, 52.9% of the initial wrong labels corrected within
  the budget against 48.0% for ``pretrained-linear``; the 5,000 subset at T = 2, 584 re-annotations to 90%
  against 617. Its four passes at 128 px cost about half of ``cpu``'s two (593 s cold for 10,000 images on
  2 float32 cores). Chosen on CIFAR's 32 px images; not measured on larger photographs.
- ``cpu``: a Lite0 head at 224 px and a Lite2 head at 192 px, both with stage features
  (docs/benchmarks/pretrained_selectors_t2.md); keeps more of each image's pixels.
- ``large``: Lite0 at 224 and 128 px plus Lite2 at 260 px; the best in float32 at T = 2, about 2-3 times
  ``cpu``'s embedding CPU.
- ``gpu``: ``large`` plus ssl-linear adapting Lite0 to the images with BYOL; runs on a CPU too, slowly; not
  measured: no GPU was available.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scoring.checks import check_probs
from scoring.selectors.base import Selector

LITE0_224 = {"name": "pretrained-linear", "options": {"encoder": "efficientnet-lite0", "image_size": 224}}
LITE0_128 = {"name": "pretrained-linear", "options": {"encoder": "efficientnet-lite0", "image_size": 128}}
LITE2_260 = {"name": "pretrained-linear",  # last-layer features only: Lite2's stage features were not measured
             "options": {"encoder": "efficientnet-lite2", "image_size": 260, "stage_features": False}}
SSL_PRETRAINED = {"name": "ssl-linear", "options": {"init": "pretrained", "byol_epochs": 20, "byol_lr": 2e-4, "image_size": 224}}
LITE2_192 = {"name": "pretrained-linear", "options": {"encoder": "efficientnet-lite2", "image_size": 192}}
LITE0_128_FLIP = {"name": "pretrained-linear", "options": {"encoder": "efficientnet-lite0", "image_size": 128, "flip": True}}
LITE2_128_FLIP = {"name": "pretrained-linear", "options": {"encoder": "efficientnet-lite2", "image_size": 128, "flip": True}}
CPU_MEMBERS: list[dict[str, Any]] = [LITE0_224, LITE2_192]  # in bf16: 10,000 images cold in minutes (README)
LARGE_MEMBERS: list[dict[str, Any]] = [LITE0_224, LITE0_128, LITE2_260]  # the best measured; Lite2 costs ~3x Lite0's CPU
GPU_MEMBERS: list[dict[str, Any]] = [*LARGE_MEMBERS, SSL_PRETRAINED]  # BYOL from ImageNet weights; not measured: no GPU
SMALL_MEMBERS: list[dict[str, Any]] = [LITE0_128_FLIP, LITE2_128_FLIP]  # the default: the best measured at T = 1 and T = 2
PRESETS = {"small": SMALL_MEMBERS, "cpu": CPU_MEMBERS, "large": LARGE_MEMBERS, "gpu": GPU_MEMBERS}


def member_specs(members: str | list[Any]) -> list[dict[str, Any]]:
    """'small' / 'cpu' / 'large' / 'gpu' presets, 'a,b' names, or a list of names / {"name", "options"} dicts -> dicts."""
    if isinstance(members, str):
        members = PRESETS.get(members) or [m.strip() for m in members.split(",") if m.strip()]
    specs = []
    for m in members:
        spec = {"name": m, "options": {}} if isinstance(m, str) else {"name": m.get("name"), "options": dict(m.get("options") or {})}
        if not spec["name"] or spec["name"] == "ensemble":
            raise ValueError(f"ensemble member {m!r} needs the name of another selector")
        specs.append(spec)
    if len(specs) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {len(specs)}")
    return specs


class EnsembleSelector(Selector):
    """Averages the posteriors of its members (rows renormalised to sum to 1)."""

    def __init__(self, members: str | list[Any] = "small", weights: list[float] | None = None,
                 n_classes: int | None = None, seed: int = 0, device: str | None = None,
                 cache_dir: str | Path | None = None, true_distribution: np.ndarray | None = None,
                 posteriors: str | Path | None = None) -> None:
        from scoring.selectors import make_selector

        self.members = member_specs(members)
        if weights is not None and (len(weights) != len(self.members) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"weights must be {len(self.members)} non-negative numbers, not all 0; got {weights}")
        self.weights = weights
        self.n_classes = n_classes
        self.seed = seed
        self.device = device
        self.cache_dir = cache_dir
        context = {"n_classes": n_classes, "seed": seed, "device": device, "cache_dir": cache_dir,
                   "true_distribution": true_distribution, "posteriors": posteriors}
        self.selectors_ = [make_selector(m["name"], m["options"], **{k: v for k, v in context.items() if v is not None})
                           for m in self.members]

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return any(s.needs_data for s in self.selectors_)

    @property
    def input_size(self) -> int | None:
        """The largest size a member asks for; members resize internally."""
        sizes = [getattr(s, "input_size", None) for s in self.selectors_]
        return max((s for s in sizes if s), default=None)

    def fit(self, data: Any, label_counts: np.ndarray) -> "EnsembleSelector":
        for s in self.selectors_:
            s.fit(data, label_counts)
        return self

    def update(self, data: Any, label_counts: np.ndarray) -> "EnsembleSelector":
        for s in self.selectors_:
            s.update(data, label_counts)
        return self

    def predict_proba(self, data: Any) -> np.ndarray:
        return self._average([s.predict_proba(data) for s in self.selectors_])

    def oof_proba(self, data: Any) -> np.ndarray:
        """The members' out-of-fold posteriors of the fitted tasks, averaged."""
        return self._average([s.oof_proba(data) for s in self.selectors_])

    def _average(self, parts: list[np.ndarray]) -> np.ndarray:
        weights = np.asarray(self.weights if self.weights is not None else [1.0] * len(self.selectors_), dtype=float)
        probs = sum(w * check_probs(p, f"member {m['name']}") for w, p, m in zip(weights / weights.sum(), parts, self.members))
        return probs / probs.sum(axis=1, keepdims=True)

    @property
    def version(self) -> str:
        return "ensemble(" + ",".join(str(s.version) for s in self.selectors_) + ")"

    def get_params(self) -> dict[str, Any]:
        return {"members": self.members, "weights": self.weights, "n_classes": self.n_classes, "seed": self.seed,
                "device": self.device, "cache_dir": self.cache_dir}

    def save(self, directory: str | Path) -> Path:
        """Its own document plus each member in ``member-<i>/`` (JSON + safetensors throughout)."""
        directory = super().save(directory)
        for i, s in enumerate(self.selectors_):
            s.save(directory / f"member-{i}")
        return directory

    @classmethod
    def load(cls, directory: str | Path, **overrides: Any) -> "EnsembleSelector":
        from scoring.persistence import load_document

        directory = Path(directory)
        document = load_document(directory)
        if document["class"] != f"{cls.__module__}:{cls.__qualname__}":
            raise ValueError(f"{directory} holds a {document['class']}, not an ensemble")
        params = {**document["params"], **overrides}
        selector = cls.__new__(cls)
        selector.members = member_specs(params["members"])
        for key in ("weights", "n_classes", "seed", "device", "cache_dir"):
            setattr(selector, key, params.get(key))
        selector.selectors_ = [Selector.load(directory / f"member-{i}", **_accepted(directory / f"member-{i}", overrides))
                               for i in range(len(selector.members))]
        return selector


def _accepted(member_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides (e.g. device) that a member's class takes."""
    from scoring.persistence import load_document

    params = load_document(member_dir)["params"]
    return {k: v for k, v in overrides.items() if k in params}
