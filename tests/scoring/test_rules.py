"""Priority rules: the properties the method relies on, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoring.majority import has_strict_majority, majority_label
from scoring.rules import BUILTIN_RULES, Priorities, get_rule, normalised_entropy

C = 4
PROB_RULES = ["alc", "alc-clipped", "ce", "self-confidence", "activelab"]


def one_hot(labels, c=C):
    return np.eye(c, dtype=int)[labels]


def three_tasks():
    """Task 0: model confidently disagrees with the label. 1: ambiguous image. 2: model agrees."""
    counts = one_hot([0, 0, 0])
    probs = np.array(
        [
            [0.02, 0.94, 0.02, 0.02],  # clear mistake
            [0.25, 0.25, 0.25, 0.25],  # ambiguous
            [0.94, 0.02, 0.02, 0.02],  # agreement
        ]
    )
    return counts, probs


@pytest.mark.parametrize("name", ["alc", "alc-clipped"])
def test_clear_mistake_first_ambiguous_next_agreement_last(name):
    counts, probs = three_tasks()
    prio = get_rule(name)(counts, probs).priority
    assert prio[0] > prio[1] > prio[2]


def test_alc_components_are_normalised_ce_and_entropy():
    counts, probs = three_tasks()
    out = get_rule("alc")(counts, probs)
    assert isinstance(out, Priorities)
    np.testing.assert_allclose(out.ambiguity[1], 1.0)  # uniform posterior: entropy log C / log C
    np.testing.assert_allclose(out.noisiness[0], -np.log(0.02) / np.log(C))
    np.testing.assert_allclose(out.priority, out.noisiness - out.ambiguity)


def test_clipped_rule_ignores_entropy_below_threshold():
    counts = one_hot([0, 0])
    probs = np.array([[0.97, 0.01, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25]])
    out = get_rule("alc-clipped")(counts, probs)
    h = normalised_entropy(probs)
    assert h[0] < 0.3 < h[1]
    np.testing.assert_allclose(out.priority[0], out.noisiness[0])
    np.testing.assert_allclose(out.priority[1], out.noisiness[1] - (h[1] - 0.3))


@pytest.mark.parametrize("name", ["alc", "alc-clipped", "ce"])
def test_scaling_counts_leaves_priority_unchanged(name):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, size=(50, C))
    counts[:, 0] += 1
    probs = rng.dirichlet(np.ones(C), size=50)
    a = get_rule(name)(counts, probs).priority
    b = get_rule(name)(7 * counts, probs).priority
    np.testing.assert_allclose(a, b)


@pytest.mark.parametrize("name", ["ce", "self-confidence", "activelab"])
def test_disagreement_outranks_agreement_for_every_library_sign(name):
    counts, probs = three_tasks()
    prio = get_rule(name)(counts, probs).priority
    assert prio[0] > prio[2]


def test_activelab_uses_all_the_counts():
    """A task with three agreeing labels needs a second look less than one with a single label."""
    counts = np.array([[1, 0, 0, 0], [3, 0, 0, 0]] + [[0, 1, 0, 0]] * 8)
    probs = np.array([[0.4, 0.3, 0.2, 0.1]] * 10)
    prio = get_rule("activelab")(counts, probs).priority
    assert prio[0] > prio[1]


def test_bald_mutual_information():
    agree = np.tile(np.array([[0.7, 0.1, 0.1, 0.1]]), (5, 1, 1))  # (S=5, N=1, C)
    disagree = np.stack([np.roll([0.97, 0.01, 0.01, 0.01], s)[None] for s in range(4)])  # samples disagree
    counts = one_hot([0])
    assert abs(get_rule("bald")(counts, agree).priority[0]) < 1e-9
    assert get_rule("bald")(counts, disagree).priority[0] > 0.5


def test_oracle_prefers_mistakes_that_need_fewest_votes():
    truth = np.array([[0.9, 0.1, 0, 0], [0.6, 0.4, 0, 0], [0.9, 0.1, 0, 0], [0.9, 0.1, 0, 0]])
    counts = np.array([[0, 1, 0, 0], [0, 1, 0, 0], [0, 3, 0, 0], [1, 0, 0, 0]])
    prio = get_rule("oracle")(counts, truth).priority
    assert prio[0] > prio[1]  # same deficit, the true class is likelier to be drawn
    assert prio[0] > prio[2]  # fewer true votes missing
    assert prio[3] == -np.inf  # already correct: never chosen


def test_accepts_torch_tensors():
    counts, probs = three_tasks()
    a = get_rule("alc")(torch.tensor(counts), torch.tensor(probs)).priority
    np.testing.assert_allclose(a, get_rule("alc")(counts, probs).priority)


def test_random_rule_is_seeded():
    counts = one_hot([0] * 20)
    rule = get_rule("random")
    np.testing.assert_array_equal(rule(counts, None, seed=3).priority, rule(counts, None, seed=3).priority)
    assert not np.array_equal(rule(counts, None, seed=3).priority, rule(counts, None, seed=4).priority)


BAD_INPUTS = {
    "row of zero counts": (np.array([[1, 0], [0, 0]]), np.array([[0.5, 0.5], [0.5, 0.5]]), "no label"),
    "posteriors not summing to 1": (np.array([[1, 0]]), np.array([[0.5, 0.4]]), "sum to 1"),
    "NaN posteriors": (np.array([[1, 0]]), np.array([[np.nan, 0.5]]), "NaN"),
    "NaN counts": (np.array([[1.0, np.nan]]), np.array([[0.5, 0.5]]), "NaN"),
    "shape mismatch": (np.array([[1, 0, 0]]), np.array([[0.5, 0.5]]), "shape"),
    "one class": (np.array([[1]]), np.array([[1.0]]), "at least 2 classes"),
    "negative counts": (np.array([[2, -1]]), np.array([[0.5, 0.5]]), "negative"),
}


@pytest.mark.parametrize("name", PROB_RULES + ["oracle"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_a_clear_value_error(name, case):
    counts, probs, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        get_rule(name)(counts, probs)


def test_bald_rejects_bad_samples():
    with pytest.raises(ValueError, match="3-D"):
        get_rule("bald")(one_hot([0]), np.array([[0.25] * 4]))
    with pytest.raises(ValueError, match="shape"):
        get_rule("bald")(one_hot([0, 1]), np.full((3, 1, C), 0.25))


def test_unknown_rule_lists_the_known_ones():
    with pytest.raises(ValueError, match="alc-clipped"):
        get_rule("nope")


def test_every_builtin_rule_returns_three_components():
    counts, probs = three_tasks()
    for name, rule in BUILTIN_RULES.items():
        model_output = np.stack([probs, probs]) if rule.input == "samples" else probs
        out = rule(counts, model_output, seed=0)
        assert {a.shape for a in (out.priority, out.noisiness, out.ambiguity)} == {(3,)}, name


@pytest.mark.parametrize(
    "row, settled",
    [([1, 0, 0], False), ([1, 1, 0], False), ([2, 1, 0], True), ([0, 2, 0], True), ([2, 2, 1], False), ([3, 2, 2], True)],
)
def test_strict_majority(row, settled):
    assert bool(has_strict_majority(np.array(row))) is settled


def test_majority_label_is_none_on_ties():
    assert majority_label(np.array([2, 2, 0])) is None
    assert majority_label(np.array([0, 3, 1])) == 1
    np.testing.assert_array_equal(has_strict_majority(np.array([[2, 1], [1, 1]])), [True, False])
