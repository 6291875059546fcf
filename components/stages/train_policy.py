"""Stage 5, train_policy: DPO on this iteration's pairs, or online RL against the reward-model ensemble.

    alignloop run --config configs/tiny.yaml --set train_policy.algo=rloo

Pure over artifacts: (preferences, prompts, champion path, reference path, reward-model members) -> candidate
directory + metrics + per-window trajectories.

- `dpo` (default; iterative online DPO, Xiong et al.): trains on the pairs `label` built from the champion's own
  samples with an explicit proxy RM. β, loss variant (sigmoid/ipo/robust), SFT term on chosen (RPO), reference.
  Cheapest per iteration, and the labels were filtered for ensemble confidence.
- `rloo` / `grpo` (online RL, `components.backends.rl`): the policy samples `rl.num_generations` completions per
  prompt of this iteration; the reward is the ensemble aggregate (`label.aggregation`), optionally shaped relative
  to `rl.reference_samples` completions the reference policy wrote for the same prompt (PAR by default, bounded),
  with a fixed or adaptive KL penalty to the reference.

The reference is the loop's initial policy by default (a fixed anchor, so the KL budget in the gate measures
total drift) or the previous champion. After the update a probe samples `probe_samples` completions on
`probe_prompts` held-out prompts and reports, per update: kl_ref = mean log π(y|x) − log π_ref(y|x) (nats per
sequence), entropy_seq = −mean log π(y|x) (nats per sequence; TRL's `entropy` is per token), mean_tokens, and
the proxy reward's mean/std.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from components.config import PolicyConfig
from components.uncertainty import Aggregation, aggregate


def _reference_rewards(cfg: PolicyConfig, ref_path: str, ensemble, prompts: list[str], aggregation, uw_lambda,
                       seed: int) -> dict[str, np.ndarray]:
    """prompt -> aggregate rewards of rl.reference_samples reference-policy completions (what shaping centers on)."""
    from components.backends import hf

    model, tok = hf.load_causal_lm(ref_path)
    gens, _ = hf.generate(model, tok, prompts, cfg.rl.reference_samples, max_new_tokens=cfg.rl.max_new_tokens,
                          temperature=cfg.rl.temperature, top_p=1.0, batch_size=256, seed=seed)
    p = [prompts[g.prompt_index] for g in gens]
    r = aggregate(ensemble.score(p, [g.completion for g in gens]), aggregation, uw_lambda)
    return {prompt: r[i * cfg.rl.reference_samples:(i + 1) * cfg.rl.reference_samples]
            for i, prompt in enumerate(prompts)}


def _rl(cfg, prompts, policy_path, ref_path, reward_models, aggregation, uw_lambda, out_dir, seed) -> dict:
    from components.backends.hf import RewardEnsemble
    from components.backends.rl import train_rl
    from components.shaping import shape

    if not reward_models:
        raise ValueError(f"train_policy.algo={cfg.algo} needs a reward-model ensemble (none was given)")
    prompts = sorted(set(prompts))
    ensemble = RewardEnsemble(reward_models)
    ref_r = (_reference_rewards(cfg, ref_path, ensemble, prompts, aggregation, uw_lambda, seed)
             if cfg.rl.shaping != "none" else {})

    def reward_fn(p: list[str], c: list[str]) -> list[float]:
        r = aggregate(ensemble.score(p, c), aggregation, uw_lambda)
        ref = np.stack([ref_r[x] for x in p]) if ref_r else np.zeros((len(p), 0))
        return shape(r, ref, cfg.rl.shaping).tolist()

    return train_rl(policy_path, ref_path, prompts, reward_fn, out_dir, cfg, seed=seed)


def probe(cfg: PolicyConfig, policy_path: str, ref_path: str, prompts: list[str], reward_models: list[str] | None,
          aggregation: Aggregation, uw_lambda: float, seed: int) -> dict[str, float]:
    """Sequence-level KL to the reference, entropy, length and proxy reward of fresh samples from `policy_path`."""
    from components.backends import hf
    from components.metrics import kl_estimate

    model, tok = hf.load_causal_lm(policy_path)
    ref_model, ref_tok = hf.load_causal_lm(ref_path)
    prompts = prompts[:cfg.probe_prompts]
    gens, _ = hf.generate(model, tok, prompts, cfg.probe_samples, max_new_tokens=cfg.rl.max_new_tokens,
                          temperature=1.0, top_p=1.0, batch_size=256, seed=seed)
    p, c = [prompts[g.prompt_index] for g in gens], [g.completion for g in gens]
    logp = hf.sequence_logprobs(model, tok, p, c)
    out = {"kl_ref": kl_estimate(logp, hf.sequence_logprobs(ref_model, ref_tok, p, c)),
           "entropy_seq": float(-logp.mean()), "mean_tokens": float(np.mean([g.num_tokens for g in gens]))}
    if reward_models:
        r = aggregate(hf.RewardEnsemble(reward_models).score(p, c), aggregation, uw_lambda)
        out.update(proxy_reward_mean=float(r.mean()), proxy_reward_std=float(r.std()))
    return out


def run(cfg: PolicyConfig, preferences: pa.Table, *, prompts: list[str], heldout_prompts: list[str],
        policy_path: str, ref_path: str, reward_models: list[str] | None, aggregation: Aggregation = "mean",
        uw_lambda: float = 1.0, out_dir: Path, seed: int) -> dict:
    """Metrics (floats) plus `history`: the trainer's per-logging-window values, each with its `step`."""
    if cfg.algo == "dpo":
        from components.backends.trainers import train_dpo

        pairs = preferences.select(["prompt", "chosen", "rejected"]).to_pylist()
        if not pairs:
            raise ValueError("train_policy: no preference pairs to train on (label kept none: relax "
                             "label.min_margin_over_std or sample more prompts)")
        metrics = {"pairs": len(pairs), **train_dpo(policy_path, ref_path, pairs, out_dir, cfg, seed=seed)}
    else:
        metrics = _rl(cfg, prompts, policy_path, ref_path, reward_models, aggregation, uw_lambda, out_dir, seed)
    if heldout_prompts:
        metrics.update(probe(cfg, str(out_dir), ref_path, heldout_prompts, reward_models, aggregation, uw_lambda,
                             seed))
    return metrics
