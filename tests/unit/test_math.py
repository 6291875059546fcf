"""Pure functions on hand-built data: ensemble statistics, pairs, filtering, win rates (the gate: test_gating.py)."""

import numpy as np
import pytest

from components import preferences as P
from components.metrics import kl_estimate, win_rate
from components.uncertainty import aggregate, pair_statistics

R = np.array([[1.0, 2.0, 0.0],
              [3.0, 2.0, 0.0],
              [2.0, 2.0, 3.0]])  # [K=3 members, N=3 completions]


def test_aggregations():
    np.testing.assert_allclose(aggregate(R, "mean"), [2.0, 2.0, 1.0])
    np.testing.assert_allclose(aggregate(R, "worst_case"), [1.0, 2.0, 0.0])
    np.testing.assert_allclose(aggregate(R, "uncertainty_weighted", 1.0), [2 - 2 / 3, 2.0, 1 - 2.0])
    with pytest.raises(ValueError):
        aggregate(R[0], "mean")


def test_pair_statistics():
    s = pair_statistics(R, np.array([0]), np.array([2]))  # member margins: 1, 3, -1
    np.testing.assert_allclose(s["margin_std"], [np.std([1, 3, -1])])
    np.testing.assert_allclose(s["agreement"], [2 / 3])


def test_best_vs_worst_skips_uninformative_groups():
    groups = ["a", "a", "a", "b", "b"]
    reward = np.array([0.1, 0.9, 0.5, 1.0, 1.0])
    c, r = P.best_vs_worst(groups, reward)
    assert c.tolist() == [1] and r.tolist() == [0]


def test_random_pairs_are_within_groups_distinct_and_balanced():
    groups = ["a"] * 4 + ["b"] * 4
    a, b = P.random_pairs(groups, 6, np.random.default_rng(0))
    pairs = {tuple(sorted(p)) for p in zip(a.tolist(), b.tolist())}
    assert len(pairs) == 6
    assert all(groups[x] == groups[y] for x, y in pairs)
    assert sum(groups[x] == "a" for x, _ in pairs) == 3
    a, _ = P.random_pairs(groups, 100, np.random.default_rng(0))
    assert len(a) == 12  # C(4,2) per group: never more than exist


def test_orient_and_confident():
    reward = np.array([0.0, 1.0, 1.0])
    c, r, keep = P.orient(reward, np.array([0, 1]), np.array([1, 2]))
    assert c[0] == 1 and r[0] == 0 and keep.tolist() == [True, False]
    assert P.confident(np.array([1.0, 1.0, 0.5]), np.array([0.5, 2.0, 0.0]), 1.0).tolist() == [True, False, True]


def test_win_rate_ci_and_ties():
    groups = np.repeat(np.arange(50), 4)
    cand = np.ones(200)
    w = win_rate(cand, np.zeros(200), groups)
    assert w["value"] == 1.0 and w["ci_low"] == 1.0
    w = win_rate(cand, np.ones(200), groups)
    assert w["value"] == 0.5
    rng = np.random.default_rng(0)
    w = win_rate(rng.normal(size=200), rng.normal(size=200), groups)
    assert w["ci_low"] < w["value"] < w["ci_high"] and w["ci_low"] < 0.5 < w["ci_high"]


def test_kl_estimate():
    assert kl_estimate(np.array([-1.0, -2.0]), np.array([-2.0, -4.0])) == pytest.approx(1.5)
