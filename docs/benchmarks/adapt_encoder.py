"""Screens adapting an ImageNet encoder to the project's images (no labels) before the default's frozen pipeline.

Usage: .venv/bin/python docs/benchmarks/adapt_encoder.py bn SEEDS [ENCODER] [--out=RUN.npz]
       .venv/bin/python docs/benchmarks/adapt_encoder.py byol SEEDS EPOCHS [ENCODER] [--out=RUN.npz]
e.g.   .venv/bin/python docs/benchmarks/adapt_encoder.py byol 1,2,3,4,5 1 efficientnet-lite0
- ``bn`` (AdaBN, the cheapest adaptation): one pass over every image and its mirror image, no gradients, replaces
  each BatchNorm's running mean and variance with the project's.
- ``byol`` (the paper's self-supervised step at a size a CPU affords): BYOL (ssl-linear's networks, views and
  training loop) trains the whole encoder from its ImageNet weights for EPOCHS epochs (AdamW, lr 2e-4, batch 64),
  every BatchNorm keeping its ImageNet statistics.
Then, as for the default's members: each image and its mirror image embedded at 128 px (stage features), a
`pretrained-linear` head fitted out of fold per seed. Prints low_noise.py's figures (CIFAR-10H, all 10,000 images,
T = 1) for the adapted encoder and, on the same seeds, for the same encoder unadapted (embeddings from .alc/cache).
``--out=RUN.npz`` saves the posteriors as ``adapted-SEED`` and ``frozen-SEED``, to average with other members through
low_noise.py's ``saved`` variants.
"""
import sys
import time

import numpy as np
import torch

sys.path.insert(0, "docs/benchmarks")
from low_noise import BUDGET_FACTOR, show, split_out_option  # noqa: E402
from scoring.augment import to_tensor  # noqa: E402
from scoring.data import load_cifar10h  # noqa: E402
from scoring.embeddings import embed  # noqa: E402
from scoring.encoders import PretrainedEncoder, build_pretrained_encoder  # noqa: E402
from scoring.selectors.pretrained_linear import PretrainedLinearSelector  # noqa: E402
from scoring.selectors.ssl_linear import BYOL, pretrain_byol  # noqa: E402

SIZE = 128
CPU = torch.device("cpu")


def batch_norms(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def adapt_batch_norm(encoder: PretrainedEncoder, images: np.ndarray) -> None:
    backbone = encoder.backbone.eval()  # blocks stay in eval mode (no drop-connect); only BatchNorm re-estimates
    for norm in batch_norms(backbone):
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every batch
        norm.train()
    with torch.no_grad():
        for start in range(0, len(images), 250):
            batch = to_tensor(images[start:start + 250], CPU)
            backbone(torch.cat([batch, torch.flip(batch, dims=(3,))]))
    backbone.eval()


class KeptStatistics(torch.nn.Module):
    """A backbone as BYOL's online and target networks want it (``out_dim``), its BatchNorm always in eval mode."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim = backbone.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def train(self, mode: bool = True) -> "KeptStatistics":
        super().train(mode)
        for norm in batch_norms(self):
            norm.eval()
        return self


def adapt_byol(encoder: PretrainedEncoder, images: np.ndarray, epochs: int) -> None:
    online = KeptStatistics(encoder.backbone)
    for p in online.parameters():
        p.requires_grad_(True)
    torch.manual_seed(0)
    byol = BYOL(online)  # the target network is a frozen copy of the online one
    losses = pretrain_byol(byol, images, epochs=epochs, batch_size=64, lr=2e-4, weight_decay=1e-6, tau_base=0.99,
                           device=CPU, seed=0)
    print(f"BYOL loss per epoch: {', '.join(f'{x:.3f}' for x in losses)}", flush=True)
    online.eval()
    for p in online.parameters():
        p.requires_grad_(False)


def main(mode: str, seeds: list[int], epochs: int, name: str, out: str | None) -> None:
    data = load_cifar10h(None, 10000, 1.0, 0, with_images=True)
    budget = data.budget_for(BUDGET_FACTOR)
    started = time.perf_counter()
    encoder = build_pretrained_encoder(name, SIZE, None, True, "float32")
    adapt_batch_norm(encoder, data.images) if mode == "bn" else adapt_byol(encoder, data.images, epochs)
    # Embedded here, not through the embedding cache: its key names the ImageNet weights, which the adaptation changed.
    mirrored = np.ascontiguousarray(data.images[:, :, ::-1])
    features = {"adapted": (embed(encoder, data.images, CPU) + embed(encoder, mirrored, CPU)) / 2}
    print(f"{name}: adapted ({mode}) and 10,000 images embedded twice in {time.perf_counter() - started:.0f} s", flush=True)
    features["frozen"] = PretrainedLinearSelector(encoder=name, image_size=SIZE, flip=True, cache_dir=".alc/cache")._features(data.images)
    posteriors = {}
    for kind, x in features.items():
        by_seed = {s: PretrainedLinearSelector(seed=s).fit(x, data.initial_counts).oof_proba(x) for s in seeds}
        show(f"{name} {kind}", by_seed, data, budget)
        posteriors |= {f"{kind}-{s}": p for s, p in by_seed.items()}
    if out:
        np.savez_compressed(out, **posteriors)


if __name__ == "__main__":
    args, out_file = split_out_option(sys.argv[1:])
    if args[0] == "bn":
        main("bn", [int(s) for s in args[1].split(",")], 0, args[2] if len(args) > 2 else "efficientnet-lite0", out_file)
    else:
        main("byol", [int(s) for s in args[1].split(",")], int(args[2]), args[3] if len(args) > 3 else "efficientnet-lite0",
             out_file)
