"""Reward-model retraining math: the replay buffer and the Bradley-Terry calibration error, on hand-built data."""

import numpy as np
import pytest

from components.config import RewardConfig
from components.stages.train_reward import _decide, expected_calibration_error, replay_sample


def test_replay_keeps_newest_caps_older_and_reserves_seed_share():
    iterations = np.repeat([0, 1, 2, 3], [500, 100, 100, 50])
    seed = iterations == 0  # iteration-0 pairs are the gold seed
    cfg = RewardConfig(replay_cap=200, replay_recency=0.5, replay_seed_share=0.25)
    idx = replay_sample(iterations, seed, cfg, np.random.default_rng(0))
    assert len(set(idx)) == len(idx) == 50 + 200
    assert set(np.flatnonzero(iterations == 3)) <= set(idx)  # every newest pair
    picked = iterations[idx]
    assert (picked == 0).sum() >= 50  # the reserved seed share (more may come through the recency draw)
    # recency: of the 150 non-reserved older draws, iteration 2 (age 1) is favoured over iteration 1 (age 2)
    assert (picked == 2).sum() > (picked == 1).sum()


def test_replay_small_history_takes_everything_and_uniform_when_recency_one():
    iterations = np.array([0, 0, 1, 1, 2])
    idx = replay_sample(iterations, iterations == 0, RewardConfig(replay_cap=100), np.random.default_rng(0))
    assert list(idx) == [0, 1, 2, 3, 4]
    iterations = np.repeat([0, 1, 2], [1000, 1000, 10])
    cfg = RewardConfig(replay_cap=400, replay_recency=1.0, replay_seed_share=0.0)
    picked = iterations[replay_sample(iterations, np.zeros(2010, bool), cfg, np.random.default_rng(1))]
    assert abs((picked == 0).sum() - (picked == 1).sum()) < 80


def test_ece_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    # calibrated: a pair with BT probability p is correctly oriented with probability p
    true_margin = rng.normal(0, 2, 20000)
    flip = rng.random(20000) > 1 / (1 + np.exp(-true_margin))
    margin = np.where(flip, -true_margin, true_margin)  # the model's margin on the labelled orientation
    assert expected_calibration_error(margin, 10) < 0.02
    # overconfident: same orientations, margins ×10
    assert expected_calibration_error(10 * margin, 10) > 0.1
    assert expected_calibration_error(np.array([5.0, 5.0]), 10) == pytest.approx(1 - 1 / (1 + np.exp(-5.0)))


def test_regression_decision_threshold_and_noise():
    cfg = RewardConfig(max_heldout_regression=0.02, regression_z=1.64)
    same = np.ones(200, bool)
    assert _decide(cfg, same, same)[0]
    worse = same.copy()
    worse[:40] = False  # 20 points worse on 200 pairs: significant
    accepted, regression = _decide(cfg, same, worse)
    assert not accepted and regression == pytest.approx(0.2)
    one_worse = np.arange(10) > 0  # 1 of 10 held-out pairs lost: 10 points, but within noise at n = 10
    assert _decide(cfg, same[:10], one_worse)[0]
