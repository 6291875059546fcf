"""Stage 5, train_policy: DPO from the champion to a candidate checkpoint.

    alignloop run --config configs/tiny.yaml --set train_policy.beta=0.2

Pure over artifacts: (this iteration's preferences, champion path, reference path) -> candidate directory
+ metrics. Iterative online DPO: each iteration trains on pairs sampled from the current champion and
labelled by the ensemble (Xiong et al., explicit proxy RM). The reference is the loop's initial policy by
default (a fixed anchor, so the KL budget in the gate measures total drift), or the previous champion.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from components.config import PolicyConfig


def run(cfg: PolicyConfig, preferences: pa.Table, *, policy_path: str, ref_path: str, out_dir: Path, seed: int
        ) -> dict[str, float]:
    from components.backends.trainers import train_dpo

    pairs = preferences.select(["prompt", "chosen", "rejected"]).to_pylist()
    if not pairs:
        raise ValueError("train_policy: no preference pairs to train on (label kept none: relax "
                         "label.min_margin_over_std or sample more prompts)")
    metrics = train_dpo(policy_path, ref_path, pairs, out_dir, cfg, seed=seed)
    return {"pairs": len(pairs), **metrics}
