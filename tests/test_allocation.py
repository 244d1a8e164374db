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
    assert np.array_equal(a, b)  # seeded
    # the 0.2 class reaches across the median: all five keep 12; one prompt clearly above (a 0.5) and the one
    # clearly below (0.1) move, so the total stays 96
    assert (a[ties == 0.2] == 12).all() and a[5] == 8 and sorted(a[ties == 0.5].tolist()) == [12, 16]
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


ROUND0 = np.array([1.2e-8, 2.3e-7, 0.0, 5.1e-8, 1.9e-7, 3.0e-8, 8.8e-8, 1.1e-7])  # float noise, policy = base


@pytest.mark.parametrize("rule", ["median_split", "proportional"])
def test_float_noise_below_the_tolerance_gives_uniform_budgets(rule):
    """Round 0 of a LoRA run: ΔEntropy is rounding noise; with an entropy scale of ~2.3 and a relative
    tolerance of 1e-5 every difference is a tie, so every prompt keeps group_size."""
    tol = 1e-5 * 2.3
    sizes = allocate(rule, ROUND0, 12, floor=4, ceiling=24, tol=tol)
    assert (sizes == 12).all() and sizes.sum() == 96
    # without the tolerance the noise decides (the bug): 16/8 or proportional shares
    assert not (allocate(rule, ROUND0, 12, floor=4, ceiling=24) == 12).all()


def test_tie_class_across_the_median_is_uniform_and_budget_neutral():
    # two clearly high, a noisy tie class of four around the median, two clearly low
    delta = np.array([0.9, 0.8, 0.3, 0.3 + 1e-9, 0.3 - 2e-9, 0.3 + 3e-9, 0.01, 0.02])
    for seed in range(5):
        sizes = allocate("median_split", delta, 12, high=16, low=8, tol=1e-6, rng=np.random.default_rng(seed))
        assert sizes.tolist() == [16, 16, 12, 12, 12, 12, 8, 8]
    # unequal sides: three clearly above, one clearly below: only one moves each way
    delta = np.array([0.9, 0.8, 0.7, 0.3, 0.3 + 1e-9, 0.3 - 1e-9, 0.3 + 2e-9, 0.01])
    sizes = allocate("median_split", delta, 12, high=16, low=8, tol=1e-6)
    assert sizes.sum() == 96 and sizes[0] == 16 and sizes[7] == 8 and (sizes[1:7] == 12).all()
    # the tolerance is a real gap: values 1e-3 apart are distinct at tol 1e-6
    distinct = np.arange(8) * 1e-3
    assert sorted(allocate("median_split", distinct, 12, tol=1e-6).tolist()) == [8] * 4 + [16] * 4


def test_proportional_gives_tied_prompts_equal_shares():
    delta = np.array([0.5, 0.5 + 1e-9, 0.1, 0.1 - 1e-9, 0.3, 0.3])
    sizes = allocate("proportional", delta, 12, floor=4, ceiling=24, tol=1e-6)
    assert sizes.sum() == 72 and abs(int(sizes[0]) - int(sizes[1])) <= 1 and abs(int(sizes[2]) - int(sizes[3])) <= 1
    assert sizes[0] > sizes[4] > sizes[2]
    with pytest.raises(ValueError, match="tie tolerance"):
        allocate("proportional", delta, 12, tol=-1.0)
