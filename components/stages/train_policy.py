"""Stage 5, train_policy: DPO on this iteration's pairs, or online RL against the reward-model ensemble.

    alignloop run --config configs/tiny.yaml --set train_policy.algo=rloo

Pure over artifacts: (preferences, prompts, champion, reference, reward-model ensemble) -> candidate
directory + metrics + per-window trajectories.

- `dpo` (default; iterative online DPO, Xiong et al.): trains on the pairs `label` built from the champion's own
  samples with an explicit proxy RM. β, loss variant (sigmoid/ipo/robust), SFT term on chosen (RPO), reference.
  Cheapest per iteration, and the labels were filtered for ensemble confidence.
- `rloo` / `grpo` (online RL, `components.backends.rl`): the policy samples `rl.num_generations` completions per
  prompt of this iteration; the reward is the ensemble aggregate (`ensemble.aggregation`), optionally shaped relative
  to `rl.reference_samples` completions the reference policy wrote for the same prompt (PAR by default, bounded),
  with a fixed or adaptive KL penalty to the reference.

The reference is the loop's initial policy by default (a fixed anchor, so the KL budget in the gate measures
total drift) or the previous champion. After the update a probe samples `probe.samples` completions on
`probe.prompts` held-out prompts and reports, per update: kl_ref = mean log π(y|x) − log π_ref(y|x) (nats per
sequence), entropy_seq = −mean log π(y|x) (nats per sequence; TRL's `entropy` is per token), mean_tokens, and
the proxy reward's mean/std.
"""

from __future__ import annotations

import numpy as np

from components import chat
from components.config import PolicyConfig
from components.contract import Backends, Inputs, Output, Seeds, StageResult
from components.stages.sample_prompts import heldout_prompts


def models_dtype(models) -> str:
    """`models.dtype` of the loop (the Models object carries its ModelsConfig where the loop has one), else auto."""
    return getattr(getattr(models, "models_cfg", None), "dtype", None) or "auto"


def preference_pairs(table) -> list[dict]:
    """DPO's pairs: prompt (a string or chat messages, `chat.prompts_of`), chosen, rejected, and the policy's
    sampled token ids `chosen_ids`/`rejected_ids` (None for text pairs: imported, judge-written)."""
    prompts = chat.prompts_of(table)
    cols = {c: table[c].to_pylist() if c in table.column_names else [None] * table.num_rows
            for c in ("chosen", "rejected", "chosen_ids", "rejected_ids")}
    return [{"prompt": p, **{c: v[i] for c, v in cols.items()}} for i, p in enumerate(prompts)]


def _reference_rewards(cfg: PolicyConfig, models, ensemble, prompts: list, seed: int) -> dict[str, np.ndarray]:
    """chat.key(prompt) -> aggregate rewards of rl.reference_samples reference-policy completions (what shaping
    centers on)."""
    gens, _ = models.generator("reference").sample(prompts, cfg.rl.reference_samples, seed, top_p=1.0,
                                                   max_new_tokens=cfg.rl.max_new_tokens,
                                                   temperature=cfg.rl.temperature)
    p = [prompts[g.prompt_index] for g in gens]
    r = ensemble.reward(ensemble.score(p, [g.completion for g in gens]))
    models.release("reference")
    return {chat.key(prompt): r[i * cfg.rl.reference_samples:(i + 1) * cfg.rl.reference_samples]
            for i, prompt in enumerate(prompts)}


def _rl(cfg: PolicyConfig, inputs: Inputs, models, out_dir, seed: int) -> dict:
    from components.backends.rl import train_rl
    from components.shaping import shape

    ensemble = models.ensemble()
    if ensemble is None:
        raise ValueError(f"train_policy.algo={cfg.algo} needs a reward-model ensemble (none was given)")
    unique = {chat.key(p): p for p in chat.prompts_of(inputs.table("prompts"))}  # str or chat messages
    prompts = [unique[k] for k in sorted(unique)]
    ref_r = _reference_rewards(cfg, models, ensemble, prompts, seed) if cfg.rl.shaping != "none" else {}

    def reward_fn(p: list, c: list[str]) -> list[float]:
        r = ensemble.reward(ensemble.score(p, c))
        ref = np.stack([ref_r[chat.key(x)] for x in p]) if ref_r else np.zeros((len(p), 0))
        return shape(r, ref, cfg.rl.shaping).tolist()

    return train_rl(models.path("policy"), models.path("reference"), prompts, reward_fn, out_dir, cfg, seed=seed,
                    dtype=models_dtype(models))


