"""``finetune`` on a CPU with a few dozen 32 px images: both modes train, grade out of fold, save and load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoring.encoders import lite_parts
from scoring.selectors import make_selector
from scoring.selectors.base import Selector
from scoring.selectors.finetune import elr_penalty, gce_loss

N = 40
TINY = {"image_size": 32, "folds": 2, "epochs": 1, "update_epochs": 1, "batch_size": 16, "crop": 0}


@pytest.fixture(scope="module")
def small(tiny300):
    return tiny300["images"][:N], np.eye(10, dtype=np.int64)[tiny300["labels"][:N]]


def test_gce_is_cross_entropy_at_small_q_and_bounded_mae_at_q_one():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ce = torch.nn.functional.cross_entropy(logits, targets.argmax(1))
    assert gce_loss(logits, targets, 1e-4).item() == pytest.approx(ce.item(), rel=1e-3)
    probs = torch.softmax(logits, 1)
    assert gce_loss(logits, targets, 1.0).item() == pytest.approx((1 - probs[[0, 1], [0, 2]]).mean().item(), rel=1e-6)


def test_elr_penalty_is_log_one_minus_agreement_with_the_running_prediction():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    history = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # p = (0.5, 0.5): log 0.5; p ~ (1, 0) vs (0, 1): log(1 - 1e-4)
    expected = (np.log(0.5) + np.log(1 - 1e-4)) / 2
    assert elr_penalty(logits, history).item() == pytest.approx(expected, rel=1e-4)


def test_lite_parts_split_the_network_where_asked():
    trunk, top, trunk_id = lite_parts("efficientnet-lite0", 1)
    assert len(trunk.blocks) == 15 and len(top.blocks) == 1 and trunk_id.endswith("trunk15")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = trunk.eval()(x)
        assert maps.shape == (2, 192, 2, 2) and top.eval()(maps).shape == (2, 1280)
    with pytest.raises(ValueError, match="train_blocks"):
        lite_parts("efficientnet-lite0", 17)


@pytest.mark.parametrize("train_blocks, loss", [(0, "gce"), (1, "ce"), ("all", "elr")])
def test_finetune_grades_out_of_fold_and_changes_the_weights(train_blocks, loss, small, tmp_path):
    images, counts = small
    selector = make_selector("finetune", TINY | {"train_blocks": train_blocks, "loss": loss}, seed=0, cache_dir=tmp_path,
                             device="cpu", n_classes=10)
    selector.n_classes_ = 10
    start = {k: v.clone() for k, v in selector._build().state_dict().items()}  # the ImageNet weights
    probs = selector.fit(images, counts).oof_proba(images)
    assert probs.shape == (N, 10) and np.allclose(probs.sum(axis=1), 1)
    for member, (train, held_out) in zip(selector.members_, selector.splits_):
        assert not set(train) & set(held_out)
        np.testing.assert_allclose(probs[held_out], selector._member_probs(member, selector._inputs(images)[held_out]),
                                   atol=1e-6)  # each task is graded by the member that never saw its label
        moved = [k for k, v in member.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, start[k])]
        assert any(k.startswith("0.") for k in moved)  # the pretrained layers themselves were fine-tuned
    before = selector.version
    selector.update(images, counts)
    assert selector.version != before


def test_cached_activations_are_computed_once_per_image(small, tmp_path):
    images, counts = small
    selector = make_selector("finetune", TINY, seed=0, cache_dir=tmp_path, device="cpu")
    selector.fit(images, counts)
    assert selector.embedding_cache_.misses == N
    again = make_selector("finetune", TINY, seed=1, cache_dir=tmp_path, device="cpu")
    again.fit(images, counts)
    assert again.embedding_cache_.misses == 0 and again.embedding_cache_.hits == N
    assert len(list((tmp_path / "embeddings").rglob("*.npy"))) == N


def test_finetune_saves_and_loads_to_identical_posteriors(small, tmp_path):
    images, counts = small
    selector = make_selector("finetune", TINY, seed=0, cache_dir=tmp_path, device="cpu").fit(images, counts)
    selector.save(tmp_path / "saved")
    loaded = Selector.load(tmp_path / "saved")
    np.testing.assert_allclose(loaded.predict_proba(images[:5]), selector.predict_proba(images[:5]), atol=1e-6)


def test_bad_options_are_refused():
    for bad in ({"loss": "mse"}, {"gce_q": 0}, {"elr_beta": 1.0}, {"train_blocks": -1}, {"train_blocks": "some"}, {"epochs": 0}):
        with pytest.raises(ValueError):
            make_selector("finetune", bad)
