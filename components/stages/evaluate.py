"""Stage 6, evaluate + gate: candidate vs champion on held-out prompts, then the promotion decision.

    alignloop run --config configs/tiny.yaml --set evaluate.gate.max_kl=8

Both policies sample `samples_per_prompt` completions for the same held-out prompts (eval split, the same
prompts every iteration so numbers are comparable across iterations). Each completion gets the ensemble
reward (proxy), the gold reward where an oracle exists, and log-probs under its policy and the reference.
Reported per model: proxy/gold reward, KL to reference (nats/sequence), mean length; and paired win rates
of candidate over champion with bootstrap CIs, by the proxy and by the held-out judge. `gating.decide`
turns these into promote / reject with reasons.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from components.config import EvalConfig, GenerateConfig
from components.gating import decide
from components.metrics import kl_estimate, win_rate
from components.stages.sample_prompts import stratified_order
from components.uncertainty import Aggregation, aggregate


def heldout_prompts(pool: pa.Table, n: int, seed: int) -> pa.Table:
    """The fixed held-out set: first n of the eval split in a seeded stratified order."""
    import pyarrow.compute as pc

    ev = pool.filter(pc.equal(pool["split"], "eval"))
    if ev.num_rows == 0:
        raise ValueError("prompt pool has no rows with split == 'eval' (needed for the held-out evaluation)")
    return ev.take(pa.array(stratified_order(ev["source"].to_pylist(), np.random.default_rng(seed))[:n]))


def _sample_and_score(path, prompts, gen: GenerateConfig, n, seed, ref, ensemble, gold, aggregation, uw_lambda):
    from components.backends import hf

    model, tok = hf.load_causal_lm(path)
    texts = prompts["prompt"].to_pylist()
    gens, _ = hf.generate(model, tok, texts, n, max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                          top_p=gen.top_p, batch_size=gen.batch_size, seed=seed)
    p = [texts[g.prompt_index] for g in gens]
    c = [g.completion for g in gens]
    ref_model, ref_tok = ref
    return {
        "prompt_id": [prompts["prompt_id"][g.prompt_index].as_py() for g in gens], "prompt": p, "completion": c,
        "num_tokens": [g.num_tokens for g in gens],
        "proxy_reward": aggregate(ensemble.score(p, c), aggregation, uw_lambda),
        "gold_reward": np.asarray(gold(p, c), float) if gold else np.full(len(c), np.nan),
        "logp_policy": hf.sequence_logprobs(model, tok, p, c),
        "logp_ref": hf.sequence_logprobs(ref_model, ref_tok, p, c),
    }


def run(cfg: EvalConfig, gen: GenerateConfig, prompts: pa.Table, *, candidate_path: str, champion_path: str,
        ref_path: str, reward_models: list[str], gold: Callable | None, aggregation: Aggregation,
        uw_lambda: float, seed: int) -> tuple[pa.Table, dict]:
    from components.backends import hf

    ref = hf.load_causal_lm(ref_path)
    ensemble = hf.RewardEnsemble(reward_models)
    side = {name: _sample_and_score(path, prompts, gen, cfg.samples_per_prompt, seed, ref, ensemble, gold,
                                    aggregation, uw_lambda)
            for name, path in (("candidate", candidate_path), ("champion", champion_path))}
    cand, champ = side["candidate"], side["champion"]
    summary = {name: {"proxy_reward": float(np.mean(s["proxy_reward"])),
                      "gold_reward": float(np.mean(s["gold_reward"])) if gold else None,
                      "kl": kl_estimate(s["logp_policy"], s["logp_ref"]),
                      "mean_tokens": float(np.mean(s["num_tokens"]))} for name, s in side.items()}
    groups = np.asarray(cand["prompt_id"])
    wr = dict(confidence=cfg.confidence, resamples=cfg.bootstrap_resamples, seed=seed)
    report = {"candidate": summary["candidate"], "champion": summary["champion"],
              "proxy_win_rate": win_rate(cand["proxy_reward"], champ["proxy_reward"], groups, **wr)}
    metrics = {"proxy_win_rate_ci_low": report["proxy_win_rate"]["ci_low"], "kl_candidate": summary["candidate"]["kl"],
               "length_ratio": summary["candidate"]["mean_tokens"] / max(summary["champion"]["mean_tokens"], 1e-9)}
    if gold:
        report["heldout_win_rate"] = win_rate(cand["gold_reward"], champ["gold_reward"], groups, **wr)
        metrics["heldout_win_rate_ci_low"] = report["heldout_win_rate"]["ci_low"]
    report["gate"] = decide(metrics, cfg.gate).to_dict()
    samples = pa.concat_tables([pa.table({"model": [name] * len(s["completion"]), **s}) for name, s in side.items()])
    return samples, report
