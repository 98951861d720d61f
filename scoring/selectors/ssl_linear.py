"""``ssl-linear``: BYOL pre-training on the images alone, then a linear head on frozen embeddings.

BYOL (Grill et al. 2020): an online network (encoder -> projector -> predictor) regresses the
projection of another view made by a *target* network, an exponential moving average of the
online encoder and projector; the loss is the symmetric negative cosine similarity and the EMA
rate tau rises from ``tau_base`` to 1 on a cosine schedule. Pre-training uses no labels, so one
encoder (cached on disk by images and settings, seeded by ``pretrain_seed``) serves every label
state and every simulation seed.

The head follows the paper's calibration: soft cross-entropy with label smoothing 0.1 plus
``logit_penalty`` * mean((alpha * tanh(z / alpha))^2) with alpha = 10 (BYOL supplementary C.1).
Embeddings are cached by image content and encoder version, so ``update`` trains only the head.

``init: "pretrained"`` starts BYOL from ImageNet weights (EfficientNet-Lite0 unless ``encoder``
names another pretrained encoder, at ``image_size``): BYOL then adapts ImageNet features to the
user's domain (X-rays, products), the paper's SSL step done the practical way. Use a small
``byol_lr`` (e.g. 2e-4) so the pretrained features are adapted, not overwritten. It is the
recommended setting on a GPU; it runs on a CPU too (the tests do, at 32 px), only slowly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scoring.augment import Normalise, byol_views, to_tensor
from scoring.checkpoints import state_hash
from scoring.persistence import load_document, save_document
from scoring.device import autocast, prepare_model, seed_everything, torch_threads
from scoring.embeddings import EmbeddingCache
from scoring.encoders import DEFAULT_ENCODER, PretrainedBackbone, default_input_size, pretrained_network
from scoring.hashing import images_hash
from scoring.models import MLP, build_encoder
from scoring.selectors.learned import LearnedSelector, LinearHeadMembers, softmax_probs
from scoring.training import batches, calibrated_loss, progress_bar


INITS = ("random", "pretrained")


def byol_tau(step: int, total_steps: int, tau_base: float = 0.99) -> float:
    """tau_k = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2: tau_base at the start, 1 at the end."""
    return 1.0 - (1.0 - tau_base) * (math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)) + 1.0) / 2.0


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(prediction, target), per sample."""
    return 2.0 - 2.0 * F.cosine_similarity(prediction.float(), target.float(), dim=-1)


