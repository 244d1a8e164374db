import numpy as np
import pytest

from aegpo.allocation import allocate

RULES = ["uniform", "median_split", "proportional"]
CASES = {
    "distinct": np.array([0.1, 0.5, 0.3, 0.9, 0.2, 0.05, 0.7, 0.4]),
    "ties": np.array([0.2, 0.2, 0.2, 0.5, 0.5, 0.1, 0.2, 0.2]),
    "all_equal": np.full(8, 0.3),
    "all_zero": np.zeros(8),
    "one_prompt": np.array([0.4]),
    "odd": np.array([0.3, 0.1, 0.2, 0.5, 0.4]),
    "one_dominant": np.array([100.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_total_is_always_the_uniform_budget(rule, case):
    delta = CASES[case]
    sizes = allocate(rule, delta, 12, high=16, low=8, floor=4, ceiling=24, rng=np.random.default_rng(0))
    assert sizes.sum() == 12 * len(delta)
    assert sizes.min() >= 2 and sizes.dtype.kind == "i"
    if rule == "proportional":
        assert sizes.min() >= 4 and sizes.max() <= 24


def test_median_split_gives_high_to_the_upper_half():
    delta = CASES["distinct"]
    sizes = allocate("median_split", delta, 12, high=16, low=8)
    assert set(sizes[delta > np.median(delta)]) == {16} and set(sizes[delta < np.median(delta)]) == {8}


def test_median_split_odd_ties_and_uninformative():
    sizes = allocate("median_split", CASES["odd"], 12, high=16, low=8)
    assert sorted(sizes.tolist()) == [8, 8, 12, 16, 16] and sizes[0] == 12  # the median prompt (0.3) keeps 12
    ties = CASES["ties"]
    a = allocate("median_split", ties, 12, rng=np.random.default_rng(1))
    b = allocate("median_split", ties, 12, rng=np.random.default_rng(1))
    assert np.array_equal(a, b) and (a[ties == 0.5] == 16).all() and a[5] == 8  # seeded tie-break
    assert (allocate("median_split", CASES["all_equal"], 12) == 12).all()
    assert (allocate("median_split", CASES["one_prompt"], 12) == 12).all()


def test_proportional_follows_delta_within_bounds():
    delta = CASES["distinct"]
    sizes = allocate("proportional", delta, 12, floor=4, ceiling=24)
    assert np.all(np.diff(sizes[np.argsort(delta)]) >= 0)  # monotone in ΔEntropy
    dom = allocate("proportional", CASES["one_dominant"], 12, floor=4, ceiling=24)
    assert dom[0] == 24 and dom.sum() == 72 and dom[1:].min() >= 4


@pytest.mark.parametrize("bad, message", [
    (np.array([0.1, np.nan]), "NaN"), (np.array([]), "non-empty"), (np.array([0.1, -0.2]), "≥ 0"),
])
def test_bad_delta_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        allocate("median_split", bad, 12)
    with pytest.raises(ValueError, match="unknown rule"):
        allocate("softmax", np.array([0.1, 0.2]), 12)
