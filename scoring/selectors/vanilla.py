"""``vanilla``: a CNN trained with cross-entropy on the current labels, with augmentation.

The paper's baseline selector. ``update`` continues training the fitted network for
``update_epochs`` on the new counts instead of starting again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from scoring.augment import classifier_augment
from scoring.device import prepare_model
from scoring.models import Classifier, build_encoder
from scoring.selectors.learned import LearnedSelector, softmax_probs
from scoring.training import predict_logits, train_supervised


class VanillaSelector(LearnedSelector):
    """CNN on the noisy labels. CPU defaults: small-cnn, 15 epochs, 3 update epochs."""

    def __init__(self, n_classes: int | None = None, seed: int = 0, device: str | None = None,
                 cache_dir: str | Path | None = None, folds: int = 0, targets: str = "soft",
                 encoder: str = "small-cnn", encoder_options: dict[str, Any] | None = None,
                 epochs: int = 15, update_epochs: int = 3, lr: float = 0.05, batch_size: int = 128,
                 augment: bool = True, dropout: float = 0.0) -> None:
        super().__init__(n_classes, seed, device, cache_dir, folds, targets)
        self.encoder = encoder
        self.encoder_options = dict(encoder_options or {})
        self.epochs = int(epochs)
        self.update_epochs = int(update_epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.augment = bool(augment)
        self.dropout = float(dropout)

    def _new_network(self) -> torch.nn.Module:
        model = Classifier(build_encoder(self.encoder, **self.encoder_options), self.n_classes_, self.dropout)
        return prepare_model(model, self.device_)

    def _train(self, model: torch.nn.Module, images: np.ndarray, targets: np.ndarray, epochs: int, lr: float,
               seed: int, description: str) -> torch.nn.Module:
        augment = classifier_augment(images.shape[1]) if self.augment else None
        train_supervised(model, images, targets, epochs=epochs, lr=lr, batch_size=self.batch_size,
                         device=self.device_, augment=augment, seed=seed, description=description)
        return model

    def _train_member(self, images: np.ndarray, targets: np.ndarray, seed: int) -> torch.nn.Module:
        return self._train(self._new_network(), images, targets, self.epochs, self.lr, seed, f"{self._name()} training")

    def _refit_member(self, model: torch.nn.Module, images: np.ndarray, targets: np.ndarray, seed: int) -> torch.nn.Module:
        if self.update_epochs <= 0:
            return model
        return self._train(model, images, targets, self.update_epochs, self.lr * 0.2, seed, f"{self._name()} update")

    def _member_probs(self, model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
        return softmax_probs(predict_logits(model, images, self.device_))

    def _member_state(self, model: torch.nn.Module) -> dict[str, Any]:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def _load_member_state(self, state: dict[str, Any]) -> torch.nn.Module:
        model = self._new_network()
        model.load_state_dict(state)
        return model

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.n_classes_ = state["n_classes"]

    def _extra_state(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes_}

    def _name(self) -> str:
        return type(self).__name__.removesuffix("Selector").lower()
