"""The embedded default's judge: the hidden gold reward, made as unreliable as a real LLM judge.

Each ordered question (prompt, shown first, shown second) is answered by comparing the gold rewards, except
that with probability `position_bias` the judge answers "A" whatever it saw, and otherwise with probability
`noise` its answer is flipped; equal gold rewards are answered "tie". It ignores the rubric (the gold reward is
its rubric) and answers with the verdict marker a real judge is asked for. The randomness is a hash of the
question and the seed, so the same question always gets the same answer (as a cached judge would give). A
consistent verdict in both orders is therefore wrong with probability ≈ noise², inconsistent with ≈ 2·noise +
position_bias.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import numpy as np

from components.backends.judge_base import Answer


class ToyJudge:
    is_oracle = True  # its calls are gold-oracle queries (label/oracle_calls, evaluate/oracle_calls)

    def __init__(self, gold: Callable[[list[str], list[str]], list[float]], *, noise: float, position_bias: float,
                 seed: int = 0):
        self.gold, self.noise, self.position_bias, self.seed = gold, noise, position_bias, seed
        self.name = f"toy(noise={noise},position_bias={position_bias},seed={seed})"

    def ask(self, prompt: str, first: str, second: str) -> Answer:
        h = hashlib.sha256(json.dumps([self.seed, prompt, first, second]).encode()).digest()
        u_bias, u_noise = np.random.default_rng(list(h[:16])).random(2)
        g1, g2 = self.gold([prompt, prompt], [first, second])
        if u_bias < self.position_bias:
            return Answer("A", f"position bias (gold {g1:+.2f} vs {g2:+.2f}) [[A]]")
        if g1 == g2:
            return Answer("tie", f"gold {g1:+.2f} vs {g2:+.2f} [[tie]]")
        truth = "B" if g2 > g1 else "A"
        flipped = u_noise < self.noise
        verdict = ("A" if truth == "B" else "B") if flipped else truth
        why = f"gold {g1:+.2f} vs {g2:+.2f}" + (" (noise flip)" if flipped else "")
        return Answer(verdict, f"{why} [[{verdict}]]")
