"""``text``: texts -> word and character n-gram TF-IDF plus wordllama sentence embeddings -> the calibrated
out-of-fold head of ``pretrained-linear``. CPU only, offline.

Why these features: a linear head on TF-IDF n-grams is the strong classical baseline for topic and
intent labels, and it needs no model at all; wordllama (a 16 MB, 256-d static embedding model inside its
MIT-licensed wheel) adds meaning beyond the exact words (synonyms, paraphrases) for 0.5 s of loading and
about 15 ms per long article on one core. Both are computed once per text: the sentence embeddings are
cached per text content (scoring.embeddings), like image embeddings; TF-IDF is recomputed, in seconds.

The TF-IDF part is stateless where it can be: words (1-2-grams) and characters (3-5-grams within words)
are hashed into ``2**hash_bits`` columns each (no vocabulary to store), weighted by inverse document
frequency and reduced to ``components`` dimensions by a truncated SVD (latent semantic analysis). The IDF
and the SVD are unsupervised, so they are fitted on every task of a fit, like the standardisation of the
features: no label reaches a fold through them. The head and its folds are those of pretrained-linear
(``folds``, ``head_weight_decay``, ``drop_suspect``, ...): every task is graded by a head that never saw
its label.

``features``: ``"tfidf,wordllama"`` (default), ``"tfidf"`` or ``"wordllama"``.

Input: a sequence of N strings (a list, or a numpy array of str / object).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scoring.hashing import text_hashes
from scoring.selectors.pretrained_linear import PretrainedLinearSelector

FEATURE_BLOCKS = ("tfidf", "wordllama")
WORDLLAMA_KEY = "wordllama-0.4-l2_supercat_256"
WORDLLAMA_BATCH = 64


def load_wordllama() -> Any:
    """The WordLlama model bundled in the ``wordllama`` wheel, loaded without any network access.

    ``WordLlama.load()`` with its defaults looks for the bundled tokenizer in a user cache folder and
    downloads it when absent; pointing ``cache_dir`` at the package folder (which holds ``weights/`` and
    ``tokenizers/``) and ``disable_download`` makes it read only the wheel's files.
    """
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints paths on import
        import wordllama
        from wordllama import WordLlama

    return WordLlama.load(cache_dir=Path(os.path.dirname(wordllama.__file__)), disable_download=True)


def as_texts(data: Any) -> list[str]:
    """A sequence of N strings, or ValueError saying what was given instead."""
    if isinstance(data, str) or not hasattr(data, "__len__"):
        raise ValueError(f"the text selector needs a sequence of N strings, got {type(data).__name__}")
    arr = np.asarray(data, dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"the text selector needs a sequence of N strings, got an array of shape {arr.shape}")
    bad = [i for i, t in enumerate(arr) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{len(bad)} item(s) are not strings, e.g. row {bad[0]}: {type(arr[bad[0]]).__name__}")
    return [str(t) for t in arr]


class TextSelector(PretrainedLinearSelector):
    """TF-IDF n-grams (+ wordllama embeddings) -> calibrated out-of-fold linear head. See the module docstring."""

    def __init__(self, n_classes: int | None = None, seed: int = 0, cache_dir: str | Path | None = None,
                 folds: int = 5, targets: str = "soft", features: str = "tfidf,wordllama", components: int = 128,
                 hash_bits: int = 16, head_steps: int = 60, head_update_steps: int = 20,
                 head_weight_decay: float = 0.1, label_smoothing: float = 0.1, logit_penalty: float = 0.3,
                 logit_alpha: float = 10.0, drop_suspect: float = 0.1, threads: int | None = None) -> None:
        super().__init__(n_classes, seed, "cpu", cache_dir, folds, targets, feature_transform="none",
                         head_steps=head_steps, head_update_steps=head_update_steps,
                         head_weight_decay=head_weight_decay, label_smoothing=label_smoothing,
                         logit_penalty=logit_penalty, logit_alpha=logit_alpha, drop_suspect=drop_suspect,
                         threads=threads)
        blocks = [b.strip() for b in str(features).split(",") if b.strip()]
        if not blocks or set(blocks) - set(FEATURE_BLOCKS):
            raise ValueError(f"features must name some of {FEATURE_BLOCKS}, got {features!r}")
        if components < 2:
            raise ValueError(f"components must be >= 2, got {components}")
        self.features = ",".join(blocks)
        self.components = int(components)
        self.hash_bits = int(hash_bits)

    @property
    def input_size(self) -> None:
        return None  # texts, not images

    @property
    def blocks(self) -> list[str]:
        return self.features.split(",")

    # ----- inputs ----------------------------------------------------------------------------
    def fit(self, data: Any, label_counts: np.ndarray) -> "TextSelector":
        return super().fit(as_texts(data), label_counts)

    def update(self, data: Any, label_counts: np.ndarray) -> "TextSelector":
        """New counts for the same texts: the heads only. A selector loaded from disk (no SVD kept) fits afresh."""
        if "tfidf" in self.blocks and getattr(self, "svd_components_", None) is None:
            return self.fit(data, label_counts)
        return super().update(as_texts(data), label_counts)

    def _features(self, data: Any) -> np.ndarray:
        """(N, D) float32: the blocks side by side; the last texts' features are kept (a fit reads them twice)."""
        texts = as_texts(data)
        fitting = getattr(self, "feature_mean_", None) is None
        key = hashlib.sha256("".join(text_hashes(texts)).encode()).hexdigest()
        last = getattr(self, "last_features_", None)
        if last is not None and last[0] == key and not fitting:
            return last[1]
        parts = []
        if "tfidf" in self.blocks:
            parts.append(self._tfidf(texts))
        if "wordllama" in self.blocks:
            parts.append(self._sentence_embeddings(texts))
        self.last_features_ = (key, np.concatenate(parts, axis=1).astype(np.float32))
        return self.last_features_[1]

    def _vectorizers(self) -> list[Any]:
        from sklearn.feature_extraction.text import HashingVectorizer

        common = {"n_features": 2**self.hash_bits, "alternate_sign": False, "norm": None, "lowercase": True}
        return [HashingVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b", **common),
                HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common)]

    def _tfidf(self, texts: list[str]) -> np.ndarray:
        """(N, components) LSA coordinates: hashed n-gram counts -> sublinear TF x IDF -> L2 -> SVD."""
        import scipy.sparse as sp
        from sklearn.decomposition import TruncatedSVD
        from sklearn.preprocessing import normalize

        fitting = getattr(self, "feature_mean_", None) is None
        if not fitting and getattr(self, "svd_components_", None) is None:
            raise ValueError("this text selector was loaded from disk without its SVD: fit it before predicting new texts")
        counts = [v.transform(texts) for v in self._vectorizers()]
        if fitting:
            self.idf_ = [np.log((1 + len(texts)) / (1 + np.bincount(c.indices, minlength=c.shape[1]))) + 1.0
                         for c in counts]
        blocks = []
        for c, idf in zip(counts, self.idf_):
            c = c.astype(np.float32)
            c.data = 1.0 + np.log(c.data)  # sublinear term frequency
            blocks.append(normalize(c @ sp.diags(np.asarray(idf, dtype=np.float32))))
        x = sp.hstack(blocks).tocsr()
        if fitting:  # columns seen in one text only carry no similarity between texts: dropped (faster SVD)
            df = np.bincount(x.indices, minlength=x.shape[1])
            self.columns_ = np.flatnonzero(df >= 2) if (df >= 2).sum() > self.components else np.flatnonzero(df)
        x = x[:, self.columns_]
        if fitting:
            # at most one dimension per 5 texts: a small project's head cannot weigh more (90 texts, 89
            # standardised dimensions gave near-uniform posteriors)
            k = max(2, min(self.components, x.shape[0] // 5, x.shape[1] - 1))
            svd = TruncatedSVD(k, algorithm="randomized", n_iter=3, random_state=self.seed).fit(x)
            self.svd_components_ = svd.components_.astype(np.float32)
        return np.asarray(x @ self.svd_components_.T, dtype=np.float32)

    def _sentence_embeddings(self, texts: list[str]) -> np.ndarray:
        """(N, 256) wordllama embeddings, from the cache where the same text was embedded before."""
        from scoring.training import progress_bar

        def compute(rows: list[int], keep: Callable[[int, np.ndarray], None]) -> None:
            model = self._wordllama()
            with progress_bar(f"embedding {len(rows)} texts (wordllama)", total=len(rows)) as advance:
                for start in range(0, len(rows), WORDLLAMA_BATCH):
                    batch = [texts[i] for i in rows[start:start + WORDLLAMA_BATCH]]
                    keep(start, np.asarray(model.embed(batch), dtype=np.float32))
                    advance(len(batch))

        return self.embedding_cache_.get_or_compute_keyed(text_hashes(texts), compute, WORDLLAMA_KEY)

    def _wordllama(self) -> Any:
        if getattr(self, "wordllama_", None) is None:
            self.wordllama_ = load_wordllama()
        return self.wordllama_

    # ----- persistence -----------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        """The head's state; the SVD (components x 2**(hash_bits+1) floats, 64 MiB at the defaults) is not saved:
        a selector loaded from disk refits on its next update (seconds; the sentence embeddings are cached)."""
        return {**super()._extra_state(), "encoder_key": None}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self.idf_ = self.svd_components_ = None
