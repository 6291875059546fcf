"""Stage 4, train_reward: retrain the K-member Bradley-Terry reward-model ensemble, warm-started, on a replay buffer.

    alignloop run --config configs/tiny.yaml --set ensemble.members=5

Pure over artifacts: (accumulated preferences, backbone path, previous ensemble) -> an ensemble directory
`member-0..K-1` (each a `save_pretrained` reward model) + metrics + an accept/keep-previous decision.

- Members differ by seed and, with `bootstrap`, by a bootstrap resample of their training pairs: their
  disagreement is the uncertainty `label` filters on.
- `shared_backbone`: one model, a shared trunk with K heads (`shared/`, components/backends/reward_heads.py),
  replaces the K separate members: one training, and scoring costs about one member.
- Members train independently (`MemberJob`): `backends.map_members` decides where, one after another in this process by
  default, or in parallel on Ray workers (tasks/fanout.py, `fanout.task_runner: ray`).
- A fixed share of pairs (by a hash of pair_id, stable as data accumulates) is held out from every training.
- Without a previous ensemble, members train from `init` on every non-held-out pair for `epochs`, or, when
  `ensemble.pretrained` names non-frozen reward models, from those (member k from the (k mod n)-th).
- Frozen `ensemble.pretrained` reward models are never trained: the ensemble directory holds the trained members
  only, and every stage that loads it adds the frozen ones by path from the config (components.backends.models);
  `ensemble.members: 0` trains nothing (the frozen RMs are the ensemble).
- With one (and `warm_start`), member k starts from previous member k mod K' and trains `warm_epochs` on a replay
  buffer: all newest-iteration pairs + up to `replay_cap` older pairs, of which a `replay_seed_share` is drawn from
  the seed (gold/human-labelled) pairs and the rest with weight replay_recency**age. Cost per iteration is thus
  bounded by the cap, not by the history, and real labels keep a positive share (self-training on the RM's own
  labels otherwise amplifies its biases).
- Reported per member: held-out pair accuracy, ECE of P_BT = σ(r_c − r_r), and (previous members) accuracy on the
  newest iteration's pairs *before* training on them: how well the old RM tracks the moving policy.
- Decision: the retrained ensemble is accepted unless its held-out accuracy (on trusted-label held-out pairs:
  the previous ensemble labelled the others itself) is below the previous one's by more than
  `max_heldout_regression` + `regression_z` paired standard errors; otherwise the caller keeps the previous one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components import chat
from components.config import RewardConfig
from components.contract import Backends, Inputs, Output, Seeds, StageResult
from components.schemas import conform

TRUSTED_SOURCES = ("gold", "human", "imported")  # labels not produced by our own reward models


def is_heldout(pair_id: str, frac: float) -> bool:
    return int(hashlib.sha256(pair_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < frac


def replay_sample(iterations: np.ndarray, seed_mask: np.ndarray, cfg: RewardConfig, rng: np.random.Generator
                  ) -> np.ndarray:
    """Indices of the replay buffer: every pair of the newest iteration, plus up to `replay_cap` older pairs,
    `replay_seed_share` of them uniformly from seed pairs and the rest weighted replay_recency**age."""
    iterations = np.asarray(iterations)
    newest = iterations.max()
    new = np.flatnonzero(iterations == newest)
    old = np.flatnonzero(iterations < newest)
    old_seed, old_rest = old[seed_mask[old]], old[~seed_mask[old]]
    n_seed = min(len(old_seed), round(cfg.replay_cap * cfg.replay_seed_share))
    seeds = rng.choice(old_seed, n_seed, replace=False) if n_seed else old_seed[:0]
    pool = np.concatenate([old_rest, np.setdiff1d(old_seed, seeds)])
    n_rest = min(len(pool), cfg.replay_cap - n_seed)
    rest = pool[:0]
    if n_rest:
        w = cfg.replay_recency ** (newest - iterations[pool]).astype(float)
        rest = rng.choice(pool, n_rest, replace=False, p=w / w.sum())
    return np.sort(np.concatenate([new, seeds, rest]))


def expected_calibration_error(margin: np.ndarray, bins: int) -> float:
    """ECE of the Bradley-Terry probability p = σ(margin) that `chosen` wins: over equal-width bins of the
    confidence max(p, 1 − p), Σ_b (n_b / n) · |accuracy_b − confidence_b|."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(margin, float)))
    conf, correct = np.maximum(p, 1 - p), (p > 0.5).astype(float)
    which = np.minimum(((conf - 0.5) * 2 * bins).astype(int), bins - 1)
    return float(sum(abs(correct[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def _margins(ensemble, rows: list[dict]) -> np.ndarray:
    """r_k(chosen) − r_k(rejected) per member, [K, n]."""
    prompts = [r["prompt"] for r in rows]
    s = ensemble.score(prompts * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
    return s[:, :len(rows)] - s[:, len(rows):]


def _decide(cfg: RewardConfig, prev_ok: np.ndarray, new_ok: np.ndarray) -> tuple[bool, float]:
    """Accept unless the paired drop in ensemble held-out accuracy exceeds the threshold significantly."""
    d = prev_ok.astype(float) - new_ok.astype(float)
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
    regression = float(d.mean())
    return regression <= cfg.max_heldout_regression + cfg.regression_z * se, regression


@dataclass(frozen=True)
class MemberJob:
    """One member's training, self-contained and picklable so another process (a Ray worker) can run it: its
    starting checkpoint is opened through the store there (`inputs`); `out_dir` must be visible to both sides
    (same machine or a shared filesystem)."""

    k: int
    inputs: Inputs
    start: str  # input it starts from: "init" (the backbone), "previous" (warm start from `start_member`), or
    #             "pretrained" (a non-frozen ensemble.pretrained RM: `start_member` is its path or hub id)
    start_member: str  # previous member directory (member-j, or shared) under the previous ensemble, or ""
    pairs: list[dict]  # its training pairs (a bootstrap resample with cfg.bootstrap)
    out_dir: str  # where it saves `member-k`
    cfg: RewardConfig  # with epochs = warm_epochs under warm start
    seed: int

    @property
    def start_path(self) -> str:
        if self.start == "pretrained":
            return self.start_member
        root = self.inputs.path(self.start)
        return str(Path(root) / self.start_member) if self.start_member else root


def train_member(job: MemberJob) -> dict[str, float]:
    from components.backends.trainers import train_reward_member

    return train_reward_member(job.start_path, job.pairs, [], Path(job.out_dir), job.cfg, seed=job.seed)


def _split(cfg: RewardConfig, rows: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(held-out, trusted held-out, training) pairs; held out by a stable hash of pair_id."""
    held = [is_heldout(r["pair_id"], cfg.heldout_frac) for r in rows]
    heldout = [r for r, h in zip(rows, held) if h]
    trusted = [r for r in heldout if r["label_source"] in TRUSTED_SOURCES] or heldout
    return heldout, trusted, [r for r, h in zip(rows, held) if not h]


def _training_set(cfg: RewardConfig, train_all: list[dict], warm: bool, newest: int, seed: Seeds
                  ) -> tuple[list[dict], RewardConfig]:
    """All non-held-out pairs from scratch; warm-started, the replay buffer, for `warm_epochs`."""
    if not warm:
        return train_all, cfg
    idx = replay_sample(np.array([r["iteration"] for r in train_all]),
                        np.array([r["label_source"] in TRUSTED_SOURCES for r in train_all]), cfg,
                        np.random.default_rng(seed.sub("replay")))
    return [train_all[i] for i in idx], cfg.model_copy(update={"epochs": cfg.warm_epochs})


def _rows(inputs: Inputs) -> list[dict]:
    """Every iteration's preferences as dicts, `prompt` a `chat.Prompt` (plain string or conversation)."""
    table = conform(inputs.table("preferences"), "preferences", "train_reward input preferences")
    rows = table.select(["pair_id", "chosen", "rejected", "chosen_ids", "rejected_ids", "label_source",
                         "iteration"]).to_pylist()
    for r, p in zip(rows, chat.prompts_of(table)):
        r["prompt"] = p
    return rows


def _jobs(cfg: RewardConfig, inputs: Inputs, models, train: list[dict], member_cfg: RewardConfig, warm: bool,
          out_dir: Path, seed: Seeds) -> list[MemberJob]:
    """One job per trained member: warm-started from previous member k mod K', else from the non-frozen
    pretrained RMs (round-robin), else from `init`."""
    prev_members = [Path(p).name for p in models.members("previous")]
    starts = models.ensemble_cfg.start_paths
    jobs = []
    for k in range(models.ensemble_cfg.members):
        rng = np.random.default_rng(seed.sub("bootstrap", k))
        subset = [train[i] for i in rng.integers(0, len(train), len(train))] if cfg.bootstrap else train
        if warm:
            start, member = "previous", prev_members[k % len(prev_members)]
        else:
            start, member = ("pretrained", starts[k % len(starts)]) if starts else ("init", "")
        jobs.append(MemberJob(k, inputs, start, member, subset, str(out_dir / f"member-{k}"), member_cfg,
                              seed.sub("member", k)))
    return jobs


def _train(cfg: RewardConfig, inputs: Inputs, backends: Backends, train: list[dict], member_cfg: RewardConfig,
           warm: bool, out_dir: Path, seed: Seeds) -> dict[str, float]:
    import json

    models, members = backends.models, backends.models.ensemble_cfg.members
    out_dir.mkdir(parents=True, exist_ok=True)
    if models.ensemble_cfg.pretrained:  # provenance: the pretrained RMs (frozen ones are added by path on load)
        (out_dir / "pretrained.json").write_text(json.dumps({"frozen": models.ensemble_cfg.frozen_paths,
                                                              "start": models.ensemble_cfg.start_paths}))
    if members == 0:  # only frozen pretrained RMs score: nothing to train
        return {}
    if cfg.shared_backbone:  # one trunk with K heads, trained once (components/backends/reward_heads.py)
        from components.backends.reward_heads import SHARED_DIR, train_reward_heads

        starts = models.ensemble_cfg.start_paths
        start = str(Path(models.members("previous")[0])) if warm else (starts[0] if starts else inputs.path("init"))
        m = train_reward_heads(start, train, out_dir / SHARED_DIR, member_cfg, heads=members, seed=seed.value)
        return {f"train_reward/shared/{n}": m[n] for n in ("train_loss", "seconds", "steps", "dropped_too_long")}
    jobs = _jobs(cfg, inputs, models, train, member_cfg, warm, out_dir, seed)
    out: dict[str, float] = {}
    for job, m in zip(jobs, backends.map_members(train_member, jobs), strict=True):
        out.update({f"train_reward/member_{job.k}/{n}": m[n]
                    for n in ("train_loss", "seconds", "steps", "dropped_too_long")})
    return out


def run(cfg: RewardConfig, inputs: Inputs, *, backends: Backends, seed: Seeds) -> StageResult:
    """Inputs `preferences` (every iteration's), `init` (the backbone), optional `previous` (the ensemble in use)
    -> output `reward_model` (`member-0..K-1` or `shared/`; the frozen pretrained RMs are added by path), with
    `train_reward/accepted` = 1.0 if the caller should use it, 0.0 to keep the previous one."""
    rows = _rows(inputs)
    heldout, trusted, train_all = _split(cfg, rows)
    if not train_all:
        raise ValueError("train_reward: no training pairs (all preferences were held out or none exist)")
    models = backends.models
    previous = models.ensemble("previous", cold_start=False)  # a trained ensemble, not the cold start's RMs
    warm, newest = previous is not None and cfg.warm_start, max(r["iteration"] for r in rows)
    warm = warm and bool(models.members("previous"))
    metrics: dict[str, float] = {"train_reward/heldout_pairs": len(heldout),
                                 "train_reward/heldout_trusted_pairs": len(trusted),
                                 "train_reward/warm_start": float(warm)}
    fresh = [r for r in train_all if r["iteration"] == newest]
    if previous is not None and fresh:  # the ensemble in use, before it sees this iteration's pairs
        m = _margins(previous, fresh)
        metrics.update({f"train_reward/previous_{k}/newest_accuracy": float((m[k] > 0).mean())
                        for k in range(len(m))})
        metrics["train_reward/previous/newest_accuracy_ensemble"] = float((m.mean(0) > 0).mean())
    train, member_cfg = _training_set(cfg, train_all, warm, newest, seed)
    metrics.update({"train_reward/train_pairs": len(train),
                    "train_reward/train_pairs_newest": sum(r["iteration"] == newest for r in train),
                    "train_reward/train_pairs_seed": sum(r["label_source"] in TRUSTED_SOURCES for r in train)})
    out_dir = inputs.out_dir("reward_model")
    metrics.update(_train(cfg, inputs, backends, train, member_cfg, warm, out_dir, seed))
    new = models.ensemble_at(str(out_dir)) if heldout else None
    frozen = len(models.ensemble_cfg.frozen_paths)
    metrics.update(_heldout_decision(cfg, new, previous, heldout, trusted, frozen))
    members = models.ensemble_cfg.members
    return StageResult(outputs={"reward_model": Output("reward_model", dir=out_dir,
                                                       meta={"members": members, "frozen": frozen,
                                                             "iteration": inputs.iteration})},
                       metrics=metrics)


def _row_names(k_total: int, frozen: int) -> list[str]:
    """Metric names of the ensemble's rows: the frozen pretrained RMs first, then the trained members."""
    return [f"frozen_{j}" for j in range(frozen)] + [f"member_{k}" for k in range(k_total - frozen)]


def _heldout_decision(cfg: RewardConfig, new, previous, heldout: list[dict], trusted: list[dict], frozen: int
                      ) -> dict[str, float]:
    """The new ensemble's per-member and ensemble held-out accuracy/ECE, and the accept decision."""
    out: dict[str, float] = {}
    accepted = True
    if heldout:
        margin = _margins(new, heldout)
        for k, name in enumerate(_row_names(len(margin), frozen)):
            out[f"train_reward/{name}/heldout_accuracy"] = float((margin[k] > 0).mean())
            out[f"train_reward/{name}/heldout_ece"] = expected_calibration_error(margin[k], cfg.ece_bins)
        out["train_reward/heldout_accuracy_mean_member"] = float((margin > 0).mean())
        out["train_reward/heldout_accuracy_ensemble"] = float((margin.mean(0) > 0).mean())
        out["train_reward/heldout_ece_ensemble"] = expected_calibration_error(margin.mean(0), cfg.ece_bins)
        if previous is not None:
            new_ok = _margins(new, trusted).mean(0) > 0
            prev_ok = _margins(previous, trusted).mean(0) > 0
            accepted, regression = _decide(cfg, prev_ok, new_ok)
            out.update({"train_reward/trusted_accuracy_previous": float(prev_ok.mean()),
                        "train_reward/trusted_accuracy_new": float(new_ok.mean()),
                        "train_reward/trusted_accuracy_regression": regression})
    out["train_reward/accepted"] = float(accepted)
    return out
