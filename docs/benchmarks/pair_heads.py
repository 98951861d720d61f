"""Screens ways to combine two encoders' embeddings at the head, against averaging their posteriors.

Usage: .venv/bin/python docs/benchmarks/pair_heads.py SUBSET T SEEDS ENCODERS_JSON WANTED [OUT.json]
e.g.   .venv/bin/python docs/benchmarks/pair_heads.py 10000 1 1,2,3,4,5 \
           '{"l0": {}, "l2": {"encoder": "efficientnet-lite2", "image_size": 192}}' geo,cat,catwd,cross,cross2
Per seed, each encoder's `pretrained-linear` posteriors and their average (avg, the `ensemble`), then WANTED of:
geo (geometric mean), cat (one head on the concatenated features; catwd with weight decay 0.2), cross (each head
refitted without the 10% of its training tasks the averaged posteriors find most suspect; cross2 twice), white (each
encoder's features PCA-whitened on every image, labels unused, eigenvalues shrunk by a tenth of their mean; one head
each, averaged). Prints
low_noise.py's figures for each. Embeddings come from the cache (.alc/cache).
"""
import json, sys, time
import numpy as np
sys.path.insert(0, "docs/benchmarks")
from low_noise import show, BUDGET_FACTOR
from scoring.data import load_cifar10h
from scoring.selectors.pretrained_linear import PretrainedLinearSelector as PL

subset, T = int(sys.argv[1]), float(sys.argv[2])
seeds = [int(s) for s in sys.argv[3].split(",")]
enc = json.loads(sys.argv[4])  # {"a": {pretrained-linear options}, "b": {...}}
wanted = sys.argv[5].split(",")
out = sys.argv[6] if len(sys.argv) > 6 else None
data = load_cifar10h(None, subset, T, 0, with_images=True)
budget = data.budget_for(BUDGET_FACTOR)
print(f"N={data.n_tasks} T={T} noise {data.initial_noise_rate:.4f} budget {budget}", flush=True)
feats = {k: PL(cache_dir=".alc/cache", **o)._features(data.images) for k, o in enc.items()}
names = list(feats)
if "white" in wanted:
    def whiten(x: np.ndarray, shrink: float = 0.1) -> np.ndarray:
        x = np.sign(x) * np.sqrt(np.abs(x))  # what pretrained-linear does before standardising
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        eigenvalues, vectors = np.linalg.eigh(x.T @ x / len(x))
        return ((x @ vectors) / np.sqrt(eigenvalues + shrink * eigenvalues.mean())).astype(np.float32)
    whitened = {k: whiten(feats[k]) for k in names}
counts = data.initial_counts
post = {}

def fit(x, seed, **kw):
    return PL(seed=seed, **kw).fit(x, counts)

for seed in seeds:
    t0 = time.time()
    base = {k: fit(feats[k], seed) for k in names}
    P = {k: base[k].oof_proba(feats[k]) for k in names}
    P["avg"] = np.mean([P[k] for k in names], axis=0)
    if "geo" in wanted:
        g = np.exp(np.mean([np.log(np.clip(P[k], 1e-12, 1)) for k in names], axis=0)); P["geo"] = g / g.sum(1, keepdims=True)
    if "cat" in wanted or "catwd" in wanted:
        x = np.concatenate([feats[k] for k in names], axis=1)
        if "cat" in wanted: P["cat"] = fit(x, seed).oof_proba(x)
        if "catwd" in wanted: P["catwd"] = fit(x, seed, head_weight_decay=0.2).oof_proba(x)
    if "cross" in wanted or "cross2" in wanted:
        # each member refitted without the 10% of training tasks the pair's averaged posteriors find most suspect
        sel = {k: fit(feats[k], seed, drop_suspect=0) for k in names}
        avg0 = np.mean([sel[k].oof_proba(feats[k]) for k in names], axis=0)
        for rnd in (1, 2):
            for k in names:
                sel[k].drop_suspect = 0.1; sel[k].oof_probs_ = avg0; sel[k]._drop_suspect_and_refit(feats[k], counts)
            avg0 = np.mean([sel[k].oof_proba(feats[k]) for k in names], axis=0)
            P[f"cross{'' if rnd == 1 else 2}"] = avg0
            if "cross2" not in wanted: break
    if "white" in wanted:
        P["white"] = np.mean([fit(whitened[k], seed, feature_transform="none").oof_proba(whitened[k]) for k in names], axis=0)
    for k, p in P.items():
        post.setdefault(k, {})[seed] = p
    print(f"seed {seed} fitted in {time.time() - t0:.0f}s", flush=True)
figs = {k: show(k, v, data, budget) for k, v in post.items()}
if out:
    json.dump({"subset": subset, "T": T, "seeds": seeds, "enc": enc, "figures": figs}, open(out, "w"), indent=1)
