"""Stage 1, sample_prompts: this iteration's prompts from the DVC-tracked pool.

    alignloop run --config configs/tiny.yaml          (runs it as the first task of every iteration)

Pure: (pool table, config, iteration, seed) -> prompts table. The train split is put in one seeded,
stratified order (round-robin over `source` strata, shuffled within each), and iteration i takes the next
`n_prompts` rows of that order: no prompt repeats until the pool is used up (dedup against history without
keeping state), none repeats within an iteration (`sample.when_pool_smaller`), every stratum is represented
in proportion, and the held-out eval split is never drawn.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.config import SampleConfig
from components.contract import Backends, Inputs, Output, Seeds, StageResult

log = logging.getLogger(__name__)


def stratified_order(sources: list[str], rng: np.random.Generator) -> np.ndarray:
    """Row indices interleaving shuffled strata: s1[0], s2[0], ..., s1[1], s2[1], ..."""
    strata: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        strata.setdefault(s, []).append(i)
    shuffled = [rng.permutation(idx).tolist() for _, idx in sorted(strata.items())]
    order = [row for depth in range(max(map(len, shuffled), default=0))
             for s in shuffled if depth < len(s) for row in [s[depth]]]
    return np.asarray(order, dtype=np.int64)


def draw_size(cfg: SampleConfig, n_train: int, warn: bool = True) -> int:
    """Prompts one iteration draws: `n_prompts`, never more than the train split holds (no prompt twice in an
    iteration). A smaller split is an error (when_pool_smaller: error) or caps the draw with a warning (cap)."""
    if cfg.n_prompts <= n_train:
        return cfg.n_prompts
    if cfg.when_pool_smaller == "error":
        raise ValueError(f"sample.n_prompts={cfg.n_prompts} is larger than the prompt pool's train split "
                         f"({n_train} rows): lower sample.n_prompts, grow the pool, or set "
                         "sample.when_pool_smaller=cap to draw all of them once per iteration")
    if warn:
        log.warning("sample.n_prompts=%d is larger than the prompt pool's train split (%d rows): each iteration draws "
                    "all %d once (sample.when_pool_smaller=cap)", cfg.n_prompts, n_train, n_train)
    return n_train


def run(cfg: SampleConfig, inputs: Inputs, *, backends: Backends, seed: Seeds) -> StageResult:
    """Input `pool` (prompt table) -> output `prompts`, this iteration's share of the train split."""
    pool = inputs.table("pool")
    train = pool.filter(pc.equal(pool["split"], "train"))
    if train.num_rows == 0:
        raise ValueError("prompt pool has no rows with split == 'train'")
    n = draw_size(cfg, train.num_rows)
    order = stratified_order(train["source"].to_pylist(), np.random.default_rng(seed.fixed("sample_prompts")))
    if cfg.dedup_history:  # n consecutive rows of the order (mod its length): n <= len(order), so all distinct
        start = inputs.iteration * n
        take = np.take(order, np.arange(start, start + n), mode="wrap")
    else:
        take = np.random.default_rng(seed.value).choice(order, size=n, replace=False)
    table = train.take(pa.array(take))
    return StageResult(outputs={"prompts": Output("prompts", table, meta={"iteration": inputs.iteration})},
                       metrics={"sample_prompts/prompts": table.num_rows,
                                "sample_prompts/strata": len(set(table["source"].to_pylist()))})


def heldout_prompts(pool: pa.Table, n: int, seed: int) -> pa.Table:
    """The fixed held-out set: first n of the eval split in a seeded stratified order."""
    ev = pool.filter(pc.equal(pool["split"], "eval"))
    if ev.num_rows == 0:
        raise ValueError("prompt pool has no rows with split == 'eval' (needed for the held-out evaluation)")
    return ev.take(pa.array(stratified_order(ev["source"].to_pylist(), np.random.default_rng(seed))[:n]))
