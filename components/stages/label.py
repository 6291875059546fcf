"""Stage 3, label: score every completion, build preference pairs, label each by the most trusted source that is
sure of it.

    alignloop run --config configs/tiny.yaml --set label.judge.backend=toy --set label.uncertain=human_queue

Labelers (label.labeler):
- `ensemble`: K reward models score every completion; the aggregate (ensemble.aggregation) builds pairs
  (label.pairing: best_vs_worst | all_pairs | rejection_sampling, components.preferences). Pairs the ensemble is
  sure of (margin > min_margin_over_std · std_k(margin_k) and agreement ≥ min_agreement) are labelled by it
  (label_source = rm_ensemble); the others are routed (components.routing): to the judge within its
  per-iteration budget (label_source = judge when its verdict is the same in both orders), then dropped or
  exported to the human review queue.
- before any reward model exists (first iteration), `seed_gold_pairs` random within-prompt pairs are labelled
  by the gold oracle (label_source = gold): the human seed data the reward models start from.
- `gold`: the oracle labels best-vs-worst pairs for every prompt (the upper bound).
Human labels imported with `alignloop labels import` are appended as they are (label_source = human).
Where a gold oracle exists, `label/oriented_correctly` (and `label/oriented_correctly/<source>`) report the share
of kept pairs that gold agrees with: diagnostics only, never used to choose labels.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa

from components import preferences as prefs
from components import routing
from components.config import LabelConfig
from components.contract import Backends, Ensemble, Inputs, Output, Seeds, StageResult
from components.human_queue import queue_records
from components.uncertainty import pair_statistics

log = logging.getLogger(__name__)
SOURCES = ("rm_ensemble", "judge", "human", "gold")
# the label mix that travels with the preferences ref (into the ledger, `alignloop status` and the report)
MIX = ("label/pairs_built", "label/pairs_kept", "label/kept/rm_ensemble", "label/kept/judge", "label/kept/gold",
       "label/kept/human", "label/judge_calls", "label/oriented_correctly")


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


def label_by_ensemble(cfg: LabelConfig, prompts, completions, groups, members: np.ndarray, reward: np.ndarray,
                      judge, iteration: int, rng: np.random.Generator):
    """(preferences, metrics, queue records, (chosen, rejected)) from member scores [K, N] and their aggregate
    `reward` [N], routing uncertain pairs to `judge` (None: no judge)."""
    chosen, rejected = build_pairs(cfg, groups, reward, rng)
    prefs.check_same_prompt(groups, prompts, chosen, rejected)
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
    metrics = {"label/pairs_built": len(chosen), "label/ensemble_std_mean": float(members.std(axis=0).mean()),
               "label/agreement_mean": float(agree.mean()) if len(chosen) else float("nan"),
               "label/proxy_reward_mean": float(reward.mean()),
               **routing.routing_metrics(unsure, offered, outcomes, routed)}
    return table, metrics, queue, (c[keep], r[keep])


def _label_by_gold(cfg: LabelConfig, prompts, completions, groups, gold_r: np.ndarray, iteration: int,
                   rng: np.random.Generator):
    """Gold labels: best-vs-worst for every prompt (labeler gold), or `seed_gold_pairs` random within-prompt
    pairs (the seed data before any reward model exists)."""
    if cfg.labeler == "gold":
        chosen, rejected = prefs.best_vs_worst(groups, gold_r)
    else:
        a, b = prefs.random_pairs(groups, cfg.seed_gold_pairs, rng)
        chosen, rejected, distinct = prefs.orient(gold_r, a, b)
        chosen, rejected = chosen[distinct], rejected[distinct]
    prefs.check_same_prompt(groups, prompts, chosen, rejected)
    n = len(chosen)
    table = _pairs_table(prompts, completions, chosen, rejected, gold_r[chosen] - gold_r[rejected],
                         np.zeros(n), np.ones(n), "gold", iteration)
    return table, {"label/pairs_built": n}, (chosen, rejected)


def _gold_diagnostics(gold_r: np.ndarray, chosen, rejected, sources: np.ndarray) -> dict[str, float]:
    """Share of kept pairs gold agrees with, overall and per label source: diagnostics, never used to label."""
    correct = gold_r[chosen] > gold_r[rejected]
    out = {"label/gold_reward_mean": float(gold_r.mean()),
           "label/oriented_correctly": float(correct.mean()) if len(chosen) else float("nan"),
           "label/correct_pairs": int(correct.sum())}
    for s in SOURCES:
        if (sources == s).any():
            out[f"label/oriented_correctly/{s}"] = float(correct[sources == s].mean())
    return out


def run(cfg: LabelConfig, inputs: Inputs, *, backends: Backends, seed: Seeds) -> StageResult:
    """Inputs `rollouts`, optional `reward_model` (the ensemble in use) and `human` (imported human-labelled
    preferences, appended as they are) -> outputs `preferences`, `scores`, and `judge_transcript` when the judge
    was asked; records `human_queue` for the review queue."""
    rollouts, iteration, judge = inputs.table("rollouts"), inputs.iteration, backends.judge
    prompts, completions = rollouts["prompt"].to_pylist(), rollouts["completion"].to_pylist()
    groups, ids = rollouts["prompt_id"].to_pylist(), rollouts["rollout_id"].to_pylist()
    gold_r = backends.gold.score(prompts, completions)[0] if backends.gold is not None else None
    rng = np.random.default_rng(seed.value)
    score_rows: list[tuple[str, str, float]] = []
    if gold_r is not None:
        score_rows += [(rid, "gold", float(s)) for rid, s in zip(ids, gold_r)]
    queue: list[dict] = []
    ensemble: Ensemble | None = backends.models.ensemble() if backends.models is not None else None
    if cfg.labeler == "gold" or ensemble is None:
        if gold_r is None:
            raise ValueError("no reward model exists yet and no gold oracle is configured to seed one")
        table, metrics, (chosen, rejected) = _label_by_gold(cfg, prompts, completions, groups, gold_r, iteration,
                                                            rng)
    else:
        members = ensemble.score(prompts, completions)  # [K, N]
        reward = ensemble.reward(members)
        for k, row in enumerate(members):
            score_rows += [(rid, f"rm-{k}", float(s)) for rid, s in zip(ids, row)]
        score_rows += [(rid, f"ensemble:{ensemble.aggregation}", float(s)) for rid, s in zip(ids, reward)]
        table, metrics, queue, (chosen, rejected) = label_by_ensemble(cfg, prompts, completions, groups, members,
                                                                      reward, judge, iteration, rng)
    if judge is not None:
        metrics.update(judge.stats())
        if (warning := judge.health_warning()) is not None:  # the stage still finishes: its pairs stay uncertain
            log.warning("label, iteration %d: %s", iteration, warning)
    if gold_r is not None:
        metrics.update(_gold_diagnostics(gold_r, chosen, rejected,
                                         np.asarray(table["label_source"].to_pylist(), dtype=object)))
    if inputs.has("human"):
        human = inputs.table("human")
        human = human.set_column(human.schema.get_field_index("iteration"), "iteration",
                                 pa.array([iteration] * human.num_rows, pa.int64()))
        table = pa.concat_tables([table, human.select(table.column_names).cast(table.schema)])
    kept = table["label_source"].to_pylist()
    for s in SOURCES:
        metrics[f"label/kept/{s}"] = int(sum(x == s for x in kept))
    metrics["label/pairs_kept"] = table.num_rows
    metrics["label/kept_frac"] = table.num_rows / max(metrics["label/pairs_built"], 1)
    scores = pa.table({"rollout_id": [r[0] for r in score_rows], "scorer": [r[1] for r in score_rows],
                       "score": [r[2] for r in score_rows]})
    mix = {k: metrics[k] for k in MIX if k in metrics and metrics[k] == metrics[k]}
    outputs = {"scores": Output("scores", scores)}  # published in this order: the preferences, the stage's result,
    if judge is not None and judge.transcript:       # last
        d = inputs.out_dir("judge_transcript")
        d.mkdir(parents=True)
        (d / "calls.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in judge.transcript))
        outputs["judge_transcript"] = Output("judge_transcript", dir=d)
    outputs["preferences"] = Output("preferences", table, meta={"iteration": iteration, "label": mix})
    return StageResult(outputs=outputs, metrics=metrics, records={"human_queue": queue} if queue else {})
