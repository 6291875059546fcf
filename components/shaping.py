"""Reward shaping and KL control for online RL: pure functions over arrays.

Shaping transforms the ensemble aggregate r(x, y) relative to the rewards r(x, y_ref_j) of J completions the
reference policy wrote for the same prompt (shapes: `reward` [N], `ref_rewards` [N, J]):

    par:          mean_j σ(r − r_ref_j)        bounded in (0, 1), steep near the reference, flat far above it, so
                                               pushing the proxy far past the reference earns ~nothing (PAR,
                                               "Reward Shaping to Mitigate Reward Hacking in RLHF")
    log_sigmoid:  mean_j log σ(r − r_ref_j)    ≤ 0, the log-probability of beating the reference under Bradley-Terry;
                                               emphasises poor completions ("Transforming and Combining Rewards")
    none:         r

The adaptive KL controller is Ziegler et al.'s proportional rule (Fine-Tuning LMs from Human Preferences):
    β ← β · (1 + clip((KL − KL_target) / KL_target, −0.2, 0.2) · n_steps / horizon)
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Shaping = Literal["none", "par", "log_sigmoid"]
KL_ERROR_CLIP = 0.2  # Ziegler et al.: at most a 20% change of β per horizon


def shape(reward: np.ndarray, ref_rewards: np.ndarray, how: Shaping) -> np.ndarray:
    r = np.asarray(reward, dtype=np.float64)
    if how == "none":
        return r
    ref = np.asarray(ref_rewards, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[0] != r.shape[0] or ref.shape[1] < 1:
        raise ValueError(f"ref_rewards must be [N={r.shape[0]}, J>=1], got shape {ref.shape}")
    d = r[:, None] - ref
    if how == "par":
        return (1.0 / (1.0 + np.exp(-d))).mean(axis=1)
    if how == "log_sigmoid":
        return (-np.logaddexp(0.0, -d)).mean(axis=1)  # log σ(d) without overflow
    raise ValueError(f"unknown shaping {how!r}")


def adaptive_beta(beta: float, kl: float, target: float, n_steps: int, horizon: int) -> float:
    """Next β after `n_steps` optimizer steps that measured `kl` (nats/sequence): grows when KL is above
    target, shrinks below it; proportional error clipped to ±0.2."""
    if target <= 0 or horizon <= 0:
        raise ValueError(f"target ({target}) and horizon ({horizon}) must be positive")
    error = float(np.clip((kl - target) / target, -KL_ERROR_CLIP, KL_ERROR_CLIP))
    return beta * (1.0 + error * n_steps / horizon)
