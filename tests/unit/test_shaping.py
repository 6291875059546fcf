"""Reward shaping (PAR, log-sigmoid) and the adaptive KL controller on hand-built numbers."""

import numpy as np
import pytest

from components.shaping import adaptive_beta, shape


def test_par_is_bounded_centered_and_saturates():
    ref = np.array([[0.0, 2.0]] * 4)
    r = np.array([-50.0, 1.0, 3.0, 50.0])
    s = shape(r, ref, "par")
    assert np.all((s >= 0) & (s <= 1))
    assert s[1] == pytest.approx(0.5)  # midway between the two references: σ(1) and σ(−1) average to ½
    assert np.all(np.diff(s) > 0)  # monotone in the reward
    assert s[3] == pytest.approx(1.0) and s[0] == pytest.approx(0.0)
    # saturation: +47 of proxy reward above the reference earns less than 0.16 of shaped reward
    assert s[3] - s[2] < 0.16


def test_log_sigmoid_is_log_of_bt_probability_and_none_is_identity():
    r, ref = np.array([0.0, 1000.0, -1000.0]), np.zeros((3, 1))
    s = shape(r, ref, "log_sigmoid")
    assert s[0] == pytest.approx(np.log(0.5)) and s[1] == pytest.approx(0.0) and s[2] == pytest.approx(-1000.0)
    assert np.array_equal(shape(r, np.zeros((0, 0)), "none"), r)


def test_shape_rejects_bad_reference_shape():
    with pytest.raises(ValueError, match="ref_rewards"):
        shape(np.zeros(3), np.zeros((2, 1)), "par")


def test_adaptive_kl_moves_beta_toward_target():
    assert adaptive_beta(0.1, kl=4.0, target=2.0, n_steps=10, horizon=100) == pytest.approx(0.1 * 1.02)
    assert adaptive_beta(0.1, kl=1.0, target=2.0, n_steps=10, horizon=100) == pytest.approx(0.1 * 0.98)
    assert adaptive_beta(0.1, kl=2.0, target=2.0, n_steps=10, horizon=100) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        adaptive_beta(0.1, 1.0, 0.0, 1, 1)
