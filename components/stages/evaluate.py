"""Stage 6, evaluate: candidate vs champion on held-out prompts; the gate task decides from its report.

    alignloop run --config configs/tiny.yaml --set evaluate.n_prompts=256

Both policies sample `samples_per_prompt` completions for the same held-out prompts (eval split, the same
prompts every iteration so numbers are comparable across iterations). Each completion gets the ensemble
reward (proxy), the gold reward where an oracle exists, and log-probs under its policy and the reference.
Reported per model: proxy/gold reward, KL to reference (nats/sequence), mean length, and the mean
log-likelihood of a fixed regression set of reference completions. Paired, candidate over champion, with
bootstrap CIs clustered by prompt: the win rate by the proxy and by the held-out signal (`evaluate.heldout`,
independent of the reward models: the gold reward, or a pairwise judge asked in both orders, `backends.judge`),
the proxy's (and gold's) after removing the part of the reward that length explains (length-controlled), and
the reward-hacking signal (proxy up, held-out not). With `evaluate.reference_completions`, both models are also
compared with those fixed completions by the held-out signal (a baseline that does not drift with the champion).
The gate task (`components.gating.decide`, config `gate:`) turns the report's flat metrics into promote / reject
with reasons, so a threshold change re-decides from the stored report without re-sampling.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from components import chat
from components.config import EvalConfig
from components.contract import Backends, Inputs, Output, Seeds, StageResult
from components.metrics import kl_estimate, pairwise_win_rate, win_rate
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
    """> 0 iff the proxy's win rate is significantly above ½ (CI low > ½) while the held-out win rate is
    significantly below ½ (CI high < ½); its size is the smaller of the two margins. ≤ 0 otherwise. Significance
    on both sides, because it discards a candidate: a held-out point estimate a hair under ½ is what noise gives
    a small real gain (most paired samples of two close policies are identical ties); a candidate the held-out
    signal does not yet favour is kept from promotion by the significance checks, not discarded."""
    return min(proxy["ci_low"] - 0.5, 0.5 - heldout["ci_high"])


def _free(models, name: str) -> None:
    """Release policy `name` so the next model fits, unless `models.keep_loaded` lets them all stay resident."""
    if not getattr(getattr(models, "models_cfg", None), "keep_loaded", False):
        models.release(name)


def _scored_ids(prompts: list, ids: list) -> list:
    """The sampled ids to score a row on: chat prompts always (the tokens sampled are the tokens scored); plain
    prompts score the text (`prompt + completion + eos`, the toy loop's established numbers)."""
    return [k if chat.is_chat(p) else None for p, k in zip(prompts, ids)]


def _sample_side(side: str, models, prompts: pa.Table, n: int, seed: int, regression):
    """One policy's held-out samples, their log-probs under that policy (on the sampled ids) and its mean
    log-likelihood of the regression set; then the policy is freed. Returns (columns, regression logp, the
    prompts of the samples, the ids to score them on, the policy's tokenizer)."""
    texts = chat.prompts_of(prompts)
    # the `generate` stage's engine (vLLM on a GPU); with transformers the sampling model is the scoring model
    gens, _ = models.generator(side).sample(texts, n, seed)
    p, c = [texts[g.prompt_index] for g in gens], [g.completion for g in gens]
    ids = _scored_ids(p, [g.completion_ids for g in gens])
    out = {"prompt_id": [prompts["prompt_id"][g.prompt_index].as_py() for g in gens], **chat.prompt_columns(p),
           "completion": c, "finish_reason": [g.finish_reason for g in gens],
           "num_tokens": [g.num_tokens for g in gens],
           "logp_policy": models.logprobs(side, p, c, completion_ids=ids)}
    reg = float(np.mean(models.logprobs(side, *regression))) if regression else None
    tok = models.causal_lm(side)[1]
    _free(models, side)  # the next side's policy takes its place
    return out, reg, p, ids, tok


def _score_sides(models, scored: dict, gold) -> None:
    """With the policies freed: every side's log-probs under the reference (the sampled ids where the tokenizers
    share a vocabulary, else the text re-encoded by the reference's), then the ensemble's proxy reward (its reward
    models loaded one at a time) and the gold reward."""
    ref_tok = models.causal_lm("reference")[1]
    for s, _, p, ids, tok in scored.values():
        same = tok is ref_tok or tok.get_vocab() == ref_tok.get_vocab()
        s["logp_ref"] = models.logprobs("reference", p, s["completion"], completion_ids=ids if same else None)
    _free(models, "reference")
    ensemble = models.ensemble()
    for s, _, p, _, _ in scored.values():
        s["proxy_reward"] = ensemble.reward(ensemble.score(p, s["completion"]))
        s["gold_reward"] = gold.score(s["prompt"], s["completion"])[0] if gold is not None else \
            np.full(len(p), np.nan)


def reference_completions(cfg: EvalConfig, prompts: pa.Table) -> dict[str, str] | None:
    """Held-out prompt -> its fixed reference completion (the file's first for that prompt), or None when
    `cfg.reference_completions` is unset; only held-out prompts present in the file count."""
    if not cfg.reference_completions:
        return None
    import pyarrow.parquet as pq

    path = cfg.reference_completions
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise ValueError(f"evaluate.reference_completions: {path} is not a readable Parquet file ({err})") from None
    missing = {"prompt", "completion"} - set(table.column_names)
    if missing:
        raise ValueError(f"evaluate.reference_completions: {path} lacks column(s) {sorted(missing)}")
    first: dict[str, str] = {}
    for p, c in zip(table["prompt"].to_pylist(), table["completion"].to_pylist()):
        first.setdefault(p, c)
    held = set(prompts["prompt"].to_pylist())
    out = {p: c for p, c in first.items() if p in held}
    if not out:
        raise ValueError(f"evaluate.reference_completions: {path} has none of the {len(held)} held-out prompts "
                         "(its `prompt` column must hold the eval split's prompt texts)")
    return out


def _check_backends(cfg: EvalConfig, gold, judge) -> None:
    """Before sampling: the held-out signal `cfg.heldout` has its backend, and a judge's budget covers it."""
    if cfg.heldout == "gold" and gold is None:
        raise ValueError("evaluate.heldout='gold' needs the gold oracle (`gold: toy`)")
    if cfg.heldout in ("noisy_gold", "judge"):
        if judge is None:
            raise ValueError(f"evaluate.heldout={cfg.heldout!r} needs a held-out judge (evaluate.judge)")
        if judge.budget < cfg.judge_calls:
            raise ValueError(f"evaluate.judge.budget={judge.budget} does not cover the held-out comparisons "
                             f"({cfg.judge_calls} calls: n_prompts × samples_per_prompt × 2 orders"
                             f"{' × 3 comparisons' if cfg.reference_completions else ''})")


def judge_outcomes(judge, pair_ids: list[str], prompts: list[str], a: list[str], b: list[str]
                   ) -> tuple[np.ndarray, dict[str, int]]:
    """Per pair, a over b by the judge asked in both orders: 1 (a both times), 0 (b), ½ otherwise (tie,
    inconsistent, no verdict); identical completions are ties without a call. Also the count of each verdict."""
    ask = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    verdicts = ["tie"] * len(a)
    got = judge.judge_pairs([pair_ids[i] for i in ask], [prompts[i] for i in ask], [a[i] for i in ask],
                            [b[i] for i in ask]) if ask else []
    for i, v in zip(ask, got):
        verdicts[i] = v
    outcome = np.array([1.0 if v == "a" else 0.0 if v == "b" else 0.5 for v in verdicts])
    return outcome, {v: verdicts.count(v) for v in sorted(set(verdicts))}


def _compare(cfg: EvalConfig, gold, judge, ids, prompts, a, b, a_gold=None, b_gold=None):
    """Outcomes (1 / ½ / 0) of completions `a` over `b` by the held-out signal, and the judge's verdict counts."""
    if cfg.heldout == "gold":
        a_gold = np.asarray(gold.score(prompts, a)[0] if a_gold is None else a_gold, float)
        b_gold = np.asarray(gold.score(prompts, b)[0] if b_gold is None else b_gold, float)
        return (a_gold > b_gold) + 0.5 * (a_gold == b_gold), {}
    return judge_outcomes(judge, ids, prompts, a, b)


def heldout_report(cfg: EvalConfig, side: dict, gold, judge, reference: dict[str, str] | None, wr: dict) -> dict:
    """The held-out signal's part of the report: `heldout_win_rate` (candidate vs champion, paired by prompt and
    sample), `lc_heldout_win_rate` (gold only: a pointwise reward), `heldout_verdicts` (judged signals), and
    with reference completions each side's win rate against them."""
    cand, champ = side["candidate"], side["champion"]
    n, groups = len(cand["completion"]), np.asarray(cand["prompt_id"])
    ids = [f"{pid}#{i % cfg.samples_per_prompt}" for i, pid in enumerate(cand["prompt_id"])]
    out, verdicts = _compare(cfg, gold, judge, ids, cand["prompt"], cand["completion"], champ["completion"],
                             cand["gold_reward"], champ["gold_reward"])
    report = {"heldout_win_rate": pairwise_win_rate(out, groups, **wr)}
    if cfg.heldout == "gold":
        lengths = np.concatenate([cand["num_tokens"], champ["num_tokens"]])
        lc = length_residual(np.concatenate([cand["gold_reward"], champ["gold_reward"]]), lengths)
        report["lc_heldout_win_rate"] = win_rate(lc[:n], lc[n:], groups, **wr)
    else:
        report["heldout_verdicts"] = verdicts
    for name, s in (() if reference is None else side.items()):
        keep = [i for i, p in enumerate(s["prompt"]) if p in reference]
        prompts = [s["prompt"][i] for i in keep]
        out, _ = _compare(cfg, gold, judge, [f"reference/{ids[i]}" for i in keep], prompts,
                          [s["completion"][i] for i in keep], [reference[p] for p in prompts],
                          np.asarray(s["gold_reward"])[keep])
        key = "reference_win_rate" if name == "candidate" else f"{name}_reference_win_rate"
        report[key] = pairwise_win_rate(out, groups[keep], **wr)
    return report


def flat_metrics(report: dict) -> dict[str, float]:
    """The report's numbers under the names the evaluate stage logs to MLflow and gate specs read:
    `evaluate/<side>/<m>`, `evaluate/<win rate>/<value|ci_low|ci_high|n>`, `evaluate/reward_hacking`,
    `evaluate/heldout_verdicts/<verdict>` (counts)."""
    flat = {f"evaluate/{side}/{k}": v for side in SIDES for k, v in report[side].items() if v is not None}
    for key, w in report.items():
        if key.endswith("win_rate"):
            flat.update({f"evaluate/{key}/{k}": v for k, v in w.items()})
    flat.update({f"evaluate/heldout_verdicts/{k}": v for k, v in report.get("heldout_verdicts", {}).items()})
    if "reward_hacking" in report:
        flat["evaluate/reward_hacking"] = report["reward_hacking"]
    return flat


def run(cfg: EvalConfig, inputs: Inputs, *, backends: Backends, seed: Seeds) -> StageResult:
    """Inputs `pool`, `candidate`, `champion`, `reference`, `reward_model` -> outputs `eval_samples` (every scored
    completion), `eval_report` (per-model means, paired win rates with CIs, and `metrics`: the flat names the
    gate reads) and, with a held-out judge, `heldout_judge_transcript` (calls.jsonl)."""
    models, gold, judge = backends.models, backends.gold, backends.judge
    _check_backends(cfg, gold, judge)
    prompts = heldout_prompts(inputs.table("pool"), cfg.n_prompts, seed.fixed("heldout"))
    regression = regression_pairs(cfg, prompts, seed.fixed("regression"))
    reference = reference_completions(cfg, prompts)
    # the same for both sides (paired samples per prompt) and in every iteration, so a model evaluated as candidate
    # and again as champion gets the same numbers, and iterations stay comparable
    sampling = seed.fixed("evaluate")
    scored = {side: _sample_side(side, models, prompts, cfg.samples_per_prompt, sampling, regression)
              for side in SIDES}
    _score_sides(models, scored, gold)
    side = {name: s[0] for name, s in scored.items()}
    cand, champ = side["candidate"], side["champion"]
    report = {name: {"proxy_reward": float(np.mean(s["proxy_reward"])),
                     "gold_reward": float(np.mean(s["gold_reward"])) if gold is not None else None,
                     "kl": kl_estimate(s["logp_policy"], s["logp_ref"]),
                     "mean_tokens": float(np.mean(s["num_tokens"])),
                     "regression_logp": scored[name][1]} for name, s in side.items()}
    groups = np.asarray(cand["prompt_id"])
    wr = dict(confidence=cfg.confidence, resamples=cfg.bootstrap_resamples, seed=seed.fixed("evaluate/bootstrap"))
    n = len(cand["completion"])
    report["proxy_win_rate"] = win_rate(cand["proxy_reward"], champ["proxy_reward"], groups, **wr)
    lc = length_residual(np.concatenate([cand["proxy_reward"], champ["proxy_reward"]]),
                         np.concatenate([cand["num_tokens"], champ["num_tokens"]]))
    report["lc_proxy_win_rate"] = win_rate(lc[:n], lc[n:], groups, **wr)
    if cfg.heldout != "none":
        report.update(heldout_report(cfg, side, gold, judge, reference, wr))
        report["reward_hacking"] = reward_hacking(report["proxy_win_rate"], report["heldout_win_rate"])
        for name in (SIDES if reference is not None else ()):
            key = "reference_win_rate" if name == "candidate" else f"{name}_reference_win_rate"
            report[name]["reference_win_rate"] = report[key]["value"]
    report["metrics"] = flat_metrics(report)
    if judge is not None:  # the runner's call statistics, where it names them for this stage
        report["metrics"].update({k: v for k, v in judge.stats().items() if k.startswith("evaluate/")})
    # gold-oracle queries of the gate (the same in every arm of benchmarks/continual.py): exact gold comparisons,
    # or the toy judge's calls; a real judge's calls are not oracle calls
    compared = n * (3 if reference is not None else 1)  # candidate vs champion (and each vs the reference)
    report["metrics"]["evaluate/oracle_calls"] = compared if cfg.heldout == "gold" else (
        judge.calls if getattr(judge, "is_oracle", False) else 0)
    samples = pa.concat_tables([pa.table({"model": [name] * len(s["completion"]), **s}) for name, s in side.items()])
    outputs = {"eval_samples": Output("eval_samples", samples), "eval_report": Output("eval_report", doc=report)}
    if judge is not None and judge.transcript:
        d = inputs.out_dir("heldout_judge_transcript")
        d.mkdir(parents=True, exist_ok=True)
        (d / "calls.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in judge.transcript))
        outputs["heldout_judge_transcript"] = Output("judge_transcript", dir=d)
    return StageResult(outputs=outputs, metrics=report["metrics"])
