"""The one seed helper: every seed in the loop is SeedSequence(keys) of the loop seed and what it is for."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np


# ---- seeds ----------------------------------------------------------------------------------------------------
def derive_seed(*keys: int | str) -> int:
    """One 32-bit seed from SeedSequence(keys); strings enter as their CRC-32, so (seed, iteration, stage) never
    collides across seeds the way `seed + iteration` did."""
    return int(np.random.SeedSequence([k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys])
               .generate_state(1)[0])


@dataclass(frozen=True)
class Seeds:
    """The seeds of one stage run: `value` for this (loop seed, iteration, stage); `fixed(purpose)` for what must
    stay the same across iterations (the held-out prompt set, the sampling order of the pool)."""

    loop: int
    iteration: int
    stage: str

    @property
    def value(self) -> int:
        return derive_seed(self.loop, self.iteration, self.stage)

    def sub(self, *keys: int | str) -> int:
        """A seed for one part of the stage (member k, shard s, a purpose)."""
        return derive_seed(self.loop, self.iteration, self.stage, *keys)

    def fixed(self, purpose: str) -> int:
        return derive_seed(self.loop, purpose)
