"""The gate's power calculation (components/power.py) against simulation: the toy judge's attenuation, and the
comparisons needed for a gain passing the gate's CI rule with the stated power."""

import numpy as np
import pytest

from components.metrics import pairwise_win_rate
from components.power import comparisons_needed, detectable_gain, judge_attenuation


def _judged(better: np.ndarray, noise: float, bias: float, rng) -> np.ndarray:
    """Outcomes (1 / ½ / 0) of a judge asked in both orders, as the toy judge answers: 'A' with probability
    `bias` whatever it saw, else the truth flipped with probability `noise`."""
    def says_first(first_better):
        truth = np.where(rng.random(len(better)) < noise, ~first_better, first_better)
        return np.where(rng.random(len(better)) < bias, True, truth)
    a_first, a_second = says_first(better), ~says_first(~better)  # candidate shown first, then second
    return np.where(a_first & a_second, 1.0, np.where(~a_first & ~a_second, 0.0, 0.5))


def test_judge_attenuation_matches_simulation():
    rng = np.random.default_rng(0)
    out = _judged(np.ones(200_000, bool), 0.1, 0.1, rng)
    assert judge_attenuation(0.1, 0.1) == pytest.approx(0.72)
    assert out.mean() == pytest.approx(0.5 + 0.5 * judge_attenuation(0.1, 0.1), abs=0.005)
    assert judge_attenuation(0.0, 0.0) == 1.0 and judge_attenuation(0.5, 0.0) == 0.0


def test_needed_and_detectable_are_inverse_and_grow_as_expected():
    n = comparisons_needed(0.05, attenuation=0.72, design_effect=1.5)
    assert detectable_gain(n, attenuation=0.72, design_effect=1.5) <= 0.05 < detectable_gain(
        n - 1, attenuation=0.72, design_effect=1.5)
    assert comparisons_needed(0.025) == pytest.approx(4 * comparisons_needed(0.05), rel=0.01)  # 1/δ²
    with pytest.raises(ValueError, match="detectable gain"):
        comparisons_needed(0.0)


def test_power_holds_in_simulation():
    """At the computed n, a true win-rate gain δ passes the gate's rule (bootstrap CI low > ½) ~80% of the time."""
    rng = np.random.default_rng(1)
    delta, att = 0.15, judge_attenuation(0.1, 0.1)
    n = comparisons_needed(delta, attenuation=att)
    passed = []
    for k in range(60):
        better = rng.random(n) < 0.5 + delta
        w = pairwise_win_rate(_judged(better, 0.1, 0.1, rng), np.arange(n), resamples=300, seed=k)
        passed.append(w["ci_low"] > 0.5)
    assert 0.6 <= np.mean(passed) <= 0.97  # 0.8 nominal; sd of a 60-run share ≈ 0.05 (σ ≤ ½ is conservative)
