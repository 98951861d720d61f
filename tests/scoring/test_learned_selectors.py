"""The learned selectors on 96 real CIFAR-10H images with tiny networks and one or two epochs."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.ranking import Strategy
from scoring.selectors import make_selector
from scoring.selectors.learned import LearnedSelector

N = 96
TINY_CNN = {"encoder": "small-cnn", "encoder_options": {"width": 8, "stages": 2}}
OPTIONS = {
    "vanilla": {**TINY_CNN, "epochs": 1, "update_epochs": 1, "batch_size": 32},
    "bald": {**TINY_CNN, "epochs": 1, "update_epochs": 1, "batch_size": 32},
    "coteaching": {**TINY_CNN, "epochs": 2, "update_epochs": 1, "batch_size": 32, "warmup_epochs": 1, "ramp_epochs": 1},
    "ssl-linear": {**TINY_CNN, "byol_epochs": 1, "byol_batch_size": 32, "projector_hidden": 32,
                   "projection_dim": 16, "head_steps": 50, "head_update_steps": 20},
}


@pytest.fixture(scope="module")
def small(tiny300) -> tuple[np.ndarray, np.ndarray]:
    images = tiny300["images"][:N]
    counts = np.eye(10, dtype=np.int64)[tiny300["labels"][:N]]
    return images, counts


def build(name: str, tmp_path, **extra) -> LearnedSelector:
    return make_selector(name, {**OPTIONS[name], **extra}, seed=3, cache_dir=tmp_path, n_classes=10, device=None)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_posteriors_have_the_right_shape_and_sum_to_one(name, small, tmp_path):
    images, counts = small
    selector = build(name, tmp_path).fit(images, counts)
    probs = selector.predict_proba(images)
    assert probs.shape == (N, 10)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    first = selector.version
    more = counts.copy()
    more[:5, 0] += 2  # new re-annotations
    selector.update(images, more)
    assert selector.predict_proba(images).shape == (N, 10)
    assert selector.version != first  # the weights changed, so the version did


def test_same_seed_same_posteriors_other_seed_others(small, tmp_path):
    images, counts = small
    a = build("vanilla", tmp_path).fit_predict_oof(images, counts)
    b = build("vanilla", tmp_path).fit_predict_oof(images, counts)
    c = make_selector("vanilla", OPTIONS["vanilla"], seed=4, n_classes=10).fit_predict_oof(images, counts)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_out_of_fold_posteriors_come_from_models_that_did_not_see_the_task(small, tmp_path):
    images, counts = small
    selector = build("ssl-linear", tmp_path, folds=3).fit(images, counts)
    assert len(selector.members_) == 3
    for member, (train, held_out) in zip(selector.members_, selector.splits_):
        assert not set(train) & set(held_out)
        features = selector._inputs(images[held_out])  # same standardisation as during the fit
        np.testing.assert_allclose(selector.oof_proba(images)[held_out], selector._member_probs(member, features))
    everyone = np.mean([selector._member_probs(m, selector._inputs(images[:7])) for m in selector.members_], axis=0)
    np.testing.assert_allclose(selector.predict_proba(images[:7]), everyone)  # as new tasks: the folds' average
    np.testing.assert_allclose(selector.predict_proba(images)[:7], everyone)  # the fitted array too: no hash switch


def test_bald_gives_distinct_mc_samples_and_feeds_the_bald_rule(small, tmp_path):
    images, counts = small
    selector = build("bald", tmp_path).fit(images, counts)
    samples = selector.predict_proba_samples(images, 4)
    assert samples.shape == (4, N, 10)
    np.testing.assert_allclose(samples.sum(axis=2), 1.0, atol=1e-9)
    assert not np.allclose(samples[0], samples[1])  # dropout is on while sampling
    np.testing.assert_array_equal(samples, selector.predict_proba_samples(images, 4))  # seeded
    strategy = Strategy.build(selector)
    assert strategy.rule.name == "bald"
    assert strategy.priorities(counts, strategy.model_output(images)).priority.shape == (N,)


@pytest.mark.parametrize("name", ["vanilla", "coteaching", "ssl-linear"])
def test_saved_state_round_trip(name, small, tmp_path):
    images, counts = small
    selector = build(name, tmp_path, folds=2 if name == "vanilla" else 0).fit(images, counts)
    path = selector.save(tmp_path / "saved" / name)
    assert sorted(p.name for p in path.iterdir()) == ["arrays.safetensors", "state.json"]  # no temporary left behind
    loaded = LearnedSelector.load(path)
    assert type(loaded) is type(selector)
    assert loaded.version == selector.version
    np.testing.assert_allclose(loaded.predict_proba(images), selector.predict_proba(images), atol=1e-6)
    np.testing.assert_allclose(loaded.predict_proba(images[:10].copy()), selector.predict_proba(images[:10].copy()), atol=1e-5)


def test_bad_input_is_refused_clearly(small, tmp_path):
    images, counts = small
    with pytest.raises(ValueError, match="folds"):
        build("vanilla", tmp_path, folds=1)
    with pytest.raises(ValueError, match="rows of label counts"):
        build("vanilla", tmp_path).fit(images, counts[:-1])
    with pytest.raises(ValueError, match="uint8"):
        build("vanilla", tmp_path).fit(images.astype(np.float32), counts)
    with pytest.raises(RuntimeError, match="not fitted"):
        build("vanilla", tmp_path).predict_proba(images)
    with pytest.raises(ValueError, match="no option"):
        make_selector("ssl-linear", {"byol_epoch": 3})
    with pytest.raises(ValueError, match="pretrain_images"):
        build("ssl-linear", tmp_path, pretrain_images=str(tmp_path / "missing.npy")).fit(images, counts)


def test_coteaching_training_follows_the_forget_rate_schedule(small, tmp_path, monkeypatch):
    import scoring.selectors.coteaching as coteaching

    images, counts = small
    kept = []
    real_split = coteaching.small_loss_split
    monkeypatch.setattr(coteaching, "small_loss_split",
                        lambda a, b, rate: kept.append((len(a), rate)) or real_split(a, b, rate))
    selector = build("coteaching", tmp_path, noise_rate=0.2, epochs=3, warmup_epochs=1, ramp_epochs=2)
    selector.fit(images, counts)
    assert selector.forget_rates_ == pytest.approx([0.0, 0.1, 0.2])
    assert sorted({round(rate, 6) for _, rate in kept}) == [0.0, 0.1, 0.2]  # every batch went through it
    assert selector.members_[0].noise_rate == 0.2  # given, so not estimated
