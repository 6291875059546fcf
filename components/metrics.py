"""Evaluation statistics with uncertainty: paired win rates with a prompt-clustered bootstrap CI, and a
sequence-level KL."""

from __future__ import annotations

import numpy as np


def pairwise_win_rate(outcomes: np.ndarray, groups: np.ndarray, *, confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> dict[str, float]:
    """Mean of per-comparison outcomes (1 = candidate won, 0 = lost, ½ = tie or no verdict) with a percentile
    bootstrap CI that resamples *groups* (prompts: comparisons on one prompt are correlated).

    `outcomes[i]` is the i-th comparison, `groups[i]` its prompt. Returns value, ci_low, ci_high, n (comparisons);
    no comparisons gives NaN (which passes no gate check)."""
    outcome = np.asarray(outcomes, float)
    if outcome.size == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(inv, weights=outcome, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(float)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(uniq), size=(resamples, len(uniq)))
    boot = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    alpha = (1 - confidence) / 2
    return {"value": float(outcome.mean()), "ci_low": float(np.quantile(boot, alpha)),
            "ci_high": float(np.quantile(boot, 1 - alpha)), "n": int(outcome.size)}


def win_rate(candidate: np.ndarray, champion: np.ndarray, groups: np.ndarray, *, confidence: float = 0.95,
             resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Win rate of candidate over champion on paired pointwise scores (win 1, tie ½, loss 0).

    `candidate[i]` and `champion[i]` are scores of the i-th paired sample on the same prompt, `groups[i]` that
    prompt; the CI as in `pairwise_win_rate`.
    """
    candidate, champion = np.asarray(candidate, float), np.asarray(champion, float)
    outcome = (candidate > champion) + 0.5 * (candidate == champion)
    return pairwise_win_rate(outcome, groups, confidence=confidence, resamples=resamples, seed=seed)


def kl_estimate(logp_policy: np.ndarray, logp_ref: np.ndarray) -> float:
    """KL(π || π_ref) in nats per sequence, estimated on samples y ~ π: mean of log π(y|x) − log π_ref(y|x)."""
    return float(np.mean(np.asarray(logp_policy, float) - np.asarray(logp_ref, float)))
