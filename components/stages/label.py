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
Cold start without gold (`gold: null`, iteration 0): pretrained reward models (`ensemble.pretrained`) are the
ensemble; without any, random within-prompt pairs (as many as `label.judge.budget` affords, both orders) are
labelled by the judge where its verdict is consistent (label_source = judge); an imported TRL preference file
(`label.seed_preferences`, input `seed_preferences`) is appended as it is (label_source = imported).
With a single scorer (K = 1: std 0, agreement 1) no pair is ever uncertain: a configured judge then gets the
pairs of smallest |margin| within its budget (its consistent verdicts replace the RM's label).
Truncated rollouts (finish_reason = length) are kept, dropped from pairing or penalised (`label.truncated`).
Prompts are plain strings or conversations (components.chat): reward models render them with their own chat
template, the judge and the human queue get them as text.
Human labels imported with `alignloop labels import` are appended as they are (label_source = human).
Where a gold oracle exists, `label/oriented_correctly` (and `label/oriented_correctly/<source>`) report the share
of kept pairs that gold agrees with: diagnostics only, never used to choose labels.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa

from components import chat, routing
from components import preferences as prefs
from components.config import LabelConfig
from components.contract import Backends, Ensemble, Inputs, Output, Seeds, StageResult
from components.human_queue import queue_records
from components.schemas import conform
from components.uncertainty import pair_statistics

log = logging.getLogger(__name__)
SOURCES = ("rm_ensemble", "judge", "human", "gold", "imported")  # imported: label.seed_preferences rows
# the label mix that travels with the preferences ref (into the ledger, `alignloop status` and the report)
MIX = ("label/pairs_built", "label/pairs_kept", "label/kept/rm_ensemble", "label/kept/judge", "label/kept/gold",
       "label/kept/human", "label/kept/imported", "label/judge_calls", "label/oriented_correctly",
       "label/truncated", "label/oracle_calls")


def _pairs_table(prompts, completions, chosen, rejected, margin, margin_std, agreement, source, iteration,
                 ids=None):
    """The preferences table of pairs (chosen[i], rejected[i]) of rollout indices; `ids` = the rollouts' sampled
    token ids (or None), carried into chosen_ids/rejected_ids."""
    p = [prompts[i] for i in chosen]
    c = [completions[i] for i in chosen]
    r = [completions[i] for i in rejected]
    ids = ids if ids is not None else [None] * len(completions)
    return conform(pa.table({
        "pair_id": [prefs.pair_id(chat.key(x), y, z) for x, y, z in zip(p, c, r)], **chat.prompt_columns(p),
        "chosen": c, "rejected": r,
        "chosen_ids": pa.array([ids[i] for i in chosen], pa.list_(pa.int32())),
        "rejected_ids": pa.array([ids[i] for i in rejected], pa.list_(pa.int32())),
        "margin": np.asarray(margin, float), "uncertainty": np.asarray(margin_std, float),
        "agreement": np.asarray(agreement, float),
        "label_source": list(source) if not isinstance(source, str) else [source] * len(p),
        "iteration": pa.array([iteration] * len(p), pa.int64())}), "preferences", "label")


def build_pairs(cfg: LabelConfig, groups: list[str], reward: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    if cfg.pairing == "all_pairs":
        return prefs.all_pairs(groups, reward, cfg.all_pairs_min_margin)
    if cfg.pairing == "rejection_sampling":
        return prefs.rejection_sampling_pairs(groups, reward, cfg.rs_beta, cfg.rs_pairs_per_prompt, rng)
    return prefs.best_vs_worst(groups, reward)


def _ask_judge(judge, prompts, completions, a: np.ndarray, b: np.ndarray) -> list:
    """The judge's outcomes on pairs (a[i], b[i]) ("a" = it prefers a), each asked in both orders; the judge sees
    the conversation as text."""
    return judge.judge_pairs([prefs.pair_id(chat.key(prompts[i]), completions[i], completions[j])
                              for i, j in zip(a, b)], [chat.as_text(prompts[i]) for i in a],
                             [completions[i] for i in a], [completions[j] for j in b])


def label_by_ensemble(cfg: LabelConfig, prompts, completions, groups, members: np.ndarray, reward: np.ndarray,
                      judge, iteration: int, rng: np.random.Generator, ids=None):
    """(preferences, metrics, queue records, (chosen, rejected)) from member scores [K, N] and their aggregate
    `reward` [N], routing uncertain pairs to `judge` (None: no judge). With K = 1 the judge gets the pairs of
    smallest |margin| (std is 0: nothing is uncertain by it)."""
    chosen, rejected = build_pairs(cfg, groups, reward, rng)
    prefs.check_same_prompt(groups, [chat.key(p) for p in prompts], chosen, rejected)
    stats = pair_statistics(members, chosen, rejected)
    margin, std, agree = reward[chosen] - reward[rejected], stats["margin_std"], stats["agreement"]
    unsure = routing.uncertain(margin, std, agree, cfg.min_margin_over_std, cfg.min_agreement)
    offered = (routing.judge_order(unsure, margin, std, cfg.judge.select, rng, single=len(members) == 1,
                                   spend=cfg.judge.spend)
               if judge is not None else np.zeros(0, dtype=np.int64))
    outcomes = _ask_judge(judge, prompts, completions, chosen[offered], rejected[offered]) if judge is not None \
        else []
    routed = routing.resolve(unsure, offered, outcomes, to_human_queue=cfg.uncertain == "human_queue")
    keep = routed.source != ""
    c = np.where(routed.flip, rejected, chosen)  # the judge's orientation where it flipped the ensemble
    r = np.where(routed.flip, chosen, rejected)
    sign = np.where(routed.flip, -1.0, 1.0)
    table = _pairs_table(prompts, completions, c[keep], r[keep], (sign * margin)[keep], std[keep],
                         np.where(routed.flip, 1 - agree, agree)[keep], routed.source[keep], iteration, ids)
    q = routed.to_human
    queue = queue_records([chat.as_text(prompts[i]) for i in chosen[q]], [completions[i] for i in chosen[q]],
                          [completions[i] for i in rejected[q]], margin[q], std[q], agree[q], routed.reason[q],
                          iteration)
    metrics = {"label/pairs_built": len(chosen), "label/ensemble_std_mean": float(members.std(axis=0).mean()),
               "label/agreement_mean": float(agree.mean()) if len(chosen) else float("nan"),
               "label/proxy_reward_mean": float(reward.mean()),
               **routing.routing_metrics(unsure, offered, outcomes, routed)}
    return table, metrics, queue, (c[keep], r[keep])


def label_by_judge(cfg: LabelConfig, prompts, completions, groups, judge, iteration: int,
                   rng: np.random.Generator, ids=None):
    """Cold start without gold or reward models: random within-prompt pairs, as many as the judge's budget affords
    (2 calls each: both orders), labelled where its verdict is consistent (label_source = judge)."""
    a, b = prefs.random_pairs(groups, cfg.judge.budget // 2, rng) if judge is not None else (np.zeros(0, int),) * 2
    outcomes = np.asarray(_ask_judge(judge, prompts, completions, a, b) if len(a) else [], dtype=object)
    settled = np.isin(outcomes, ("a", "b"))
    chosen = np.where(outcomes == "a", a, b)[settled]
    rejected = np.where(outcomes == "a", b, a)[settled]
    n = len(chosen)
    table = _pairs_table(prompts, completions, chosen, rejected, np.zeros(n), np.zeros(n), np.ones(n), "judge",
                         iteration, ids)
    return table, {"label/pairs_built": len(a), "label/judge_pairs_offered": len(a),
                   "label/judge_settled": n}, (chosen, rejected)


def _label_by_gold(cfg: LabelConfig, prompts, completions, groups, gold_r: np.ndarray, iteration: int,
                   rng: np.random.Generator, ids=None):
    """Gold labels: best-vs-worst for every prompt (labeler gold), or `seed_gold_pairs` random within-prompt
    pairs (the seed data before any reward model exists)."""
    if cfg.labeler == "gold":
        chosen, rejected = prefs.best_vs_worst(groups, gold_r)
        asked = len(chosen)
    else:
        a, b = prefs.random_pairs(groups, cfg.seed_gold_pairs, rng)
        chosen, rejected, distinct = prefs.orient(gold_r, a, b)
        chosen, rejected, asked = chosen[distinct], rejected[distinct], len(a)  # a tie was asked too
    prefs.check_same_prompt(groups, [chat.key(p) for p in prompts], chosen, rejected)
    n = len(chosen)
    table = _pairs_table(prompts, completions, chosen, rejected, gold_r[chosen] - gold_r[rejected],
                         np.zeros(n), np.ones(n), "gold", iteration, ids)
    return table, {"label/pairs_built": n, "label/gold_calls": asked}, (chosen, rejected)


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


def _truncation(cfg: LabelConfig, rollouts: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truncated rows, rows that may be paired, aggregate-reward penalty per row) under `label.truncated`."""
    n = rollouts.num_rows
    cut = np.zeros(n, bool)
    if "finish_reason" in rollouts.column_names:
        cut = np.asarray([f == "length" for f in rollouts["finish_reason"].to_pylist()], bool)
    keep = ~cut if cfg.truncated == "drop" else np.ones(n, bool)
    penalty = cut * cfg.truncation_penalty if cfg.truncated == "penalise" else np.zeros(n)
    return cut, keep, penalty


def _label(cfg: LabelConfig, r: dict, sel: np.ndarray, penalty: np.ndarray, backends: Backends, gold_r, iteration,
           rng, score_rows: list):
    """Label the rollouts `sel` (indices into the rollout lists `r`) by gold, the ensemble or the judge; returns
    (table, metrics, queue, (chosen, rejected)) with chosen/rejected indices into `r`."""
    prompts, completions, groups, ids, rids = (r[k] for k in ("prompts", "completions", "groups", "ids", "rids"))
    judge = backends.judge
    ensemble: Ensemble | None = backends.models.ensemble() if backends.models is not None else None
    sub = [[x[i] for i in sel] for x in (prompts, completions, groups, ids)]
    if cfg.labeler == "gold" or (ensemble is None and gold_r is not None):
        if gold_r is None:
            raise ValueError("label.labeler='gold' needs a gold oracle (`gold: toy`)")
        table, metrics, (c, rj) = _label_by_gold(cfg, *sub[:3], gold_r[sel], iteration, rng, sub[3])
        return table, metrics, [], (sel[c], sel[rj])
    if ensemble is None:  # cold start: the judge (if any); seed preferences are appended by `run`
        table, metrics, (c, rj) = label_by_judge(cfg, *sub[:3], judge, iteration, rng, sub[3])
        return table, metrics, [], (sel[c], sel[rj])
    members = ensemble.score(prompts, completions)  # [K, N]
    reward = ensemble.reward(members) - penalty
    for k, row in enumerate(members):
        score_rows += [(rid, f"rm-{k}", float(s)) for rid, s in zip(rids, row)]
    score_rows += [(rid, f"ensemble:{ensemble.aggregation}", float(s)) for rid, s in zip(rids, reward)]
    table, metrics, queue, (c, rj) = label_by_ensemble(cfg, *sub[:3], members[:, sel], reward[sel], judge,
                                                       iteration, rng, sub[3])
    return table, metrics, queue, (sel[c], sel[rj])


def _append(inputs: Inputs, table: pa.Table, metrics: dict, iteration: int) -> pa.Table:
    """Imported human labels (this iteration) and the seed preferences (label.seed_preferences), as they are."""
    for name in ("human", "seed_preferences"):
        if inputs.has(name):
            extra = conform(inputs.table(name), "preferences", f"label input {name}")
            extra = extra.set_column(extra.schema.get_field_index("iteration"), "iteration",
                                     pa.array([iteration] * extra.num_rows, pa.int64()))
            table = pa.concat_tables([table, extra])
    if table.num_rows == 0 and "label/routed" not in metrics:  # not labelled by an ensemble: a cold start
        raise ValueError("label: no preference pair was labelled (no reward model, no gold oracle, no consistent "
                         "judge verdict, no seed preferences): set ensemble.pretrained, label.seed_preferences "
                         "and/or label.judge (with a budget), or `gold: toy`")
    return table


def run(cfg: LabelConfig, inputs: Inputs, *, backends: Backends, seed: Seeds) -> StageResult:
    """Inputs `rollouts`, optional `reward_model` (the ensemble in use), `human` (imported human-labelled
    preferences) and `seed_preferences` (label.seed_preferences), the last two appended as they are -> outputs
    `preferences`, `scores`, and `judge_transcript` when the judge was asked; records `human_queue` for the
    review queue."""
    rollouts, iteration, judge = inputs.table("rollouts"), inputs.iteration, backends.judge
    r = {"prompts": chat.prompts_of(rollouts), "completions": rollouts["completion"].to_pylist(),
         "groups": rollouts["prompt_id"].to_pylist(), "rids": rollouts["rollout_id"].to_pylist(),
         "ids": (rollouts["completion_ids"].to_pylist() if "completion_ids" in rollouts.column_names
                 else [None] * rollouts.num_rows)}
    texts = [chat.as_text(p) for p in r["prompts"]]
    gold_r = backends.gold.score(texts, r["completions"])[0] if backends.gold is not None else None
    rng = np.random.default_rng(seed.value)
    score_rows: list[tuple[str, str, float]] = []
    if gold_r is not None:
        score_rows += [(rid, "gold", float(s)) for rid, s in zip(r["rids"], gold_r)]
    cut, pairable, penalty = _truncation(cfg, rollouts)
    sel = np.flatnonzero(pairable)
    table, metrics, queue, (chosen, rejected) = _label(cfg, r, sel, penalty, backends, gold_r, iteration, rng,
                                                       score_rows)
    metrics["label/truncated"] = int(cut.sum())  # dropped, penalised or kept as label.truncated says
    metrics.setdefault("label/gold_calls", 0)
    if judge is not None:
        metrics.update(judge.stats())
        if (warning := judge.health_warning()) is not None:  # the stage still finishes: its pairs stay uncertain
            log.warning("label, iteration %d: %s", iteration, warning)
    # queries answered by the gold oracle: gold labels, and the toy judge's calls (gold with noise); a pair the
    # judge sees in both orders costs 2, a cache hit nothing. Every arm of benchmarks/continual.py counts on it.
    metrics["label/oracle_calls"] = metrics["label/gold_calls"] + (
        metrics.get("label/judge_calls", 0) if getattr(judge, "is_oracle", False) else 0)
    if gold_r is not None:
        metrics.update(_gold_diagnostics(gold_r, chosen, rejected,
                                         np.asarray(table["label_source"].to_pylist(), dtype=object)))
    table = _append(inputs, table, metrics, iteration)
    return _result(inputs, table, metrics, queue, score_rows, judge, iteration)


def _result(inputs: Inputs, table: pa.Table, metrics: dict, queue: list, score_rows: list, judge, iteration: int
            ) -> StageResult:
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
