"""The parts behind the learned selectors: co-teaching's sample selection, BYOL's EMA, caches, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoring.checkpoints import make_version, state_hash
from scoring.persistence import load_document, save_document
from scoring.device import resolve_device
from scoring.models import build_encoder
from scoring.selectors import make_selector
from scoring.selectors.coteaching import estimate_noise_rate, forget_rate, small_loss_split
from scoring.selectors.ssl_linear import BYOL, Backbone, byol_tau
from scoring import embeddings


def test_coteaching_drops_the_highest_loss_samples_of_the_peer():
    loss_a = torch.tensor([0.1, 5.0, 0.3, 0.2, 4.0, 0.5, 0.4, 3.0, 0.6, 0.7])
    loss_b = torch.tensor([6.0, 0.1, 0.2, 0.3, 0.4, 5.0, 0.5, 0.6, 0.7, 4.0])
    for_a, for_b = small_loss_split(loss_a, loss_b, rate=0.3)
    assert set(for_b.tolist()) == set(range(10)) - {1, 4, 7}  # a's three largest losses never reach b
    assert set(for_a.tolist()) == set(range(10)) - {0, 5, 9}  # b's three largest losses never reach a
    keep_all, _ = small_loss_split(loss_a, loss_b, rate=0.0)
    assert len(keep_all) == 10


def test_forget_rate_ramps_to_the_noise_rate_after_the_warm_up():
    rates = [forget_rate(e, 0.2, warmup_epochs=2, ramp_epochs=4) for e in range(8)]
    assert rates[:2] == [0.0, 0.0]
    assert rates[2:6] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert rates[6:] == [0.2, 0.2]


def test_noise_rate_estimate_with_cleanlab_is_close_to_the_truth():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 2000)
    probs = np.full((2000, 5), 0.05)
    probs[np.arange(2000), truth] = 0.8  # a good model of the truth
    labels = truth.copy()
    flip = rng.random(2000) < 0.2
    labels[flip] = (truth[flip] + rng.integers(1, 5, flip.sum())) % 5
    assert estimate_noise_rate(labels, probs) == pytest.approx(flip.mean(), abs=0.03)


def test_byol_target_follows_the_ema_of_the_online_network():
    torch.manual_seed(0)
    byol = BYOL(Backbone(build_encoder("small-cnn", width=4, stages=2)), hidden_dim=16, projection_dim=8)
    online = [p.detach().clone() for p in [*byol.online_backbone.parameters(), *byol.online_projector.parameters()]]
    for p in byol.online_parameters():  # move the online weights, as an optimiser step would
        p.data.add_(torch.randn_like(p))
    before = [p.detach().clone() for p in byol.target_parameters()]
    assert all(torch.equal(t, o) for t, o in zip(before, online))  # the target starts as a copy
    byol.update_target(0.9)
    moved = [*byol.online_backbone.parameters(), *byol.online_projector.parameters()]
    for t, b, o in zip(byol.target_parameters(), before, moved):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o.detach())
    assert not any(p.requires_grad for p in byol.target_parameters())
    x = torch.rand(6, 3, 32, 32)
    loss = byol.loss(x, x.flip(-1))
    loss.backward()
    assert 0.0 <= loss.item() <= 8.0
    assert all(p.grad is None for p in byol.target_parameters())


def test_tau_schedule_goes_from_base_to_one():
    assert byol_tau(0, 100, 0.99) == pytest.approx(0.99)
    assert byol_tau(50, 100, 0.99) == pytest.approx(0.995)
    assert byol_tau(100, 100, 0.99) == pytest.approx(1.0)


def test_second_fit_loads_the_encoder_and_embeddings_from_the_cache(tiny300, tmp_path, monkeypatch):
    images = tiny300["images"][:64]
    counts = np.eye(10, dtype=np.int64)[tiny300["labels"][:64]]
    options = {"encoder_options": {"width": 8, "stages": 2}, "byol_epochs": 1, "byol_batch_size": 32,
               "projector_hidden": 32, "projection_dim": 16, "head_steps": 20}
    calls = []
    real_embed = embeddings.embed
    monkeypatch.setattr(embeddings, "embed", lambda *a, **k: calls.append(1) or real_embed(*a, **k))
    first = make_selector("ssl-linear", options, seed=0, cache_dir=tmp_path).fit(images, counts)
    assert len(calls) == 1 and first.pretrain_seconds_ > 0
    first.update(images, counts + np.eye(10, dtype=np.int64)[np.zeros(64, dtype=int)])
    assert len(calls) == 1  # update: head only
    second = make_selector("ssl-linear", options, seed=1, cache_dir=tmp_path).fit(images, counts)
    assert len(calls) == 1  # a new selector (another simulation seed) re-embeds nothing
    assert second.pretrain_seconds_ == 0.0 and second.encoder_version_ == first.encoder_version_
    assert second.embedding_cache_.hits == 64 and second.embedding_cache_.misses == 0  # counted per image
    assert list((tmp_path / "encoders").glob("byol-*/arrays.safetensors"))
    assert len(list((tmp_path / "embeddings").rglob("*.npy"))) == 64


def test_checkpoints_are_versioned_by_content(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 3}
    assert state_hash(state) == state_hash({"step": 3, "w": torch.arange(6.0).reshape(2, 3)})
    assert state_hash(state) != state_hash({"w": torch.arange(6.0).reshape(3, 2), "step": 3})
    assert make_version(state).split("-")[0] == state_hash(state)[:12]
    path = save_document(tmp_path / "a", state)
    assert torch.equal(load_document(path)["w"], state["w"]) and load_document(path)["step"] == 3
    with pytest.raises(FileNotFoundError):
        load_document(tmp_path / "missing")


def test_encoders_and_devices():
    x = torch.rand(2, 3, 32, 32)
    for name, options in [("small-cnn", {"width": 8}), ("resnet", {"depth": 8, "width": 8})]:
        encoder = build_encoder(name, **options)
        assert encoder(x).shape == (2, encoder.out_dim)
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("vgg")
    with pytest.raises(ValueError, match="depth"):
        build_encoder("resnet", depth=7)
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
