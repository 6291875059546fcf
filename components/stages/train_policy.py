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

from components.config import PolicyConfig
from components.contract import Backends, Inputs, Output, Seeds, StageResult
from components.stages.sample_prompts import heldout_prompts


def _reference_rewards(cfg: PolicyConfig, models, ensemble, prompts: list[str], seed: int) -> dict[str, np.ndarray]:
    """prompt -> aggregate rewards of rl.reference_samples reference-policy completions (what shaping centers on)."""
    gens, _ = models.generator("reference").sample(prompts, cfg.rl.reference_samples, seed, top_p=1.0,
                                                   max_new_tokens=cfg.rl.max_new_tokens,
                                                   temperature=cfg.rl.temperature)
    p = [prompts[g.prompt_index] for g in gens]
    r = ensemble.reward(ensemble.score(p, [g.completion for g in gens]))
    models.release("reference")
    return {prompt: r[i * cfg.rl.reference_samples:(i + 1) * cfg.rl.reference_samples]
            for i, prompt in enumerate(prompts)}


def _rl(cfg: PolicyConfig, inputs: Inputs, models, out_dir, seed: int) -> dict:
    from components.backends.rl import train_rl
    from components.shaping import shape

    ensemble = models.ensemble()
    if ensemble is None:
        raise ValueError(f"train_policy.algo={cfg.algo} needs a reward-model ensemble (none was given)")
    prompts = sorted(set(inputs.table("prompts")["prompt"].to_pylist()))
    ref_r = _reference_rewards(cfg, models, ensemble, prompts, seed) if cfg.rl.shaping != "none" else {}

    def reward_fn(p: list[str], c: list[str]) -> list[float]:
        r = ensemble.reward(ensemble.score(p, c))
        ref = np.stack([ref_r[x] for x in p]) if ref_r else np.zeros((len(p), 0))
        return shape(r, ref, cfg.rl.shaping).tolist()

    return train_rl(models.path("policy"), models.path("reference"), prompts, reward_fn, out_dir, cfg, seed=seed)


def probe(cfg: PolicyConfig, models, policy_dir: str, prompts: list[str], seed: int) -> dict[str, float]:
    """Sequence-level KL to the reference, entropy, length and proxy reward of fresh samples from the update."""
    from components.backends import hf
    from components.metrics import kl_estimate

    model, tok = models.causal_lm("candidate", path=policy_dir)
    ref_model, ref_tok = models.causal_lm("reference")
    prompts = prompts[:cfg.probe.prompts]
    gens, _ = models.generator("candidate", path=policy_dir).sample(
        prompts, cfg.probe.samples, seed, max_new_tokens=cfg.probe.max_new_tokens, temperature=1.0, top_p=1.0)
    p, c = [prompts[g.prompt_index] for g in gens], [g.completion for g in gens]
    logp = hf.sequence_logprobs(model, tok, p, c)
    out = {"train_policy/kl_ref": kl_estimate(logp, hf.sequence_logprobs(ref_model, ref_tok, p, c)),
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

        pairs = inputs.table("preferences").select(["prompt", "chosen", "rejected"]).to_pylist()
        if not pairs:
            raise ValueError("train_policy: no preference pairs to train on (label kept none: relax "
                             "label.min_margin_over_std or sample more prompts)")
        trained = {"pairs": len(pairs), **train_dpo(models.path("policy"), models.path("reference"), pairs, out_dir,
                                                    cfg, seed=seed.value)}
    else:
        trained = _rl(cfg, inputs, models, out_dir, seed.value)
    history = trained.pop("history", [])
    metrics = {f"train_policy/{k}": v for k, v in trained.items()}  # the trainer's summary (backends/trainers.py)
    if inputs.has("pool"):
        held = heldout_prompts(inputs.table("pool"), cfg.probe.prompts, seed.fixed("heldout"))["prompt"].to_pylist()
        metrics.update(probe(cfg, models, str(out_dir), held, seed.value))
    return StageResult(outputs={"candidate": Output("policy", dir=out_dir, meta={"iteration": inputs.iteration})},
                       metrics=metrics,
                       history=[{f"train_policy/trajectory/{k}" if k != "step" else k: v for k, v in w.items()}
                                for w in history])
