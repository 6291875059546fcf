"""Stage 6, evaluate: candidate vs champion on held-out prompts; the gate task decides from its report.

    alignloop run --config configs/tiny.yaml --set evaluate.n_prompts=256

Both policies sample `samples_per_prompt` completions for the same held-out prompts (eval split, the same
prompts every iteration so numbers are comparable across iterations). Each completion gets the ensemble
reward (proxy), the gold reward where an oracle exists, and log-probs under its policy and the reference.
Reported per model: proxy/gold reward, KL to reference (nats/sequence), mean length, and the mean
log-likelihood of a fixed regression set of reference completions. Paired, candidate over champion, with
bootstrap CIs: win rates by the proxy and by the held-out judge, the same after removing the part of the
reward that length explains (length-controlled), and the reward-hacking signal. The gate task
(`components.gating.decide`, config `gate:`) turns the report's flat metrics into promote / reject with reasons,
so a threshold change re-decides from the stored report without re-sampling.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from components.config import EvalConfig
from components.contract import Backends, Inputs, Output, Seeds, StageResult
from components.metrics import kl_estimate, win_rate
from components.stages.sample_prompts import heldout_prompts

SIDES = ("candidate", "champion")


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


def _sample_and_score(side: str, models, prompts: pa.Table, n: int, seed: int, gold, regression):
    """One model's held-out samples, scored: proxy (ensemble aggregate) and gold reward, log-probs under itself
    and the reference; and its mean log-likelihood of the regression set."""
    from components.backends import hf

    texts = prompts["prompt"].to_pylist()
    # the `generate` stage's engine (vLLM on a GPU); with transformers the sampling model is the scoring model
    gens, _ = models.generator(side).sample(texts, n, seed)
    model, tok = models.causal_lm(side)
    p = [texts[g.prompt_index] for g in gens]
    c = [g.completion for g in gens]
    ref_model, ref_tok = models.causal_lm("reference")
    ensemble = models.ensemble()
    out = {
        "prompt_id": [prompts["prompt_id"][g.prompt_index].as_py() for g in gens], "prompt": p, "completion": c,
        "num_tokens": [g.num_tokens for g in gens],
        "proxy_reward": ensemble.reward(ensemble.score(p, c)),
        "gold_reward": gold.score(p, c)[0] if gold is not None else np.full(len(c), np.nan),
        "logp_policy": hf.sequence_logprobs(model, tok, p, c),
        "logp_ref": hf.sequence_logprobs(ref_model, ref_tok, p, c),
    }
    reg = float(np.mean(hf.sequence_logprobs(model, tok, *regression))) if regression else None
    models.release(side)  # the next side's policy takes its place
    return out, reg


def flat_metrics(report: dict) -> dict[str, float]:
    """The report's numbers under the names the evaluate stage logs to MLflow and gate specs read:
    `evaluate/<side>/<m>`, `evaluate/<win rate>/<value|ci_low|ci_high|n>`, `evaluate/reward_hacking`."""
    flat = {f"evaluate/{side}/{k}": v for side in SIDES for k, v in report[side].items() if v is not None}
    for key, w in report.items():
        if key.endswith("win_rate"):
            flat.update({f"evaluate/{key}/{k}": v for k, v in w.items()})
    if "reward_hacking" in report:
        flat["evaluate/reward_hacking"] = report["reward_hacking"]
    return flat


def run(cfg: EvalConfig, inputs: Inputs, *, backends: Backends, seed: Seeds) -> StageResult:
    """Inputs `pool`, `candidate`, `champion`, `reference`, `reward_model` -> outputs `eval_samples` (every scored
    completion) and `eval_report` (per-model means, paired win rates with CIs, and `metrics`: the flat names the
    gate reads)."""
    models, gold = backends.models, backends.gold
    prompts = heldout_prompts(inputs.table("pool"), cfg.n_prompts, seed.fixed("heldout"))
    regression = regression_pairs(cfg, prompts, seed.fixed("regression"))
    # the same for both sides (paired samples per prompt) and in every iteration, so a model evaluated as candidate
    # and again as champion gets the same numbers, and iterations stay comparable
    sampling = seed.fixed("evaluate")
    scored = {side: _sample_and_score(side, models, prompts, cfg.samples_per_prompt, sampling, gold, regression)
              for side in SIDES}
    side = {name: s for name, (s, _) in scored.items()}
    cand, champ = side["candidate"], side["champion"]
    report = {name: {"proxy_reward": float(np.mean(s["proxy_reward"])),
                     "gold_reward": float(np.mean(s["gold_reward"])) if gold is not None else None,
                     "kl": kl_estimate(s["logp_policy"], s["logp_ref"]),
                     "mean_tokens": float(np.mean(s["num_tokens"])),
                     "regression_logp": scored[name][1]} for name, s in side.items()}
    groups = np.asarray(cand["prompt_id"])
    wr = dict(confidence=cfg.confidence, resamples=cfg.bootstrap_resamples, seed=seed.fixed("evaluate/bootstrap"))
    n = len(cand["completion"])
    lengths = np.concatenate([cand["num_tokens"], champ["num_tokens"]])
    signals = {"proxy": "proxy_reward", **({"heldout": "gold_reward"} if gold is not None else {})}
    for signal, column in signals.items():
        report[f"{signal}_win_rate"] = win_rate(cand[column], champ[column], groups, **wr)
        lc = length_residual(np.concatenate([cand[column], champ[column]]), lengths)
        report[f"lc_{signal}_win_rate"] = win_rate(lc[:n], lc[n:], groups, **wr)
    if gold is not None:
        report["reward_hacking"] = reward_hacking(report["proxy_win_rate"], report["heldout_win_rate"])
    report["metrics"] = flat_metrics(report)
    samples = pa.concat_tables([pa.table({"model": [name] * len(s["completion"]), **s}) for name, s in side.items()])
    return StageResult(outputs={"eval_samples": Output("eval_samples", samples),
                                "eval_report": Output("eval_report", doc=report)},
                       metrics=report["metrics"])