def probe(cfg: PolicyConfig, models, policy_dir: str, prompts: list, seed: int) -> dict[str, float]:
    """Sequence-level KL to the reference, entropy, length and proxy reward of fresh samples from the update.
    Prompts are strings or chat messages; chat samples are scored on their sampled ids (the reference too, where
    its vocabulary is the candidate's), plain ones on their text."""
    from components.metrics import kl_estimate

    prompts = prompts[:cfg.probe.prompts]
    gens, _ = models.generator("candidate", path=policy_dir).sample(
        prompts, cfg.probe.samples, seed, max_new_tokens=cfg.probe.max_new_tokens, temperature=1.0, top_p=1.0)
    p, c = [prompts[g.prompt_index] for g in gens], [g.completion for g in gens]
    ids = [g.completion_ids if chat.is_chat(x) else None for x, g in zip(p, gens)]
    logp = models.logprobs("candidate", p, c, path=policy_dir, completion_ids=ids)
    tok = models.causal_lm("candidate", path=policy_dir)[1]
    if not getattr(getattr(models, "models_cfg", None), "keep_loaded", False):
        models.release(policy_dir)  # the reference takes its place
    same = tok.get_vocab() == models.causal_lm("reference")[1].get_vocab()
    ref_logp = models.logprobs("reference", p, c, completion_ids=ids if same else None)
    out = {"train_policy/kl_ref": kl_estimate(logp, ref_logp),
           "train_policy/entropy_seq": float(-logp.mean()),
           "train_policy/mean_tokens": float(np.mean([g.num_tokens for g in gens]))}
    ensemble = models.ensemble()
    if ensemble is not None:
        r = ensemble.reward(ensemble.score(p, c))
        out.update({"train_policy/proxy_reward_mean": float(r.mean()), "train_policy/proxy_reward_std": float(r.std())})
    return out


def run(cfg: PolicyConfig, inputs: Inputs, *, backends: Backends, seed: Seeds) -> StageResult:
    """Inputs `preferences`, `policy` (the champion it starts from), `reference`, optional `prompts` (online RL),
    `pool` (its eval split feeds the probe), `reward_model` (the RL reward and the probe's proxy) -> output
    `candidate`; metrics `train_policy/...` and the trainer's per-window `history`."""
    models, out_dir = backends.models, inputs.out_dir("candidate")
    if cfg.algo == "dpo":
        from components.backends.trainers import train_dpo

        pairs = preference_pairs(inputs.table("preferences"))
        if not pairs:
            raise ValueError("train_policy: no preference pairs to train on (label kept none: relax "
                             "label.min_margin_over_std or sample more prompts)")
        trained = {"pairs": len(pairs), **train_dpo(models.path("policy"), models.path("reference"), pairs, out_dir,
                                                    cfg, seed=seed.value, dtype=models_dtype(models))}
    else:
        trained = _rl(cfg, inputs, models, out_dir, seed.value)
    history = trained.pop("history", [])
    metrics = {f"train_policy/{k}": v for k, v in trained.items()}  # the trainer's summary (backends/trainers.py)
    if inputs.has("pool"):
        held = chat.prompts_of(heldout_prompts(inputs.table("pool"), cfg.probe.prompts, seed.fixed("heldout")))
        metrics.update(probe(cfg, models, str(out_dir), held, seed.value))
    return StageResult(outputs={"candidate": Output("policy", dir=out_dir, meta={"iteration": inputs.iteration})},
                       metrics=metrics,
                       history=[{f"train_policy/trajectory/{k}" if k != "step" else k: v for k, v in w.items()}
                                for w in history])
