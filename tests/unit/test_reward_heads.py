"""The shared-backbone ensemble's bootstrap-weighted Bradley-Terry loss and Poisson weights, on hand-built data."""

import math

import numpy as np
import pytest

from components.backends.reward_heads import bootstrap_bt_loss, poisson_weights


def _nll(margin: float) -> float:  # −log σ(m)
    return math.log1p(math.exp(-margin))


def test_bootstrap_bt_loss_is_mean_over_heads_of_weighted_means():
    torch = pytest.importorskip("torch")
    r_c = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]], requires_grad=True)  # [B=3 pairs, K=2 heads]
    r_r = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 4.0]])
    w = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]])
    head0 = (1 * _nll(1.0) + 2 * _nll(-1.0)) / 3  # pair 2 has weight 0 in head 0
    head1 = (1 * _nll(2.0) + 3 * _nll(-3.0)) / 4
    loss = bootstrap_bt_loss(r_c, r_r, w)
    assert loss.item() == pytest.approx((head0 + head1) / 2, rel=1e-6)
    loss.backward()
    assert r_c.grad[2, 0] == 0 and r_c.grad[0, 1] == 0  # a weight-0 (pair, head) gets no gradient
    assert (r_c.grad[w > 0] < 0).all()  # every counted pair pushes its chosen reward up
    centered = bootstrap_bt_loss(r_c, r_r, w, centering=0.5)
    extra0 = 0.5 * (1 * 1.0**2 + 2 * 1.0**2) / 3  # (r_c + r_r)² per pair, head 0
    extra1 = 0.5 * (1 * 2.0**2 + 3 * 5.0**2) / 4
    assert centered.item() == pytest.approx((head0 + extra0 + head1 + extra1) / 2, rel=1e-6)


def test_bootstrap_bt_loss_head_without_weight_adds_zero():
    torch = pytest.importorskip("torch")
    r_c, r_r = torch.tensor([[1.0, 5.0]]), torch.tensor([[0.0, 0.0]])
    loss = bootstrap_bt_loss(r_c, r_r, torch.tensor([[2.0, 0.0]]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(_nll(1.0) / 2, rel=1e-6)


def test_poisson_weights_per_head_seeded_and_bootstrap_off():
    w = poisson_weights(4000, 3, seed=7, bootstrap=True)
    assert w.shape == (4000, 3) and (w >= 0).all() and (w == np.round(w)).all()
    assert abs(w.mean() - 1) < 0.05 and abs(w.var() - 1) < 0.1  # Poisson(1)
    assert abs((w == 0).mean() - math.exp(-1)) < 0.03  # ~37% of pairs left out of each head, as in a resample
    assert not np.array_equal(w[:, 0], w[:, 1])  # heads see different resamples
    np.testing.assert_array_equal(w, poisson_weights(4000, 3, seed=7, bootstrap=True))
    np.testing.assert_array_equal(w[:, :2], poisson_weights(4000, 2, seed=7, bootstrap=True))  # head k: (seed, k)
    np.testing.assert_array_equal(poisson_weights(5, 2, seed=7, bootstrap=False), np.ones((5, 2)))
