"""Screens AdaBN: an encoder's BatchNorm statistics re-estimated on the project's own images, before embedding.

Usage: .venv/bin/python docs/benchmarks/adapt_bn.py SEEDS [ENCODER]
e.g.   .venv/bin/python docs/benchmarks/adapt_bn.py 1 efficientnet-lite0
The cheapest way to adapt an ImageNet encoder to a project's images: one pass over every image and its mirror image
(no labels, no gradients) replaces each BatchNorm's running mean and variance with the project's, then the image and
its mirror image are embedded at 128 px (stage features) and a `pretrained-linear` head is fitted out of fold per
seed, as the default's members are. Prints low_noise.py's figures (CIFAR-10H, all 10,000 images, T = 1) for the
adapted encoder and, on the same seeds, for the same encoder unadapted (embeddings from the cache, .alc/cache).
"""
import sys
import time

import numpy as np
import torch

sys.path.insert(0, "docs/benchmarks")
from low_noise import BUDGET_FACTOR, show  # noqa: E402
from scoring.augment import to_tensor  # noqa: E402
from scoring.data import load_cifar10h  # noqa: E402
from scoring.embeddings import embed  # noqa: E402
from scoring.encoders import build_pretrained_encoder  # noqa: E402
from scoring.selectors.pretrained_linear import PretrainedLinearSelector  # noqa: E402

SIZE = 128


def adapted_features(name: str, images: np.ndarray) -> np.ndarray:
    """Mean embedding of each image and its mirror image by ``name`` with BatchNorm statistics of these images."""
    encoder = build_pretrained_encoder(name, SIZE, None, True, "float32")
    backbone = encoder.backbone.eval()  # blocks stay in eval mode (no drop-connect); only BatchNorm re-estimates
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every batch
        norm.train()
    with torch.no_grad():
        for start in range(0, len(images), 250):
            batch = to_tensor(images[start:start + 250], torch.device("cpu"))
            backbone(torch.cat([batch, torch.flip(batch, dims=(3,))]))
    backbone.eval()
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    return (embed(encoder, images, torch.device("cpu")) + embed(encoder, mirrored, torch.device("cpu"))) / 2


def main(seeds: list[int], name: str) -> None:
    data = load_cifar10h(None, 10000, 1.0, 0, with_images=True)
    budget = data.budget_for(BUDGET_FACTOR)
    started = time.perf_counter()
    features = {"adapted": adapted_features(name, data.images)}
    print(f"{name}: BatchNorm re-estimated and 10,000 images embedded twice in {time.perf_counter() - started:.0f} s", flush=True)
    features["frozen"] = PretrainedLinearSelector(encoder=name, image_size=SIZE, flip=True, cache_dir=".alc/cache")._features(data.images)
    for kind, x in features.items():
        show(f"{name} {kind}", {s: PretrainedLinearSelector(seed=s).fit(x, data.initial_counts).oof_proba(x) for s in seeds},
             data, budget)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1].split(",")], sys.argv[2] if len(sys.argv) > 2 else "efficientnet-lite0")
