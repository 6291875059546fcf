"""Stage 6, evaluate + gate: candidate vs champion on held-out prompts, then the promotion decision.

    alignloop run --config configs/tiny.yaml --set evaluate.gate.max_kl=8

Both policies sample `samples_per_prompt` completions for the same held-out prompts (eval split, the same
prompts every iteration so numbers are comparable across iterations). Each completion gets the ensemble
reward (proxy), the gold reward where an oracle exists, and log-probs under its policy and the reference.
Reported per model: proxy/gold reward, KL to reference (nats/sequence), mean length, and the mean
log-likelihood of a fixed regression set of reference completions. Paired, candidate over champion, with
bootstrap CIs: win rates by the proxy and by the held-out judge, the same after removing the part of the
reward that length explains (length-controlled), and the reward-hacking signal. `gating.decide` turns the
flat metrics into promote / reject with reasons.
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

SIDES = ("candidate", "champion")


def heldout_prompts(pool: pa.Table, n: int, seed: int) -> pa.Table:
    """The fixed held-out set: first n of the eval split in a seeded stratified order."""
    import pyarrow.compute as pc

    ev = pool.filter(pc.equal(pool["split"], "eval"))
    if ev.num_rows == 0:
        raise ValueError("prompt pool has no rows with split == 'eval' (needed for the held-out evaluation)")
    return ev.take(pa.array(stratified_order(ev["source"].to_pylist(), np.random.default_rng(seed))[:n]))


def regression_pairs(cfg: EvalConfig, prompts: pa.Table, seed: int) -> tuple[list[str], list[str]] | None:
    """(prompts, reference completions) of the fixed regression set named by `cfg.regression_set`, or None."""
    if cfg.regression_set == "none":
        return None
    if cfg.regression_set == "toy":
        from components.toy.regression import gold_best_reviews

        texts = prompts["prompt"].to_pylist()
        return texts, gold_best_reviews(texts, cfg.regression_best_of, seed)
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(cfg.regression_set)
    except (OSError, pa.ArrowInvalid) as err:
        raise ValueError(f"evaluate.regression_set: {cfg.regression_set} is not a readable Parquet file ({err})"
                         ) from None
    missing = {"prompt", "completion"} - set(table.column_names)
    if missing:
        raise ValueError(f"evaluate.regression_set: {cfg.regression_set} lacks column(s) {sorted(missing)}")
    return table["prompt"].to_pylist(), table["completion"].to_pylist()


def length_residual(reward: np.ndarray, num_tokens: np.ndarray) -> np.ndarray:
    """reward − (a + b·length), least squares over both models' samples pooled: the reward that length does not
    explain, so a longer-is-better proxy cannot win a comparison by verbosity alone (AlpacaEval's LC idea, with
    one linear term)."""
    x = np.stack([np.ones_like(num_tokens, dtype=float), np.asarray(num_tokens, float)], axis=1)
    coef, *_ = np.linalg.lstsq(x, reward, rcond=None)  # min-norm solution when all lengths are equal
    return reward - x @ coef


def reward_hacking(proxy: dict[str, float], heldout: dict[str, float]) -> float:
    """> 0 iff the proxy's win rate is significantly above ½ (CI low > ½) while the held-out win rate is at most
    ½; its size is the smaller of the two margins. ≤ 0 otherwise (the held-out signal rose too, or the proxy
    did not)."""
    return min(proxy["ci_low"] - 0.5, 0.5 - heldout["value"])


def _sample_and_score(path, prompts, gen: GenerateConfig, n, seed, ref, ensemble, gold, aggregation, uw_lambda,
                      regression):
    from components.backends import hf
    from components.stages.generate import sample

    texts = prompts["prompt"].to_pylist()
    # the `generate` stage's engine (vLLM on a GPU); the transformers model scores log-probs either way, and is
    # loaded after a vLLM engine has released the GPU, or before, to be shared, when transformers generates
    sample_cfg = gen.model_copy(update={"samples_per_prompt": n})
    if gen.backend == "vllm":
        gens, _ = sample(sample_cfg, texts, path, seed)
        model, tok = hf.load_causal_lm(path)
    else:
        model, tok = hf.load_causal_lm(path)
        gens, _ = sample(sample_cfg, texts, path, seed, loaded=(model, tok))
    p = [texts[g.prompt_index] for g in gens]
    c = [g.completion for g in gens]
    ref_model, ref_tok = ref
    side = {
        "prompt_id": [prompts["prompt_id"][g.prompt_index].as_py() for g in gens], "prompt": p, "completion": c,
        "num_tokens": [g.num_tokens for g in gens],
        "proxy_reward": aggregate(ensemble.score(p, c), aggregation, uw_lambda),
        "gold_reward": np.asarray(gold(p, c), float) if gold else np.full(len(c), np.nan),
        "logp_policy": hf.sequence_logprobs(model, tok, p, c),
        "logp_ref": hf.sequence_logprobs(ref_model, ref_tok, p, c),
    }
    reg = float(np.mean(hf.sequence_logprobs(model, tok, *regression))) if regression else None
    return side, reg


def flat_metrics(report: dict) -> dict[str, float]:
    """What the gate reads: `candidate.<m>`, `champion.<m>`, `<win rate>.<value|ci_low|ci_high|n>`, `reward_hacking`."""
    flat = {f"{side}.{k}": v for side in SIDES for k, v in report[side].items() if v is not None}
    for key, w in report.items():
        if key.endswith("win_rate"):
            flat.update({f"{key}.{k}": v for k, v in w.items()})
    if "reward_hacking" in report:
        flat["reward_hacking"] = report["reward_hacking"]
    return flat


def run(cfg: EvalConfig, gen: GenerateConfig, prompts: pa.Table, *, candidate_path: str, champion_path: str,
        ref_path: str, reward_models: list[str], gold: Callable | None, aggregation: Aggregation,
        uw_lambda: float, seed: int) -> tuple[pa.Table, dict]:
    from components.backends import hf

    regression = regression_pairs(cfg, prompts, seed)
    ref = hf.load_causal_lm(ref_path)
    ensemble = hf.RewardEnsemble(reward_models)
    scored = {name: _sample_and_score(path, prompts, gen, cfg.samples_per_prompt, seed, ref, ensemble, gold,
                                      aggregation, uw_lambda, regression)
              for name, path in zip(SIDES, (candidate_path, champion_path))}
    side = {name: s for name, (s, _) in scored.items()}
    cand, champ = side["candidate"], side["champion"]
    report = {name: {"proxy_reward": float(np.mean(s["proxy_reward"])),
                     "gold_reward": float(np.mean(s["gold_reward"])) if gold else None,
                     "kl": kl_estimate(s["logp_policy"], s["logp_ref"]),
                     "mean_tokens": float(np.mean(s["num_tokens"])),
                     "regression_logp": scored[name][1]} for name, s in side.items()}
    groups = np.asarray(cand["prompt_id"])
    wr = dict(confidence=cfg.confidence, resamples=cfg.bootstrap_resamples, seed=seed)
    n = len(cand["completion"])
    lengths = np.concatenate([cand["num_tokens"], champ["num_tokens"]])
    signals = {"proxy": "proxy_reward", **({"heldout": "gold_reward"} if gold else {})}
    for signal, column in signals.items():
        report[f"{signal}_win_rate"] = win_rate(cand[column], champ[column], groups, **wr)
        lc = length_residual(np.concatenate([cand[column], champ[column]]), lengths)
        report[f"lc_{signal}_win_rate"] = win_rate(lc[:n], lc[n:], groups, **wr)
    if gold:
        report["reward_hacking"] = reward_hacking(report["proxy_win_rate"], report["heldout_win_rate"])
    metrics = flat_metrics(report)
    report["gate"] = decide(metrics, cfg.gate).to_dict()
    samples = pa.concat_tables([pa.table({"model": [name] * len(s["completion"]), **s}) for name, s in side.items()])
    return samples, report
