"""Shared training pieces: progress bars, targets from label counts, the supervised epoch loop.

Targets: by default the *normalised label counts* (a soft target; equal to the one-hot majority
when the votes agree, and a split target on a tie, which a hard majority would break arbitrarily).
``targets="majority"`` trains on the one-hot majority label instead.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scoring.augment import to_tensor
from scoring.device import autocast
from scoring.progress import progress

TARGETS = ("soft", "majority")


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar on stderr; yields ``advance(n)``. Nests under a caller's own live display.

    When stderr is not a terminal (logs and CI) it tells the same progress in plain timestamped lines
    (scoring.progress), every tenth of the work or 10 seconds.
    """
    with progress(description, total) as advance:
        yield advance


def count_targets(label_counts: np.ndarray, kind: str = "soft") -> np.ndarray:
    """(N, C) float32 training targets from label counts: normalised counts, or one-hot majority."""
    counts = np.asarray(label_counts, dtype=np.float64)
    if counts.ndim != 2 or (counts < 0).any() or (counts.sum(axis=1) <= 0).any():
        raise ValueError("label counts must be (N, C), non-negative, with at least one label per row")
    if kind == "soft":
        return (counts / counts.sum(axis=1, keepdims=True)).astype(np.float32)
    if kind == "majority":
        return np.eye(counts.shape[1], dtype=np.float32)[counts.argmax(axis=1)]
    raise ValueError(f"targets must be one of {TARGETS}, got {kind!r}")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0,
                       reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against a probability target, optionally smoothed towards uniform."""
    if smoothing:
        targets = targets * (1.0 - smoothing) + smoothing / targets.shape[1]
    loss = -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return loss.mean() if reduction == "mean" else loss


def calibrated_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.1, penalty: float = 0.3,
                    alpha: float = 10.0) -> torch.Tensor:
    """The paper's calibrated head loss: smoothed soft cross-entropy + penalty * mean((alpha tanh(z / alpha))^2).

    The tanh-clipped logit penalty (BYOL supplementary C.1) keeps the logits, and so the posteriors'
    confidence, from growing without bound on separable embeddings.
    """
    clipped = alpha * torch.tanh(logits / alpha)
    return soft_cross_entropy(logits, targets, smoothing) + penalty * clipped.pow(2).mean()


def make_optimizer(params, lr: float, weight_decay: float = 5e-4, momentum: float = 0.9) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)


def batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = False) -> list[torch.Tensor]:
    """Shuffled index batches; a last batch of one sample is dropped (BatchNorm cannot train on it)."""
    order = torch.randperm(n, generator=generator)
    out = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    if out and (len(out[-1]) < 2 or (drop_last and len(out[-1]) < batch_size and len(out) > 1)):
        out.pop()
    return out


def train_supervised(model: nn.Module, images: np.ndarray, targets: np.ndarray, *, epochs: int, lr: float,
                     batch_size: int, device: torch.device, augment: nn.Module | None, seed: int,
                     description: str = "training") -> list[float]:
    """SGD with a cosine learning rate over ``epochs``; returns the mean loss per epoch."""
    x_all = to_tensor(images, device)
    y_all = torch.from_numpy(targets).to(device)
    optimizer = make_optimizer(model.parameters(), lr)
    steps = max(1, epochs * len(batches(len(images), batch_size, torch.Generator().manual_seed(0))))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    with progress_bar(description, total=epochs) as advance:
        for _ in range(epochs):
            total, count = 0.0, 0
            for idx in batches(len(images), batch_size, generator):
                x = x_all[idx]
                if augment is not None:
                    x = augment(x)
                with autocast(device):
                    loss = soft_cross_entropy(model(x), y_all[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(idx)
                count += len(idx)
            losses.append(total / max(count, 1))
            advance(1)
    return losses


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 512,
                   mc_dropout: bool = False) -> torch.Tensor:
    """Logits (N, C) in float32 on the CPU; ``mc_dropout`` keeps dropout layers active (BatchNorm stays in eval)."""
    model.eval()
    if mc_dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.train()
    out = []
    for start in range(0, len(images), batch_size):
        with autocast(device):
            out.append(model(to_tensor(images[start:start + batch_size], device)).float().cpu())
    model.eval()
    return torch.cat(out)
