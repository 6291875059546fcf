"""Stage 4, train_reward: retrain the K-member Bradley-Terry reward-model ensemble on all preferences so far.

    alignloop run --config configs/tiny.yaml --set train_reward.members=5

Pure over artifacts: (accumulated preferences, backbone path) -> an ensemble directory `member-0..K-1`
(each a `save_pretrained` reward model) + metrics. Members differ by seed and, with `bootstrap`, by a
bootstrap resample of the training pairs, which is what makes their disagreement a usable uncertainty.
A fixed share of pairs (chosen by a hash of pair_id, so it is stable as data accumulates) is held out
to measure pair accuracy: P[r(chosen) > r(rejected)].
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from components.config import RewardConfig


def is_heldout(pair_id: str, frac: float) -> bool:
    return int(hashlib.sha256(pair_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < frac


def run(cfg: RewardConfig, preferences: pa.Table, *, init_path: str, out_dir: Path, seed: int) -> dict[str, float]:
    from components.backends.hf import RewardEnsemble
    from components.backends.trainers import train_reward_member

    rows = preferences.select(["pair_id", "prompt", "chosen", "rejected"]).to_pylist()
    heldout = [r for r in rows if is_heldout(r["pair_id"], cfg.heldout_frac)]
    train = [r for r in rows if not is_heldout(r["pair_id"], cfg.heldout_frac)]
    if not train:
        raise ValueError("train_reward: no training pairs (all preferences were held out or none exist)")
    metrics: dict[str, float] = {"train_pairs": len(train), "heldout_pairs": len(heldout)}
    paths = []
    for k in range(cfg.members):
        rng = np.random.default_rng([seed, k])
        subset = [train[i] for i in rng.integers(0, len(train), len(train))] if cfg.bootstrap else train
        member_dir = out_dir / f"member-{k}"
        m = train_reward_member(init_path, subset, heldout, member_dir, cfg, seed=seed * 1000 + k)
        metrics.update({f"member_{k}/{name}": v for name, v in m.items()})
        paths.append(str(member_dir))
    if heldout:
        members = RewardEnsemble(paths).score([r["prompt"] for r in heldout] * 2,
                                              [r["chosen"] for r in heldout] + [r["rejected"] for r in heldout])
        n = len(heldout)
        margin = members[:, :n] - members[:, n:]
        metrics["heldout_accuracy_mean_member"] = float((margin > 0).mean())
        metrics["heldout_accuracy_ensemble"] = float((margin.mean(axis=0) > 0).mean())
    return metrics
