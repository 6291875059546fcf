"""How many paired held-out comparisons the gate needs to see a given gain (the gate's power calculation).

The gate promotes when the lower bound of the two-sided `evaluate.confidence` CI of the held-out win rate
exceeds ½: a one-sided test at level α = (1 − confidence)/2. For a true win rate ½ + δ and outcomes with
standard deviation σ (≤ ½ for outcomes in {0, ½, 1}), clustered by prompt with design effect D
(1 + (samples_per_prompt − 1)·ρ, ρ the within-prompt correlation), the comparisons needed for power 1 − β are

    n = D · ((z_{1−α} + z_{1−β}) · σ / δ_obs)²

A judge asked in both orders with flip noise ε and position bias b (answers "A" with probability b whatever it
saw; the toy judge, and what real judges do) scores a truly better completion ½ + ½(1 − b)(1 − 2ε) on average
(1 = preferred in both orders, ½ = inconsistent), so it sees δ_obs = (1 − b)(1 − 2ε)·δ: noise and bias cost
power quadratically, which is why the gate's sample size is chosen with the judge's error rates in it.
"""

from __future__ import annotations

import math
from statistics import NormalDist


def judge_attenuation(noise: float, position_bias: float) -> float:
    """δ_obs / δ for a pairwise judge asked in both orders (module docstring)."""
    return (1 - position_bias) * (1 - 2 * noise)


def comparisons_needed(delta: float, *, confidence: float = 0.95, power: float = 0.8, sd: float = 0.5,
                       design_effect: float = 1.0, attenuation: float = 1.0) -> int:
    """Paired comparisons (prompts × samples) for the gate to pass a true win-rate gain `delta` over ½ with
    probability `power`."""
    if not 0 < delta * attenuation <= 0.5:
        raise ValueError(f"detectable gain must be in (0, ½], got delta={delta} × attenuation={attenuation}")
    z = NormalDist().inv_cdf
    alpha = (1 - confidence) / 2
    return math.ceil(design_effect * ((z(1 - alpha) + z(power)) * sd / (delta * attenuation)) ** 2)


def detectable_gain(n: int, *, confidence: float = 0.95, power: float = 0.8, sd: float = 0.5,
                    design_effect: float = 1.0, attenuation: float = 1.0) -> float:
    """The smallest true win-rate gain over ½ the gate passes with probability `power` from `n` comparisons."""
    z = NormalDist().inv_cdf
    alpha = (1 - confidence) / 2
    return (z(1 - alpha) + z(power)) * sd * math.sqrt(design_effect / n) / attenuation
