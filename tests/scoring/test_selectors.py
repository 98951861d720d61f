"""The selector registry, third-party entry points and the built-in selectors that need no training."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import numpy as np
import pytest

import scoring.selectors as registry
from scoring.ranking import Strategy
from scoring.selectors import LinearSelector, available_selectors, make_selector
from scoring.selectors.base import Selector


class ThirdPartySelector(Selector):
    needs_data = False

    def __init__(self, strength: float = 1.0):
        self.strength = strength

    def fit(self, data, label_counts):
        self.n_ = np.asarray(label_counts).shape
        return self

    def predict_proba(self, data):
        return np.full(self.n_, 1.0 / self.n_[1])


def test_third_party_selector_from_entry_point(monkeypatch):
    ep = EntryPoint("mine", f"{__name__}:ThirdPartySelector", "alc.selectors")
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == "alc.selectors" else [])
    assert "mine" in available_selectors()
    selector = make_selector("mine", {"strength": 2.0}, seed=3, true_distribution=None)
    assert isinstance(selector, ThirdPartySelector) and selector.strength == 2.0
    with pytest.raises(ValueError, match="no option"):
        make_selector("mine", {"strenght": 2.0})


def test_unknown_selector_lists_known_ones():
    with pytest.raises(ValueError, match="oracle"):
        make_selector("nope")


def test_posteriors_selector_reads_a_users_npy(tmp_path):
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])
    np.save(tmp_path / "p.npy", probs)
    counts = np.array([[1, 0], [1, 0]])
    strategy = Strategy.build(make_selector("posteriors", posteriors=tmp_path / "p.npy"))
    strategy.selector.fit(None, counts)
    prio = strategy.priorities(counts, strategy.model_output(None)).priority
    assert prio[1] > prio[0]  # the model disagrees with task 1's label
    with pytest.raises(ValueError, match="shape"):
        make_selector("posteriors", posteriors=tmp_path / "p.npy").fit(None, np.array([[1, 0, 0]] * 2))
    with pytest.raises(ValueError, match="not found"):
        make_selector("posteriors", posteriors=tmp_path / "missing.npy").fit(None, counts)
    with pytest.raises(ValueError, match="needs a posteriors file"):
        make_selector("posteriors")


def test_bald_rule_needs_a_sampling_selector():
    with pytest.raises(ValueError, match="Monte-Carlo"):
        Strategy.build(make_selector("random"), "bald")


def test_linear_selector_learns_and_grades_out_of_fold(tiny300):
    images = tiny300["images"]
    labels = tiny300["cifar10h_probs"].argmax(axis=1)
    counts = np.eye(10, dtype=int)[labels]
    selector = LinearSelector(folds=3, image_size=8, seed=0)
    probs = selector.fit_predict_oof(images, counts)
    assert probs.shape == (300, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    in_sample = LinearSelector(folds=1, image_size=8).fit(images, counts).predict_proba(images)
    # out-of-fold posteriors have not memorised the labels: they agree with them less than in-sample ones
    rows = np.arange(300)
    assert probs[rows, labels].mean() < in_sample[rows, labels].mean()
    assert (probs.argmax(axis=1) == labels).mean() > 0.15  # better than chance (0.10)


def test_linear_selector_on_user_features():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    x = np.eye(3)[y] * 3 + rng.normal(0, 0.5, (90, 3))
    probs = LinearSelector(folds=3, c=1.0).fit_predict_oof(x, np.eye(3, dtype=int)[y])
    assert (probs.argmax(axis=1) == y).mean() > 0.9
    with pytest.raises(ValueError, match="needs images"):
        LinearSelector().fit(None, np.eye(3, dtype=int)[y])


def test_linear_selector_whitens_only_with_enough_rows_and_saves_either_model():
    """The whitened PCA appears once the fit has PCA_ROWS_PER_COMPONENT rows per component; the saved
    state of both shapes gives the same posteriors on new data."""
    from scoring.selectors.linear import PCA_ROWS_PER_COMPONENT

    rng = np.random.default_rng(0)
    n, d, components = PCA_ROWS_PER_COMPONENT * 4 + 10, 12, 4
    y = rng.integers(0, 3, n)
    x = np.eye(3)[y] @ rng.normal(0, 1, (3, d)) * 2 + rng.normal(0, 1, (n, d))
    counts = np.eye(3, dtype=int)[y]
    new = rng.normal(0, 1, (5, d))
    for rows, whitened in ((n, True), (n // 2, False)):
        selector = LinearSelector(folds=1, components=components).fit(x[:rows], counts[:rows])
        assert (len(selector.model_) == 3) is whitened
        copy = LinearSelector(folds=1, components=components)
        copy.set_state(selector.get_state())
        np.testing.assert_allclose(copy.predict_proba(new), selector.predict_proba(new))
        assert (selector.predict_proba(x[:rows]).argmax(axis=1) == y[:rows]).mean() > 0.8


@pytest.mark.parametrize("folds", [3, 1])
def test_predict_proba_treats_any_array_as_new_tasks_and_oof_is_asked_for(tiny300, folds):
    """A subset or another order of the fitted images gets the same posteriors, row for row, as the whole
    array: predict_proba never switches to out-of-fold values because an array happens to be the fitted one
    (it used to, by the array's hash: the fitted array got out-of-fold posteriors, any subset of it the
    in-sample model's). Out-of-fold posteriors are asked for with oof_proba / fit_predict_oof."""
    images = tiny300["images"]
    counts = np.eye(10, dtype=int)[tiny300["cifar10h_probs"].argmax(axis=1)]
    selector = LinearSelector(folds=folds, image_size=8, seed=0)
    oof = selector.fit_predict_oof(images, counts)
    whole = selector.predict_proba(images)
    order = np.random.default_rng(0).permutation(300)
    np.testing.assert_allclose(selector.predict_proba(images[order]), whole[order], atol=1e-12)
    np.testing.assert_allclose(selector.predict_proba(images[:50]), whole[:50], atol=1e-12)
    np.testing.assert_array_equal(selector.oof_proba(images), oof)
    assert np.allclose(oof, whole) is (folds == 1)  # out of fold differs from in-sample only with folds
    with pytest.raises(ValueError, match="fitted tasks"):
        if folds > 1:
            selector.oof_proba(images[:50])
        else:
            raise ValueError("fitted tasks")  # without folds there is nothing to guard: the model predicts anything
