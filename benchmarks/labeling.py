"""Labeling policies compared on the embedded default, with one judge budget per iteration.

    .venv/bin/python benchmarks/labeling.py --seeds 0 1 --iterations 2 --budget 40

Policies: (a) ensemble only (uncertain pairs dropped), (b) random pairs to the judge, (c) uncertainty-routed
pairs to the judge. The judge is the toy judge (gold + label noise + position bias, judged in both orders).
Per seed, iteration 0 (gold-labelled seed pairs → first reward-model ensemble) is shared; then each policy
runs its own loop: generate from its policy → label → retrain the ensemble on all its preferences → DPO.
The pure stages are called in a plain loop (no Prefect/MLflow), and the last policy is taken as the champion.

Reported per policy (mean ± std over seeds, summed over the labelled iterations):
  oriented   share of kept pairs that gold agrees with
  kept       pairs kept
  calls      judge calls spent (2 per judged pair)
  judge_ok/call   correctly oriented judge labels per judge call
  gain/call  (correct kept pairs − those of ensemble-only labeling on the same rollouts and ensemble) per call:
             the new correct labels the budget bought
  gold       champion's mean gold reward on held-out prompts (initial policy shown as `start`)
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa

from components.config import LabelConfig, load_config
from components.judge import make_runner
from components.stages import evaluate, generate, label, sample_prompts, train_policy, train_reward
from components.toy.gold import gold_reward

POLICIES = {"ensemble_only": None, "random": "random", "routed": "uncertainty"}


def _members(d: Path) -> list[str]:
    return [str(p) for p in sorted(d.glob("member-*"))]


def _gold_of(cfg, pool, policy: str, seed: int) -> float:
    prompts = evaluate.heldout_prompts(pool, cfg.evaluate.n_prompts, seed)
    gen = cfg.generate.model_copy(update={"samples_per_prompt": max(2, cfg.evaluate.samples_per_prompt)})
    table, _ = generate.run(gen, prompts, policy, policy_sha="bench", seed=seed + 99)
    return float(np.mean(gold_reward(table["prompt"].to_pylist(), table["completion"].to_pylist())))


def _label(lcfg: LabelConfig, rollouts, rms, it, seed, select, budget):
    judge = None
    if select is not None:
        lcfg = lcfg.model_copy(update={"judge": lcfg.judge.model_copy(
            update={"backend": "toy", "select": select, "budget": budget})})
        judge = make_runner(lcfg.judge, gold=gold_reward, seed=seed)
    return label.run(lcfg, rollouts, reward_models=rms, gold=gold_reward, iteration=it, seed=seed, judge=judge)


def run_seed(cfg, pool, args, seed: int, work: Path) -> dict[str, dict]:
    init = cfg.policy_init
    prompts0 = sample_prompts.run(cfg.sample, pool, iteration=0, seed=seed)
    roll0, _ = generate.run(cfg.generate, prompts0, init, policy_sha="init", seed=seed * 1000)
    seed_prefs = label.run(cfg.label, roll0, reward_models=None, gold=gold_reward, iteration=0, seed=seed).preferences
    rm0 = work / f"s{seed}-rm0"
    train_reward.run(cfg.train_reward, seed_prefs, init_path=init, out_dir=rm0, seed=seed)
    start_gold = _gold_of(cfg, pool, init, seed)
    results = {}
    for name, select in POLICIES.items():
        policy, rms, history = init, _members(rm0), [seed_prefs]
        acc = {"kept": 0, "correct": 0, "calls": 0, "judge_correct": 0, "gain": 0, "seconds": 0.0}
        for it in range(1, args.iterations + 1):
            t0 = time.perf_counter()
            prompts = sample_prompts.run(cfg.sample, pool, iteration=it, seed=seed)
            roll, _ = generate.run(cfg.generate, prompts, policy, policy_sha=f"{name}-{it}", seed=seed * 1000 + it)
            out = _label(cfg.label, roll, rms, it, seed, select, args.budget)
            base = out if select is None else _label(cfg.label, roll, rms, it, seed, None, 0)
            m, p = out.metrics, out.preferences
            g = np.asarray(gold_reward(p["prompt"].to_pylist(), p["chosen"].to_pylist())) - np.asarray(
                gold_reward(p["prompt"].to_pylist(), p["rejected"].to_pylist()))
            by_judge = np.asarray(p["label_source"].to_pylist()) == "judge"
            acc["kept"] += p.num_rows
            acc["correct"] += int((g > 0).sum())
            acc["calls"] += int(m.get("judge_calls", 0))
            acc["judge_correct"] += int((g[by_judge] > 0).sum())
            acc["gain"] += int((g > 0).sum()) - int(base.metrics.get("correct_pairs", 0))
            history.append(p)
            rm_dir = work / f"s{seed}-{name}-rm{it}"
            rm = train_reward.run(cfg.train_reward, pa.concat_tables(history), init_path=init, out_dir=rm_dir,
                                  seed=seed, previous=rms)
            rms = _members(rm_dir) if rm.get("accepted", 1.0) else rms  # a regressed ensemble is not used
            pol_dir = work / f"s{seed}-{name}-pi{it}"
            train_policy.run(cfg.train_policy, p, prompts=prompts["prompt"].to_pylist(), heldout_prompts=[],
                             policy_path=policy, ref_path=init, reward_models=rms,
                             aggregation=cfg.label.aggregation, uw_lambda=cfg.label.uw_lambda, out_dir=pol_dir,
                             seed=seed + it)
            policy = str(pol_dir)
            acc["seconds"] += time.perf_counter() - t0
            print(f"  seed {seed} {name:13s} iter {it}: kept {p.num_rows:4d} oriented {m['oriented_correctly']:.3f}"
                  f" calls {m.get('judge_calls', 0):3d} judge-labelled {int(by_judge.sum()):3d}"
                  f" rm-judge agreement {m.get('rm_judge_agreement', float('nan')):.2f}", flush=True)
        acc["gold"], acc["start_gold"] = _gold_of(cfg, pool, policy, seed), start_gold
        results[name] = acc
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--iterations", type=int, default=2, help="labelled iterations after the gold seed one")
    ap.add_argument("--budget", type=int, default=40, help="judge calls per iteration")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[
        "sample.n_prompts=64", "generate.max_new_tokens=24", "train_reward.epochs=2", "evaluate.n_prompts=32",
        "label.seed_gold_pairs=256", "label.judge.noise=0.1", "label.judge.position_bias=0.1"])
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    import pyarrow.parquet as pq

    pool = pq.read_table(cfg.prompt_pool)
    work = Path(tempfile.mkdtemp(prefix="alignloop-bench-labeling-"))
    print(f"config {args.config} + {args.overrides}; budget {args.budget} calls/iteration; work dir {work}")
    rows: dict[str, list[dict]] = {k: [] for k in POLICIES}
    t0 = time.perf_counter()
    try:
        for seed in args.seeds:
            for name, acc in run_seed(cfg, pool, args, seed, work).items():
                rows[name].append(acc)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ms(xs):
        return f"{np.mean(xs):7.3f} ± {np.std(xs):5.3f}"

    print(f"\n{len(args.seeds)} seeds × {args.iterations} labelled iterations, budget {args.budget} calls/iteration,"
          f" {time.perf_counter() - t0:.0f} s")
    print(f"{'policy':14s} {'oriented':>15s} {'kept':>7s} {'calls':>6s} {'judge_ok/call':>15s} {'gain/call':>15s}"
          f" {'gold':>15s}")
    for name, rs in rows.items():
        per_call = [r["judge_correct"] / r["calls"] if r["calls"] else 0.0 for r in rs]
        gain = [r["gain"] / r["calls"] if r["calls"] else 0.0 for r in rs]
        oriented = [r["correct"] / max(r["kept"], 1) for r in rs]
        print(f"{name:14s} {ms(oriented)} {np.mean([r['kept'] for r in rs]):7.1f}"
              f" {np.mean([r['calls'] for r in rs]):6.1f} {ms(per_call)} {ms(gain)} {ms([r['gold'] for r in rs])}")
    print(f"{'start':14s} {'':>15s} {'':>7s} {'':>6s} {'':>15s} {'':>15s}"
          f" {ms([r['start_gold'] for r in rows['routed']])}")


if __name__ == "__main__":
    main()
