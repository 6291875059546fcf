"""Stage 3, label: score every completion, build preference pairs, label each by the most trusted source that is
sure of it.

    alignloop run --config configs/tiny.yaml --set label.judge.backend=toy --set label.uncertain=human_queue

Labelers (label.labeler):
- `ensemble`: K reward models score every completion; the aggregate (label.aggregation) builds pairs
  (label.pairing: best_vs_worst | all_pairs | rejection_sampling, components.preferences). Pairs the ensemble is
  sure of (margin > min_margin_over_std · std_k(margin_k) and agreement ≥ min_agreement) are labelled by it
  (label_source = rm_ensemble); the others are routed (components.routing): to the judge within its
  per-iteration budget (label_source = judge when its verdict is the same in both orders), then dropped or
  exported to the human review queue.
- before any reward model exists (first iteration), `seed_gold_pairs` random within-prompt pairs are labelled
  by the gold oracle (label_source = gold): the human seed data the reward models start from.
- `gold`: the oracle labels best-vs-worst pairs for every prompt (the upper bound).
Human labels imported with `alignloop labels import` are appended as they are (label_source = human).
Where a gold oracle exists, `oriented_correctly` (and `oriented_correctly/<source>`) report the share of kept
pairs that gold agrees with: diagnostics only, never used to choose labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from components import preferences as prefs
from components import routing
from components.config import LabelConfig
from components.human_queue import queue_records
from components.judge import JudgeRunner
from components.uncertainty import aggregate, pair_statistics

Oracle = Callable[[list[str], list[str]], list[float]]
SOURCES = ("rm_ensemble", "judge", "human", "gold")


@dataclass
class Labelled:
    preferences: pa.Table
    scores: pa.Table
    metrics: dict[str, float]
    transcript: list[dict] = field(default_factory=list)  # one dict per judge question (components.judge)
    human_queue: list[dict] = field(default_factory=list)  # records for the review queue (components.human_queue)


def _pairs_table(prompts, completions, chosen, rejected, margin, margin_std, agreement, source, iteration):
    p = [prompts[i] for i in chosen]
    c = [completions[i] for i in chosen]
    r = [completions[i] for i in rejected]
    return pa.table({
        "pair_id": [prefs.pair_id(*t) for t in zip(p, c, r)], "prompt": p, "chosen": c, "rejected": r,
        "margin": np.asarray(margin, float), "uncertainty": np.asarray(margin_std, float),
        "agreement": np.asarray(agreement, float),
        "label_source": list(source) if not isinstance(source, str) else [source] * len(p),
        "iteration": [iteration] * len(p)})


def build_pairs(cfg: LabelConfig, groups: list[str], reward: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    if cfg.pairing == "all_pairs":
        return prefs.all_pairs(groups, reward, cfg.all_pairs_min_margin)
    if cfg.pairing == "rejection_sampling":
        return prefs.rejection_sampling_pairs(groups, reward, cfg.rs_beta, cfg.rs_pairs_per_prompt, rng)
    return prefs.best_vs_worst(groups, reward)


def _label_by_ensemble(cfg, prompts, completions, groups, members, judge, iteration, rng):
    """(preferences, metrics, queue records) from ensemble scores [K, N], routing uncertain pairs."""
    reward = aggregate(members, cfg.aggregation, cfg.uw_lambda)
    chosen, rejected = build_pairs(cfg, groups, reward, rng)
    stats = pair_statistics(members, chosen, rejected)
    margin, std, agree = reward[chosen] - reward[rejected], stats["margin_std"], stats["agreement"]
    unsure = routing.uncertain(margin, std, agree, cfg.min_margin_over_std, cfg.min_agreement)
    offered = (routing.judge_order(unsure, margin, std, cfg.judge.select, rng) if judge is not None
               else np.zeros(0, dtype=np.int64))
    outcomes = judge.judge_pairs([prefs.pair_id(prompts[c], completions[c], completions[r])
                                  for c, r in zip(chosen[offered], rejected[offered])],
                                 [prompts[i] for i in chosen[offered]], [completions[i] for i in chosen[offered]],
                                 [completions[i] for i in rejected[offered]]) if judge is not None else []
    routed = routing.resolve(unsure, offered, outcomes, to_human_queue=cfg.uncertain == "human_queue")
    keep = routed.source != ""
    c = np.where(routed.flip, rejected, chosen)  # the judge's orientation where it flipped the ensemble
    r = np.where(routed.flip, chosen, rejected)
    sign = np.where(routed.flip, -1.0, 1.0)
    table = _pairs_table(prompts, completions, c[keep], r[keep], (sign * margin)[keep], std[keep],
                         np.where(routed.flip, 1 - agree, agree)[keep], routed.source[keep], iteration)
    q = routed.to_human
    queue = queue_records([prompts[i] for i in chosen[q]], [completions[i] for i in chosen[q]],
                          [completions[i] for i in rejected[q]], margin[q], std[q], agree[q], routed.reason[q],
                          iteration)
    metrics = {"pairs_built": len(chosen), "ensemble_std_mean": float(members.std(axis=0).mean()),
               "agreement_mean": float(agree.mean()) if len(chosen) else float("nan"),
               "proxy_reward_mean": float(reward.mean()),
               **routing.routing_metrics(unsure, offered, outcomes, routed)}
    return table, metrics, queue, (c[keep], r[keep])


def run(cfg: LabelConfig, rollouts: pa.Table, *, reward_models: list[str] | None, gold: Oracle | None,
        iteration: int, seed: int, judge: JudgeRunner | None = None, human: pa.Table | None = None) -> Labelled:
    """Label one iteration's rollouts; `human` = imported human-labelled preferences to append."""
    prompts = rollouts["prompt"].to_pylist()
    completions = rollouts["completion"].to_pylist()
    groups = rollouts["prompt_id"].to_pylist()
    ids = rollouts["rollout_id"].to_pylist()
    gold_r = np.asarray(gold(prompts, completions), float) if gold else None
    rng = np.random.default_rng([seed, iteration])
    score_rows: list[tuple[str, str, float]] = []
    if gold_r is not None:
        score_rows += [(rid, "gold", float(s)) for rid, s in zip(ids, gold_r)]
    queue: list[dict] = []

    if cfg.labeler == "gold" or not reward_models:
        if gold_r is None:
            raise ValueError("no reward model exists yet and no gold oracle is configured to seed one")
        if cfg.labeler == "gold":
            chosen, rejected = prefs.best_vs_worst(groups, gold_r)
        else:
            a, b = prefs.random_pairs(groups, cfg.seed_gold_pairs, rng)
            chosen, rejected, distinct = prefs.orient(gold_r, a, b)
            chosen, rejected = chosen[distinct], rejected[distinct]
        n = len(chosen)
        table = _pairs_table(prompts, completions, chosen, rejected, gold_r[chosen] - gold_r[rejected],
                             np.zeros(n), np.ones(n), "gold", iteration)
        metrics: dict[str, float] = {"pairs_built": n}
    else:
        from components.backends.hf import RewardEnsemble

        members = RewardEnsemble(reward_models).score(prompts, completions)  # [K, N]
        for k, row in enumerate(members):
            score_rows += [(rid, f"rm-{k}", float(s)) for rid, s in zip(ids, row)]
        reward = aggregate(members, cfg.aggregation, cfg.uw_lambda)
        score_rows += [(rid, f"ensemble:{cfg.aggregation}", float(s)) for rid, s in zip(ids, reward)]
        table, metrics, queue, (chosen, rejected) = _label_by_ensemble(cfg, prompts, completions, groups, members,
                                                                       judge, iteration, rng)
    if judge is not None:
        metrics.update(judge.stats())
    sources = np.asarray(table["label_source"].to_pylist(), dtype=object)
    if gold_r is not None:
        metrics["gold_reward_mean"] = float(gold_r.mean())
        correct = gold_r[chosen] > gold_r[rejected]
        metrics["oriented_correctly"] = float(correct.mean()) if len(chosen) else float("nan")
        metrics["correct_pairs"] = int(correct.sum())
        for s in SOURCES:
            if (sources == s).any():
                metrics[f"oriented_correctly/{s}"] = float(correct[sources == s].mean())
    if human is not None and human.num_rows:
        human = human.set_column(human.schema.get_field_index("iteration"), "iteration",
                                 pa.array([iteration] * human.num_rows, pa.int64()))
        table = pa.concat_tables([table, human.select(table.column_names).cast(table.schema)])
    for s in SOURCES:
        metrics[f"kept/{s}"] = int(sum(x == s for x in table["label_source"].to_pylist()))
    metrics["pairs_kept"] = table.num_rows
    metrics["kept_frac"] = metrics["pairs_kept"] / max(metrics["pairs_built"], 1)
    scores = pa.table({"rollout_id": [r[0] for r in score_rows], "scorer": [r[1] for r in score_rows],
                       "score": [r[2] for r in score_rows]})
    return Labelled(table, scores, metrics, judge.transcript if judge is not None else [], queue)
