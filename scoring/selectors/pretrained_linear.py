"""``pretrained-linear``: a frozen ImageNet encoder -> cached embeddings -> a calibrated linear head.

Nothing learns good image features from scratch in minutes on a CPU, but a pretrained encoder
gives them for the cost of one forward pass per image, cached per image (scoring.embeddings),
so a refit after new labels trains only the head, in seconds. The head is fitted out of fold
(``folds``, default 5): every task is graded by a head that never saw its label.

Heads:
  ``calibrated`` (default): the paper's head on standardised features: soft cross-entropy on the
      normalised label counts with label smoothing, plus ``logit_penalty`` * mean((alpha tanh(z/alpha))^2)
      and an L2 penalty, minimised full-batch with L-BFGS (converges in tens of steps on 1,280-d features).
  ``logistic``: scikit-learn's multinomial logistic regression on the majority labels.

``stage_features`` (None = yes for the EfficientNet-Lite encoders, which alone have them): the
embedding is the pooled last convolution plus every stage's pooled output, from the same forward pass
(scoring.encoders); measured on CIFAR-10H T = 2, Lite0 224 px: out-of-fold accuracy 75.9% -> 77.1%,
re-annotations to 90% 639 -> 607 (5 seeds).

``feature_transform``: ``sqrt`` (default) takes the signed square root of every feature before
standardising (power normalisation: ImageNet features after a ReLU are sparse with a few large values);
measured on the Lite0 224 px embeddings of CIFAR-10H, out-of-fold accuracy 75.4% -> 75.9%, and with
clean labels 75.6% -> 76.1%. ``none`` uses the raw features.

``drop_suspect`` (a fraction, default 0.1) refits each fold's head without the training tasks whose
labels the first out-of-fold posteriors find least likely: confident mislabels pull a linear head
towards themselves.

Defaults measured on CIFAR-10H (5,000 images, T = 2, Lite0 at 224 px, out-of-fold posterior accuracy
against the true labels): weight decay 1e-3 gave 64.0%, 1e-2 68.7%, 3e-2 71.6%, 0.1 74.2%, 0.3 74.4%;
dropping the 10% most suspect labels added 1.6 points at 0.1 (75.8%, the default) and 2.7 at 3e-2.

``flip`` (default False): test-time augmentation; an image's embedding is the mean of its own and its
mirror image's (two forward passes, each cached). Measured on CIFAR-10H, 5 seeds
(docs/benchmarks/low-noise.md): all 10,000 images at T = 1, out-of-fold accuracy 80.7% -> 81.3% and
initial wrong labels corrected within the budget 48.0% -> 48.7%; 5,000 at T = 2, 617 -> 614
re-annotations to 90%. Off by default: it doubles a cold fit's embedding time.

``precision`` (default ``auto``): the encoder runs in bfloat16 where the hardware computes it natively
(CUDA, a CPU with AVX512-BF16 or AMX), else in float32; measured on CIFAR-10H, see the README.

Inputs: uint8 images (N, H, W, 3) of any size (resized to the encoder's ``image_size``); or the
user's own features as a float (N, D) array; or, with ``embeddings=<file.npz>`` holding arrays
``ids`` (N,) and ``embeddings`` (N, D), the task ids (N,) as integers, so any data type can be ranked.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scoring.device import PRECISIONS, resolve_precision, seed_everything, torch_threads
from scoring.embeddings import EmbeddingCache
from scoring.encoders import (DEFAULT_ENCODER, LITE_WHEELS, PretrainedEncoder, build_pretrained_encoder,
                              default_input_size)
from scoring.rules import normalised_cross_entropy
from scoring.selectors.learned import LearnedSelector, LinearHeadMembers, _take, softmax_probs
from scoring.training import calibrated_loss, count_targets

HEADS = ("calibrated", "logistic")
FEATURE_TRANSFORMS = ("sqrt", "none")  # sqrt: signed square root of each feature before standardising


class PretrainedLinearSelector(LinearHeadMembers, LearnedSelector):
    """Frozen pretrained encoder + out-of-fold calibrated linear head. The CPU default selector."""

    def __init__(self, n_classes: int | None = None, seed: int = 0, device: str | None = None,
                 cache_dir: str | Path | None = None, folds: int = 5, targets: str = "soft",
                 encoder: str = DEFAULT_ENCODER, image_size: int | None = None, weights: str | None = None,
                 stage_features: bool | None = None, flip: bool = False,
                 embeddings: str | Path | None = None, head: str = "calibrated", feature_transform: str = "sqrt",
                 standardise: bool = True,
                 head_steps: int = 60, head_update_steps: int = 20, head_weight_decay: float = 0.1,
                 label_smoothing: float = 0.1, logit_penalty: float = 0.3, logit_alpha: float = 10.0,
                 c: float = 0.05, drop_suspect: float = 0.1, batch_size: int = 128,
                 threads: int | None = None, precision: str = "auto") -> None:
        super().__init__(n_classes, seed, device, cache_dir, folds, targets)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if feature_transform not in FEATURE_TRANSFORMS:
            raise ValueError(f"feature_transform must be one of {FEATURE_TRANSFORMS}, got {feature_transform!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not 0.0 <= drop_suspect < 0.5:
            raise ValueError(f"drop_suspect is a fraction in [0, 0.5), got {drop_suspect}")
        self.encoder = encoder
        self.image_size = image_size
        self.stage_features = stage_features
        self.flip = bool(flip)
        self.weights = weights
        self.embeddings = embeddings
        self.head = head
        self.feature_transform = feature_transform
        self.standardise = bool(standardise)
        self.head_steps = int(head_steps)
        self.head_update_steps = int(head_update_steps)
        self.head_weight_decay = float(head_weight_decay)
        self.label_smoothing = float(label_smoothing)
        self.logit_penalty = float(logit_penalty)
        self.logit_alpha = float(logit_alpha)
        self.c = float(c)
        self.drop_suspect = float(drop_suspect)
        self.batch_size = int(batch_size)
        self.threads = threads
        self.precision = precision
        self.embedding_cache_ = EmbeddingCache(self.cache_dir)

    @property
    def input_size(self) -> int | None:
        """The square size the encoder wants (contract 2); None when the selector reads embeddings."""
        if self.embeddings is not None:
            return None
        return int(self.image_size or default_input_size(self.encoder))

    # ----- inputs ----------------------------------------------------------------------------
    def _encoder(self) -> PretrainedEncoder:
        if getattr(self, "encoder_", None) is None:
            stages = self.encoder in LITE_WHEELS if self.stage_features is None else bool(self.stage_features)
            precision = resolve_precision(self.precision, self.device_)
            self.encoder_ = build_pretrained_encoder(self.encoder, self.input_size, self.weights, stages,
                                                     precision).to(self.device_)
        return self.encoder_

    def _features(self, data: Any) -> np.ndarray:
        """(N, D) float32 raw features of images, features or task ids (see the module docstring)."""
        arr = np.asarray(data)
        if self.embeddings is not None:
            return self._lookup(arr)
        if arr.ndim == 2 and np.issubdtype(arr.dtype, np.floating):
            return arr.astype(np.float32)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"pretrained-linear needs uint8 images (N, H, W, 3) or float features (N, D), got {arr.dtype} {arr.shape}")
        encoder = self._encoder()
        with torch_threads(self.threads):
            features = self.embedding_cache_.get_or_compute(arr, encoder, encoder.key, self.device_, self.batch_size)
            if self.flip:  # the mirror images are other contents: cached under their own hashes
                mirrored = np.ascontiguousarray(arr[:, :, ::-1])
                features = (features + self.embedding_cache_.get_or_compute(
                    mirrored, encoder, encoder.key, self.device_, self.batch_size)) / 2
            return features

    def _lookup(self, ids: np.ndarray) -> np.ndarray:
        if getattr(self, "id_rows_", None) is None:
            path = Path(self.embeddings)
            if not path.is_file():
                raise ValueError(f"embeddings file not found: {path}")
            with np.load(path, allow_pickle=False) as f:
                if not {"ids", "embeddings"} <= set(f.files):
                    raise ValueError(f"{path} needs arrays 'ids' (N,) and 'embeddings' (N, D); found {f.files}")
                self.id_vectors_ = f["embeddings"].astype(np.float32)
                self.id_rows_ = {int(t): i for i, t in enumerate(f["ids"])}
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"with embeddings= the data are task ids (N,) integers, got {ids.dtype} {ids.shape}")
        missing = [int(t) for t in ids if int(t) not in self.id_rows_]
        if missing:
            raise ValueError(f"{len(missing)} task(s) have no embedding in {self.embeddings}, e.g. {missing[:5]}")
        return self.id_vectors_[[self.id_rows_[int(t)] for t in ids]]

    def _inputs(self, data: Any) -> np.ndarray:
        features = self._features(data)
        if self.feature_transform == "sqrt":  # power normalisation: tames the few large ReLU activations
            features = np.sign(features) * np.sqrt(np.abs(features))
        if not self.standardise:
            return features
        if getattr(self, "feature_mean_", None) is None:
            self.feature_mean_ = features.mean(axis=0)
            self.feature_std_ = features.std(axis=0) + 1e-6
        return ((features - self.feature_mean_) / self.feature_std_).astype(np.float32)

    def _check(self, data: Any, label_counts: np.ndarray) -> np.ndarray:
        return self._check_counts(len(data), "inputs", label_counts)

    # ----- fitting ---------------------------------------------------------------------------
    def fit(self, data: Any, label_counts: np.ndarray) -> "PretrainedLinearSelector":
        self.feature_mean_ = None  # standardisation statistics come from the data being fitted
        super().fit(data, label_counts)
        return self._drop_suspect_and_refit(data, label_counts)

    def update(self, data: Any, label_counts: np.ndarray) -> "PretrainedLinearSelector":
        super().update(data, label_counts)
        return self._drop_suspect_and_refit(data, label_counts)

    def _drop_suspect_and_refit(self, data: Any, label_counts: np.ndarray) -> "PretrainedLinearSelector":
        """Refit each member without its ``drop_suspect`` share of training tasks whose labels look most wrong."""
        if not self.drop_suspect or not self.folds:
            return self
        start = time.perf_counter()
        counts = np.asarray(label_counts)
        suspicion = normalised_cross_entropy(counts, self.oof_probs_)
        inputs, targets = self._inputs(data), count_targets(counts, self.targets)
        for f, (train, _) in enumerate(self.splits_):
            keep = train[np.argsort(suspicion[train], kind="stable")[: int(round(len(train) * (1 - self.drop_suspect)))]]
            self.members_[f] = self._refit_member(self.members_[f], _take(inputs, keep), targets[keep], self.seed + f)
        self._after_training(data, inputs, start)
        return self

    def _train_member(self, features: np.ndarray, targets: np.ndarray, seed: int) -> Any:
        seed_everything(seed)
        if self.head == "logistic":
            return self._fit_logistic(features, targets)
        return self._fit_calibrated(nn.Linear(features.shape[1], self.n_classes_), features, targets, self.head_steps)

    def _refit_member(self, member: Any, features: np.ndarray, targets: np.ndarray, seed: int) -> Any:
        if self.head == "logistic":
            return self._fit_logistic(features, targets)
        return self._fit_calibrated(member, features, targets, self.head_update_steps)  # warm start

    def _fit_calibrated(self, head: nn.Linear, features: np.ndarray, targets: np.ndarray, steps: int) -> nn.Linear:
        """Full-batch L-BFGS on the calibrated loss plus L2 (weight decay) on the weights."""
        x, y = torch.from_numpy(features), torch.from_numpy(targets)
        with torch_threads(self.threads or 1):
            optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, history_size=20,
                                          line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                loss = calibrated_loss(head(x), y, self.label_smoothing, self.logit_penalty, self.logit_alpha)
                loss = loss + 0.5 * self.head_weight_decay * head.weight.pow(2).sum()
                loss.backward()
                return loss

            optimizer.step(closure)
        return head

    def _fit_logistic(self, features: np.ndarray, targets: np.ndarray) -> nn.Linear:
        """scikit-learn's logistic regression on the majority labels, kept as an equivalent nn.Linear."""
        from sklearn.linear_model import LogisticRegression

        labels = targets.argmax(axis=1)
        model = LogisticRegression(C=self.c, max_iter=300).fit(features, labels)
        head = nn.Linear(features.shape[1], self.n_classes_)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-1e4)  # classes absent from these labels get probability ~0
            coef, intercept = model.coef_, model.intercept_
            if len(model.classes_) == 2:  # binary: one row of coefficients, as softmax over (-z/2, z/2)
                coef, intercept = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
            head.weight[model.classes_] = torch.from_numpy(coef.astype(np.float32))
            head.bias[model.classes_] = torch.from_numpy(intercept.astype(np.float32))
        return head

    @torch.no_grad()
    def _member_probs(self, head: nn.Linear, features: np.ndarray) -> np.ndarray:
        with torch_threads(self.threads or 1):
            return softmax_probs(head(torch.from_numpy(features)))

    def _extra_state(self) -> dict[str, Any]:
        return {"feature_mean": self.feature_mean_, "feature_std": getattr(self, "feature_std_", None),
                "n_classes": self.n_classes_,
                "encoder_key": None if self.embeddings is not None else self._encoder_key()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.feature_mean_, self.feature_std_ = state["feature_mean"], state["feature_std"]
        self.n_classes_ = state["n_classes"]

    def _encoder_key(self) -> str | None:
        return self.encoder_.key if getattr(self, "encoder_", None) is not None else None
