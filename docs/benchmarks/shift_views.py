"""Screens more test-time views for the default pair (Lite0 and Lite2 at 128 px) on all 10,000 CIFAR-10H images, T = 1.

Usage: .venv/bin/python docs/benchmarks/shift_views.py VIEWS [COMBINATIONS]
e.g.   .venv/bin/python docs/benchmarks/shift_views.py id,flip,s1,s1f id+flip,id+flip+s1+s1f
Views: id (the image), flip (its mirror), s1 / s2 (shifted by +3 / -3 px both ways, reflect-padded) and their
mirrors s1f / s2f. Each encoder's embedding is the mean over a combination's views (as `flip` does for two); the
two heads' out-of-fold posteriors are averaged and simulated as in low_noise.py (seeds 1-5). Embeddings are cached.
"""
import sys, json, time
import numpy as np
sys.path.insert(0, "docs/benchmarks")
from low_noise import show, BUDGET_FACTOR
from scoring.data import load_cifar10h
from scoring.selectors.pretrained_linear import PretrainedLinearSelector as PL
data = load_cifar10h(None, 10000, 1, 0, with_images=True)
budget = data.budget_for(BUDGET_FACTOR)
imgs = data.images
def shift(a, dy, dx, pad=3):
    p = np.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = a.shape[1:3]
    return np.ascontiguousarray(p[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w])
views = {"id": imgs, "flip": np.ascontiguousarray(imgs[:, :, ::-1]), "s1": shift(imgs, 3, 3), "s2": shift(imgs, -3, -3)}
views["s1f"] = np.ascontiguousarray(views["s1"][:, :, ::-1]); views["s2f"] = np.ascontiguousarray(views["s2"][:, :, ::-1])
enc = {"l0": {"image_size": 128}, "l2": {"encoder": "efficientnet-lite2", "image_size": 128}}
wanted = sys.argv[1].split(",")  # view names to embed
F = {}
for e, o in enc.items():
    for v in wanted:
        t = time.time(); F[(e, v)] = PL(cache_dir=".alc/cache", **o)._features(views[v]); print("embedded", e, v, f"{time.time()-t:.0f}s", flush=True)
if len(sys.argv) > 2:
    counts = data.initial_counts; seeds = [1, 2, 3, 4, 5]; figs = {}
    for name in sys.argv[2].split(","):
        vs = name.split("+")
        post = {}
        for seed in seeds:
            ps = []
            for e in enc:
                x = np.mean([F[(e, v)] for v in vs], axis=0)
                ps.append(PL(seed=seed).fit(x, counts).oof_proba(x))
            post[seed] = np.mean(ps, axis=0)
        figs[name] = show(name, post, data, budget)
    print(json.dumps(figs))
