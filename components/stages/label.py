"""Stage 3, label: score every completion, build preference pairs, keep only the pairs the labeler is sure of.

    alignloop run --config configs/tiny.yaml --set label.aggregation=worst_case

Labelers (label.labeler):
- `ensemble`: K reward models score every completion; the aggregate (label.aggregation) picks best-vs-worst
  per prompt; a pair is kept only if margin > min_margin_over_std · std_k(margin_k), i.e. outside the
  ensemble's uncertainty. label_source = rm_ensemble.
- before any reward model exists (first iteration), `seed_gold_pairs` random within-prompt pairs are labelled
  by the gold oracle (label_source = gold): the human seed data the reward models start from.
- `gold`: the oracle labels best-vs-worst pairs for every prompt (the upper bound).
Where a gold oracle exists, `oriented_correctly` reports the share of kept pairs that gold agrees with: a
diagnostic only, never used to choose labels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from components import preferences as prefs
from components.config import LabelConfig
from components.uncertainty import aggregate, pair_statistics

Oracle = Callable[[list[str], list[str]], list[float]]


def _pairs_table(prompts, completions, chosen, rejected, margin, margin_std, agreement, source, iteration):
    p = [prompts[i] for i in chosen]
    c = [completions[i] for i in chosen]
    r = [completions[i] for i in rejected]
    return pa.table({
        "pair_id": [prefs.pair_id(*t) for t in zip(p, c, r)], "prompt": p, "chosen": c, "rejected": r,
        "margin": np.asarray(margin, float), "uncertainty": np.asarray(margin_std, float),
        "agreement": np.asarray(agreement, float), "label_source": [source] * len(p),
        "iteration": [iteration] * len(p)})


def run(cfg: LabelConfig, rollouts: pa.Table, *, reward_models: list[str] | None, gold: Oracle | None,
        iteration: int, seed: int) -> tuple[pa.Table, pa.Table, dict[str, float]]:
    """Returns (preferences, scores, metrics)."""
    prompts = rollouts["prompt"].to_pylist()
    completions = rollouts["completion"].to_pylist()
    groups = rollouts["prompt_id"].to_pylist()
    ids = rollouts["rollout_id"].to_pylist()
    gold_r = np.asarray(gold(prompts, completions), float) if gold else None
    score_rows: list[tuple[str, str, float]] = []
    if gold_r is not None:
        score_rows += [(rid, "gold", float(s)) for rid, s in zip(ids, gold_r)]

    if cfg.labeler == "gold" or not reward_models:
        if gold_r is None:
            raise ValueError("no reward model exists yet and no gold oracle is configured to seed one")
        if cfg.labeler == "gold":
            chosen, rejected = prefs.best_vs_worst(groups, gold_r)
        else:
            a, b = prefs.random_pairs(groups, cfg.seed_gold_pairs, np.random.default_rng([seed, iteration]))
            chosen, rejected, distinct = prefs.orient(gold_r, a, b)
            chosen, rejected = chosen[distinct], rejected[distinct]
        margin = gold_r[chosen] - gold_r[rejected]
        n = len(chosen)
        table = _pairs_table(prompts, completions, chosen, rejected, margin, np.zeros(n), np.ones(n), "gold",
                             iteration)
        metrics = {"pairs_built": n, "pairs_kept": n, "kept/gold": n, "kept/rm_ensemble": 0}
    else:
        from components.backends.hf import RewardEnsemble

        members = RewardEnsemble(reward_models).score(prompts, completions)  # [K, N]
        reward = aggregate(members, cfg.aggregation, cfg.uw_lambda)
        for k, row in enumerate(members):
            score_rows += [(rid, f"rm-{k}", float(s)) for rid, s in zip(ids, row)]
        score_rows += [(rid, f"ensemble:{cfg.aggregation}", float(s)) for rid, s in zip(ids, reward)]
        chosen, rejected = prefs.best_vs_worst(groups, reward)
        stats = pair_statistics(members, chosen, rejected)
        margin = reward[chosen] - reward[rejected]
        keep = prefs.confident(margin, stats["margin_std"], cfg.min_margin_over_std)
        table = _pairs_table(prompts, completions, chosen[keep], rejected[keep], margin[keep],
                             stats["margin_std"][keep], stats["agreement"][keep], "rm_ensemble", iteration)
        metrics = {"pairs_built": len(chosen), "pairs_kept": int(keep.sum()), "kept/gold": 0,
                   "kept/rm_ensemble": int(keep.sum()), "ensemble_std_mean": float(members.std(axis=0).mean()),
                   "agreement_mean": float(stats["agreement"].mean()) if len(chosen) else float("nan"),
                   "proxy_reward_mean": float(reward.mean())}
        chosen, rejected = chosen[keep], rejected[keep]
    metrics["kept_frac"] = metrics["pairs_kept"] / max(metrics["pairs_built"], 1)
    if gold_r is not None:
        metrics["gold_reward_mean"] = float(gold_r.mean())
        metrics["oriented_correctly"] = (float((gold_r[chosen] > gold_r[rejected]).mean())
                                         if len(chosen) else float("nan"))
    scores = pa.table({"rollout_id": [r[0] for r in score_rows], "scorer": [r[1] for r in score_rows],
                       "score": [r[2] for r in score_rows]})
    return table, scores, metrics
