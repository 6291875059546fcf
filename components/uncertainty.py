"""Reward-model ensemble statistics: how K member rewards become one reward and one uncertainty.

`member_rewards` is always shaped [K members, N completions].
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Aggregation = Literal["mean", "worst_case", "uncertainty_weighted"]


def aggregate(member_rewards: np.ndarray, how: Aggregation, uw_lambda: float = 1.0) -> np.ndarray:
    """One reward per completion from K member rewards.

    mean:                  (1/K) Σ_k r_k
    worst_case:            min_k r_k                      (conservative: a completion is as good as its harshest judge)
    uncertainty_weighted:  mean_k r_k − λ · Var_k r_k     (penalise completions the members disagree on)
    Conservative choices resist over-optimisation of a proxy (Coste et al., reward-model ensembles).
    """
    r = np.asarray(member_rewards, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] < 1:
        raise ValueError(f"member_rewards must be [K, N], got shape {r.shape}")
    if how == "mean":
        return r.mean(axis=0)
    if how == "worst_case":
        return r.min(axis=0)
    if how == "uncertainty_weighted":
        return r.mean(axis=0) - uw_lambda * r.var(axis=0)
    raise ValueError(f"unknown aggregation {how!r}")


def pair_statistics(member_rewards: np.ndarray, chosen: np.ndarray, rejected: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair (chosen[i], rejected[i]) over the members' margins m_k = r_k(chosen) − r_k(rejected):

    margin_std:  std_k m_k   (the ensemble's uncertainty about this pair's orientation)
    agreement:   (1/K) Σ_k [m_k > 0]   (share of members that prefer `chosen`)
    """
    r = np.asarray(member_rewards, dtype=np.float64)
    m = r[:, chosen] - r[:, rejected]
    return {"margin_std": m.std(axis=0), "agreement": (m > 0).mean(axis=0)}
