"""Stage 1, sample_prompts: this iteration's prompts from the DVC-tracked pool.

    alignloop run --config configs/tiny.yaml          (runs it as the first task of every iteration)

Pure: (pool table, config, iteration, seed) -> prompts table. The train split is put in one seeded,
stratified order (round-robin over `source` strata, shuffled within each), and iteration i takes the next
`n_prompts` rows of that order: no prompt repeats until the pool is used up (dedup against history without
keeping state), every stratum is represented in proportion, and the held-out eval split is never drawn.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.config import SampleConfig


def stratified_order(sources: list[str], rng: np.random.Generator) -> np.ndarray:
    """Row indices interleaving shuffled strata: s1[0], s2[0], ..., s1[1], s2[1], ..."""
    strata: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        strata.setdefault(s, []).append(i)
    shuffled = [rng.permutation(idx).tolist() for _, idx in sorted(strata.items())]
    order = [row for depth in range(max(map(len, shuffled), default=0))
             for s in shuffled if depth < len(s) for row in [s[depth]]]
    return np.asarray(order, dtype=np.int64)


def run(cfg: SampleConfig, pool: pa.Table, *, iteration: int, seed: int) -> pa.Table:
    train = pool.filter(pc.equal(pool["split"], "train"))
    if train.num_rows == 0:
        raise ValueError("prompt pool has no rows with split == 'train'")
    order = stratified_order(train["source"].to_pylist(), np.random.default_rng(seed))
    if cfg.dedup_history:
        start = iteration * cfg.n_prompts
        take = np.take(order, np.arange(start, start + cfg.n_prompts), mode="wrap")
    else:
        take = np.random.default_rng([seed, iteration]).choice(order, size=cfg.n_prompts, replace=True)
    return train.take(pa.array(take))
