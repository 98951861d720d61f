"""What one demo run is asked to do (`alc demo`'s options), without importing anything heavy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Order = Literal["priority", "random"]


@dataclass
class DemoConfig:
    n_images: int = 400
    seed: int = 0
    noise_rate: float = 0.15
    data_dir: Path | None = None  # CIFAR-10H instead of digits
    temperature: float = 2.0  # CIFAR-10H initial-label temperature
    budget: int = 100
    order: Order = "priority"
    selector: str = "pretrained-linear"  # the model behind the priority order
    selector_options: dict | None = None  # None: the linear selector at the digits' native 8x8 (16x16 for CIFAR)
    window: int = 20
    retrain_after_annotations: int = 10
    retrain_after_seconds: float = 30.0
    max_annotations_per_task: int = 5
    annotators: int = 0
    pace: float = 2.0
    idle_timeout: float = 60.0  # done when nothing was served this long and the backend's queues were idle
    first_model_timeout: float = 300.0
    title: str | None = None

    def backend_env(self) -> dict[str, str]:
        """The backend's settings (backend.settings names) for this run: the order is the selector choice."""
        env = {
            "ALC_SELECTOR": self.selector if self.order == "priority" else "random",
            "ALC_BUDGET": str(self.budget),
            "ALC_WINDOW": str(self.window),
            "ALC_RETRAIN_AFTER_ANNOTATIONS": str(self.retrain_after_annotations),
            "ALC_RETRAIN_AFTER_SECONDS": str(self.retrain_after_seconds),
            "ALC_MAX_ANNOTATIONS_PER_TASK": str(self.max_annotations_per_task),
            "ALC_INITIAL_LABEL_SOURCE": "annotations",
        }
        options = self.selector_options
        if options is None and self.selector == "linear":
            options = {"folds": 2, "image_size": 16 if self.data_dir else 8}
        env["ALC_SELECTOR_OPTIONS"] = json.dumps(options or {} if self.order == "priority" else {})
        return env