class Backbone(nn.Module):
    """Normalise -> encoder; ``out_dim`` from the encoder."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.normalise = Normalise()
        self.encoder = encoder
        self.out_dim = encoder.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.normalise(x))


class BYOL(nn.Module):
    """Online (backbone, projector, predictor) and target (EMA copies of backbone and projector)."""

    def __init__(self, backbone: Backbone, hidden_dim: int = 512, projection_dim: int = 128) -> None:
        super().__init__()
        self.online_backbone = backbone
        self.online_projector = MLP(backbone.out_dim, hidden_dim, projection_dim)
        self.predictor = MLP(projection_dim, hidden_dim, projection_dim)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.online_projector)
        for p in self.target_parameters():
            p.requires_grad_(False)

    def online_parameters(self) -> list[nn.Parameter]:
        return [*self.online_backbone.parameters(), *self.online_projector.parameters(), *self.predictor.parameters()]

    def target_parameters(self) -> list[nn.Parameter]:
        return [*self.target_backbone.parameters(), *self.target_projector.parameters()]

    def loss(self, view_1: torch.Tensor, view_2: torch.Tensor) -> torch.Tensor:
        """Symmetric BYOL loss: each view's online prediction regresses the other view's target projection."""
        views = torch.cat([view_1, view_2])
        predictions = self.predictor(self.online_projector(self.online_backbone(views)))
        with torch.no_grad():
            targets = self.target_projector(self.target_backbone(views))
        p_1, p_2 = predictions.chunk(2)
        t_1, t_2 = targets.chunk(2)
        return (regression_loss(p_1, t_2) + regression_loss(p_2, t_1)).mean()

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """target <- tau * target + (1 - tau) * online, for weights and BatchNorm statistics alike."""
        pairs = [(self.online_backbone, self.target_backbone), (self.online_projector, self.target_projector)]
        for online, target in pairs:
            for p_o, p_t in zip(online.parameters(), target.parameters()):
                p_t.mul_(tau).add_(p_o.detach(), alpha=1.0 - tau)
            for b_o, b_t in zip(online.buffers(), target.buffers()):
                if b_t.dtype.is_floating_point:
                    b_t.mul_(tau).add_(b_o, alpha=1.0 - tau)
                else:
                    b_t.copy_(b_o)


def pretrain_byol(byol: BYOL, images: np.ndarray, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
                  tau_base: float, device: torch.device, seed: int) -> list[float]:
    """BYOL pre-training with Adam, one warm-up epoch then a cosine learning rate; mean loss per epoch."""
    seed_everything(seed)
    x_all = to_tensor(images, device)
    view_1, view_2 = byol_views(images.shape[1])
    optimizer = torch.optim.AdamW(byol.online_parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(batches(len(images), batch_size, torch.Generator().manual_seed(0), drop_last=True))
    total = max(1, epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, total // 10 + 1)
    schedule = lambda k: (k + 1) / warmup if k < warmup else 0.5 * (1 + math.cos(math.pi * (k - warmup) / max(total - warmup, 1)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    step, losses = 0, []
    byol.train()
    with progress_bar("BYOL pre-training", total=epochs) as advance:
        for _ in range(epochs):
            running, count = 0.0, 0
            for idx in batches(len(images), batch_size, generator, drop_last=True):
                x = x_all[idx]
                with autocast(device):
                    loss = byol.loss(view_1(x), view_2(x))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                byol.update_target(byol_tau(step, total, tau_base))
                running += loss.item()
                count += 1
            losses.append(running / max(count, 1))
            advance(1)
    return losses


class SSLLinearSelector(LinearHeadMembers, LearnedSelector):
    """BYOL encoder (frozen) + calibrated linear head. CPU defaults: small-cnn, 40 BYOL epochs."""

    def __init__(self, n_classes: int | None = None, seed: int = 0, device: str | None = None,
                 cache_dir: str | Path | None = None, folds: int = 0, targets: str = "soft",
                 encoder: str = "small-cnn", encoder_options: dict[str, Any] | None = None,
                 pretrain_images: str | Path | None = None, pretrain_seed: int = 0,
                 byol_epochs: int = 40, byol_batch_size: int = 256, byol_lr: float = 2e-3,
                 byol_weight_decay: float = 1e-6, tau_base: float = 0.99, projector_hidden: int = 512,
                 projection_dim: int = 128, head_steps: int = 500, head_update_steps: int = 200,
                 head_lr: float = 0.01, head_weight_decay: float = 1e-4, label_smoothing: float = 0.1,
                 logit_penalty: float = 0.3, logit_alpha: float = 10.0, init: str = "random",
                 image_size: int | None = None) -> None:
        super().__init__(n_classes, seed, device, cache_dir, folds, targets)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.init = init
        self.image_size = image_size
        self.encoder = encoder
        self.encoder_options = dict(encoder_options or {})
        self.pretrain_images = pretrain_images
        self.pretrain_seed = int(pretrain_seed)
        self.byol_epochs = int(byol_epochs)
        self.byol_batch_size = int(byol_batch_size)
        self.byol_lr = float(byol_lr)
        self.byol_weight_decay = float(byol_weight_decay)
        self.tau_base = float(tau_base)
        self.projector_hidden = int(projector_hidden)
        self.projection_dim = int(projection_dim)
        self.head_steps = int(head_steps)
        self.head_update_steps = int(head_update_steps)
        self.head_lr = float(head_lr)
        self.head_weight_decay = float(head_weight_decay)
        self.label_smoothing = float(label_smoothing)
        self.logit_penalty = float(logit_penalty)
        self.logit_alpha = float(logit_alpha)
        self.embedding_cache_ = EmbeddingCache(self.cache_dir)

    # ----- encoder --------------------------------------------------------------------------
    @property
    def input_size(self) -> int | None:
        """Contract 2: a pretrained start wants its encoder's size (resized internally anyway); from scratch, any."""
        return self._pretrained_size() if self.init == "pretrained" else None

    def _pretrained_name(self) -> str:
        """With ``init: pretrained`` the encoder is a pretrained one (the CPU default unless one is named)."""
        return self.encoder if self.encoder != "small-cnn" else DEFAULT_ENCODER

    def _pretrained_size(self) -> int:
        return int(self.image_size or default_input_size(self._pretrained_name()))

    def _new_backbone(self) -> nn.Module:
        """From scratch: Normalise -> a small encoder. Pretrained: ImageNet weights, resized inputs (trainable)."""
        if self.init == "pretrained":
            network, _, normalise = pretrained_network(self._pretrained_name(), self.encoder_options.get("weights"))
            return PretrainedBackbone(network, self._pretrained_size(), normalise)
        return Backbone(build_encoder(self.encoder, **self.encoder_options))

    def _pretrain_config(self, images: np.ndarray) -> dict[str, Any]:
        return {"encoder": self.encoder, "encoder_options": self.encoder_options, "images": images_hash(images),
                "init": self.init, "image_size": self.input_size,
                "epochs": self.byol_epochs, "batch_size": self.byol_batch_size, "lr": self.byol_lr,
                "weight_decay": self.byol_weight_decay, "tau_base": self.tau_base, "seed": self.pretrain_seed,
                "projector_hidden": self.projector_hidden, "projection_dim": self.projection_dim}

    def _load_pretrain_images(self, fallback: np.ndarray) -> np.ndarray:
        if self.pretrain_images is None:
            return fallback
        path = Path(self.pretrain_images)
        if not path.is_file():
            raise ValueError(f"pretrain_images file not found: {path}")
        if path.suffix == ".npz":
            with np.load(path) as f:
                if "images" not in f.files:
                    raise ValueError(f"{path} has no 'images' array (found {f.files})")
                return f["images"]
        return np.load(path)

    def _ensure_encoder(self, images: np.ndarray) -> None:
        """Pre-train (or load from the cache) the BYOL encoder; sets ``backbone_`` and ``encoder_version_``."""
        if hasattr(self, "backbone_"):
            return
        pretrain = self._load_pretrain_images(images)
        config = self._pretrain_config(pretrain)
        key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        path = self.cache_dir / "encoders" / f"byol-{key}" if self.cache_dir is not None else None
        backbone = self._new_backbone()
        if path is not None and path.is_dir():
            payload = load_document(path)
            backbone.load_state_dict(payload["backbone"])
            self.pretrain_losses_, self.pretrain_seconds_ = payload["losses"], 0.0
        else:
            start = time.perf_counter()
            byol = prepare_model(BYOL(backbone, self.projector_hidden, self.projection_dim), self.device_)
            self.pretrain_losses_ = pretrain_byol(
                byol, pretrain, epochs=self.byol_epochs, batch_size=self.byol_batch_size, lr=self.byol_lr,
                weight_decay=self.byol_weight_decay, tau_base=self.tau_base, device=self.device_, seed=self.pretrain_seed)
            backbone = byol.online_backbone
            self.pretrain_seconds_ = time.perf_counter() - start
            if path is not None:
                save_document(path, {"backbone": {k: v.cpu() for k, v in backbone.state_dict().items()},
                                       "config": config, "losses": self.pretrain_losses_,
                                       "seconds": self.pretrain_seconds_})
        self.backbone_ = prepare_model(backbone, self.device_).eval()
        self.encoder_version_ = "byol-" + state_hash(self.backbone_.state_dict())[:12] + (
            f"-{self.input_size}px" if self.input_size else "")

    def _inputs(self, images: np.ndarray) -> np.ndarray:
        self._ensure_encoder(images)
        emb = self.embedding_cache_.get_or_compute(images, self.backbone_, self.encoder_version_, self.device_)
        if getattr(self, "feature_mean_", None) is None:
            self.feature_mean_ = emb.mean(axis=0)
            self.feature_std_ = emb.std(axis=0) + 1e-6
        return ((emb - self.feature_mean_) / self.feature_std_).astype(np.float32)

    def fit(self, images: np.ndarray, label_counts: np.ndarray) -> "SSLLinearSelector":
        self.feature_mean_ = None  # standardisation statistics come from the images being fitted
        return super().fit(images, label_counts)

    # ----- head -----------------------------------------------------------------------------
    def _head_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return calibrated_loss(logits, targets, self.label_smoothing, self.logit_penalty, self.logit_alpha)

    def _fit_head(self, head: nn.Linear, features: np.ndarray, targets: np.ndarray, steps: int) -> nn.Linear:
        """Full-batch AdamW on the frozen embeddings, on the CPU with one thread.

        The head's operations are tiny: with several threads each step waits on thread wake-ups,
        which on a busy shared CPU made a 500-step fit take minutes instead of about a second.
        """
        x, y = torch.from_numpy(features), torch.from_numpy(targets)
        with torch_threads(1):
            optimizer = torch.optim.AdamW(head.parameters(), lr=self.head_lr, weight_decay=self.head_weight_decay)
            for _ in range(steps):
                loss = self._head_loss(head(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return head

    def _train_member(self, features: np.ndarray, targets: np.ndarray, seed: int) -> nn.Linear:
        seed_everything(seed)
        return self._fit_head(nn.Linear(features.shape[1], self.n_classes_), features, targets, self.head_steps)

    def _refit_member(self, head: nn.Linear, features: np.ndarray, targets: np.ndarray, seed: int) -> nn.Linear:
        return self._fit_head(head, features, targets, self.head_update_steps)

    @torch.no_grad()
    def _member_probs(self, head: nn.Linear, features: np.ndarray) -> np.ndarray:
        with torch_threads(1):
            return softmax_probs(head(torch.from_numpy(features)))

    def _extra_state(self) -> dict[str, Any]:
        return {"backbone": {k: v.detach().cpu() for k, v in self.backbone_.state_dict().items()},
                "encoder_version": self.encoder_version_, "feature_mean": self.feature_mean_,
                "feature_std": self.feature_std_, "n_classes": self.n_classes_}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        backbone = self._new_backbone()
        backbone.load_state_dict(state["backbone"])
        self.backbone_ = prepare_model(backbone, self.device_).eval()
        self.encoder_version_ = state["encoder_version"]
        self.feature_mean_, self.feature_std_ = state["feature_mean"], state["feature_std"]
        self.n_classes_ = state["n_classes"]
