"""``coteaching``: two CNNs, each updated on the samples its peer finds small-loss (Han et al. 2018).

The fraction of large-loss samples left out (the forget rate) is 0 during ``warmup_epochs``, then
ramps linearly over ``ramp_epochs`` to the noise rate: ``noise_rate`` when given, else estimated
with cleanlab (``estimate_joint``) from the two warmed-up networks' averaged posteriors on the
current majority labels. Posteriors are the two networks' average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scoring.augment import classifier_augment, to_tensor
from scoring.device import autocast
from scoring.selectors.learned import softmax_probs
from scoring.selectors.vanilla import VanillaSelector
from scoring.training import batches, make_optimizer, predict_logits, progress_bar, soft_cross_entropy

MAX_NOISE_RATE = 0.5


@dataclass
class Pair:
    a: torch.nn.Module
    b: torch.nn.Module
    noise_rate: float


def forget_rate(epoch: int, noise_rate: float, warmup_epochs: int, ramp_epochs: int) -> float:
    """0 for the first ``warmup_epochs``, then linear to ``noise_rate`` over ``ramp_epochs`` (epoch counts from 0)."""
    if epoch < warmup_epochs:
        return 0.0
    if ramp_epochs <= 0:
        return noise_rate
    return noise_rate * min(1.0, (epoch - warmup_epochs + 1) / ramp_epochs)


def small_loss_split(loss_a: torch.Tensor, loss_b: torch.Tensor, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices that train (a, b): the ``1 - rate`` smallest-loss samples *of the peer* (b's for a, a's for b)."""
    n_keep = max(1, math.ceil((1.0 - rate) * len(loss_a)))
    keep_by_a = torch.argsort(loss_a)[:n_keep]
    keep_by_b = torch.argsort(loss_b)[:n_keep]
    return keep_by_b, keep_by_a


def estimate_noise_rate(labels: np.ndarray, probs: np.ndarray) -> float:
    """1 - trace of cleanlab's estimated joint of (given label, true label), clipped to [0, 0.5]."""
    from cleanlab.count import estimate_joint

    present = np.unique(labels)
    if len(present) < 2:
        return 0.0
    # cleanlab needs every class in pred_probs' columns to occur among the labels.
    sub = probs[:, present] / probs[:, present].sum(axis=1, keepdims=True)
    remap = np.searchsorted(present, labels)
    joint = estimate_joint(remap, sub)
    return float(np.clip(1.0 - np.trace(joint), 0.0, MAX_NOISE_RATE))


class CoTeachingSelector(VanillaSelector):
    """Co-teaching pair of CNNs; ``noise_rate`` None = estimate it with cleanlab after the warm-up."""

    def __init__(self, n_classes: int | None = None, seed: int = 0, device: str | None = None,
                 cache_dir: str | Path | None = None, folds: int = 0, targets: str = "soft",
                 encoder: str = "small-cnn", encoder_options: dict[str, Any] | None = None,
                 epochs: int = 15, update_epochs: int = 3, lr: float = 0.05, batch_size: int = 128,
                 augment: bool = True, noise_rate: float | None = None, warmup_epochs: int = 3,
                 ramp_epochs: int = 5) -> None:
        super().__init__(n_classes, seed, device, cache_dir, folds, targets, encoder, encoder_options,
                         epochs, update_epochs, lr, batch_size, augment)
        if noise_rate is not None and not 0.0 <= noise_rate <= MAX_NOISE_RATE:
            raise ValueError(f"noise_rate must be in [0, {MAX_NOISE_RATE}], got {noise_rate}")
        self.noise_rate = noise_rate
        self.warmup_epochs = int(warmup_epochs)
        self.ramp_epochs = int(ramp_epochs)

    def _train_member(self, images: np.ndarray, targets: np.ndarray, seed: int) -> Pair:
        pair = Pair(self._new_network(), self._new_network(), self.noise_rate if self.noise_rate is not None else 0.0)
        self._train_pair(pair, images, targets, range(self.epochs), self.lr, seed, "coteaching training")
        return pair

    def _refit_member(self, pair: Pair, images: np.ndarray, targets: np.ndarray, seed: int) -> Pair:
        if self.update_epochs <= 0:
            return pair
        if self.noise_rate is None:  # fewer labels are wrong after re-annotation: estimate again
            pair.noise_rate = estimate_noise_rate(targets.argmax(axis=1), self._pair_probs(pair, images))
        epochs = range(self.warmup_epochs + self.ramp_epochs, self.warmup_epochs + self.ramp_epochs + self.update_epochs)
        self._train_pair(pair, images, targets, epochs, self.lr * 0.2, seed, "coteaching update")
        return pair

    def _train_pair(self, pair: Pair, images: np.ndarray, targets: np.ndarray, epochs: range, lr: float,
                    seed: int, description: str) -> None:
        device = self.device_
        x_all, y_all = to_tensor(images, device), torch.from_numpy(targets).to(device)
        augment = classifier_augment(images.shape[1]) if self.augment else None
        opt_a = make_optimizer(pair.a.parameters(), lr)
        opt_b = make_optimizer(pair.b.parameters(), lr)
        n_steps = max(1, len(epochs) * len(batches(len(images), self.batch_size, torch.Generator().manual_seed(0))))
        sched_a = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, n_steps)
        sched_b = torch.optim.lr_scheduler.CosineAnnealingLR(opt_b, n_steps)
        generator = torch.Generator().manual_seed(seed)
        self.forget_rates_ = []
        with progress_bar(description, total=len(epochs)) as advance:
            for epoch in epochs:
                if epoch == self.warmup_epochs and self.noise_rate is None:
                    pair.noise_rate = estimate_noise_rate(targets.argmax(axis=1), self._pair_probs(pair, images))
                rate = forget_rate(epoch, pair.noise_rate, self.warmup_epochs, self.ramp_epochs)
                self.forget_rates_.append(rate)
                pair.a.train()
                pair.b.train()
                for idx in batches(len(images), self.batch_size, generator):
                    x, y = x_all[idx], y_all[idx]
                    if augment is not None:
                        x = augment(x)
                    with autocast(device):
                        loss_a = soft_cross_entropy(pair.a(x), y, reduction="none")
                        loss_b = soft_cross_entropy(pair.b(x), y, reduction="none")
                    keep_a, keep_b = small_loss_split(loss_a.detach(), loss_b.detach(), rate)
                    for opt, loss, keep, sched in ((opt_a, loss_a, keep_a, sched_a), (opt_b, loss_b, keep_b, sched_b)):
                        opt.zero_grad(set_to_none=True)
                        loss[keep].mean().backward()
                        opt.step()
                        sched.step()
                advance(1)

    def _pair_probs(self, pair: Pair, images: np.ndarray) -> np.ndarray:
        probs_a = softmax_probs(predict_logits(pair.a, images, self.device_))
        probs_b = softmax_probs(predict_logits(pair.b, images, self.device_))
        return (probs_a + probs_b) / 2.0

    def _member_probs(self, pair: Pair, images: np.ndarray) -> np.ndarray:
        return self._pair_probs(pair, images)

    def _member_state(self, pair: Pair) -> dict[str, Any]:
        return {"a": super()._member_state(pair.a), "b": super()._member_state(pair.b), "noise_rate": pair.noise_rate}

    def _load_member_state(self, state: dict[str, Any]) -> Pair:
        return Pair(super()._load_member_state(state["a"]), super()._load_member_state(state["b"]), state["noise_rate"])
