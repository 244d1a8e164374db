import numpy as np
import pytest

from aegpo.config import ParamsError
from aegpo.peaks import select_steps

from aegpo_testing import shipped_params


def test_topk_picks_highest_and_never_the_last_step():
    e = np.array([[0.1, 0.9, 0.3, 0.8, 0.2, 5.0]])  # the last step is not a candidate
    mask = select_steps(e, 2, "topk")
    assert np.flatnonzero(mask[0]).tolist() == [1, 3]


def test_plateau_ties_go_to_the_earlier_step():
    e = np.array([[0.5, 0.5, 0.5, 0.5, 0.1]])
    assert np.flatnonzero(select_steps(e, 2, "topk")[0]).tolist() == [0, 1]
    assert np.flatnonzero(select_steps(e, 2, "peaks", min_spacing=2)[0]).tolist() == [0, 2]


def test_peaks_respect_min_spacing():
    e = np.array([[0.1, 0.9, 0.85, 0.8, 0.2, 0.7, 0.1, 0.0]])
    assert np.flatnonzero(select_steps(e, 2, "topk")[0]).tolist() == [1, 2]
    assert np.flatnonzero(select_steps(e, 2, "peaks", min_spacing=2)[0]).tolist() == [1, 3]
    assert np.flatnonzero(select_steps(e, 2, "peaks", min_spacing=3)[0]).tolist() == [1, 5]


def test_batch_scope_shares_steps():
    e = np.array([[0.9, 0.1, 0.2, 0.0], [0.1, 0.2, 0.9, 0.0]])
    per = select_steps(e, 1, "topk", scope="prompt")
    assert per[0, 0] and per[1, 2]
    batch = select_steps(e, 1, "topk", scope="batch")
    assert (batch[0] == batch[1]).all() and batch.sum() == 2


def test_impossible_k_is_an_error_and_caught_at_config_load():
    with pytest.raises(ValueError, match="cannot choose"):
        select_steps(np.zeros((1, 4)), 4, "topk")
    with pytest.raises(ParamsError, match="aegpo.peaks_k"):
        shipped_params(["train.strategy=aegpo", "sampler.num_steps=4", "aegpo.peaks_k=4"])
    with pytest.raises(ParamsError, match="min_spacing"):
        shipped_params(["train.strategy=aegpo_local", "aegpo.peak_rule=peaks", "aegpo.min_spacing=4",
                        "aegpo.peaks_k=4"])
    with pytest.raises(ValueError, match="NaN"):
        select_steps(np.array([[0.1, np.nan, 0.2]]), 1)


def test_low_direction_picks_troughs_and_still_skips_the_last_step():
    e = np.array([[0.1, 0.9, 0.3, 0.8, 0.2, -5.0]])  # the last step is not a candidate
    assert np.flatnonzero(select_steps(e, 2, "topk", direction="low")[0]).tolist() == [0, 4]
    plateau = np.array([[0.5, 0.5, 0.5, 0.9, 0.1]])  # ties still go to the earlier step
    assert np.flatnonzero(select_steps(plateau, 2, "topk", direction="low")[0]).tolist() == [0, 1]
    with pytest.raises(ValueError, match="aegpo.peak_direction"):
        select_steps(e, 1, direction="sideways")
    with pytest.raises(ParamsError, match="aegpo.peak_direction"):
        shipped_params(["aegpo.peak_direction=sideways"])
