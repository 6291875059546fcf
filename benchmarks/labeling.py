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
from common import PlainStages, checkpoint_ref  # benchmarks/common.py, which puts the repo root on sys.path

from components.backends.models import sample
from components.config import load_config
from components.contract import Seeds
from components.stages.sample_prompts import heldout_prompts
from components.toy.gold import gold_reward

POLICIES = {"ensemble_only": None, "random": "random", "routed": "uncertainty"}


def _gold_of(cfg, pool, policy: str, seed: int) -> float:
    """Mean gold reward of the policy's samples on the fixed held-out prompts."""
    held = Seeds(seed, 0, "evaluate").fixed("heldout")  # the evaluate stage's held-out prompts
    texts = heldout_prompts(pool, cfg.evaluate.n_prompts, held)["prompt"].to_pylist()
    gen = cfg.generate.model_copy(update={"samples_per_prompt": max(2, cfg.evaluate.samples_per_prompt)})
    gens, _ = sample(gen, texts, policy, seed + 99)
    return float(np.mean(gold_reward([texts[g.prompt_index] for g in gens], [g.completion for g in gens])))


def _label(plain: PlainStages, cfg, rollouts, rm, it, select, budget):
    """The label stage on `rollouts` with the ensemble `rm`; `select` None = no judge, else the toy judge
    choosing pairs by `select` within `budget` calls. Both see the same seed, so the same pairs are built."""
    judge = None
    if select is not None:
        judge = cfg.label.judge.model_copy(update={"backend": "toy", "select": select, "budget": budget})
    refs, result = plain.run("label", iteration=it, gold=True, judge=judge, rollouts=rollouts, reward_model=rm)
    return refs["preferences"], result


def run_seed(cfg, pool, args, seed: int, work: Path) -> dict[str, dict]:
    # no judge cache: each policy's judge pays for its own calls, as it would in its own loop
    plain = PlainStages(cfg, work / f"s{seed}", seed=seed, judge_cache=False)
    init = checkpoint_ref(cfg.policy_init)
    pool_ref = plain.put_table("prompts", pool, "pool")
    prompts0 = plain.run("sample_prompts", iteration=0, pool=pool_ref)[0]["prompts"]
    roll0 = plain.run("generate", iteration=0, prompts=prompts0, policy=init)[0]["rollouts"]
    seed_prefs = plain.run("label", iteration=0, gold=True, rollouts=roll0)[0]["preferences"]
    rm0 = plain.run("train_reward", iteration=0, preferences=[seed_prefs], init=init)[0]["reward_model"]
    start_gold = _gold_of(cfg, pool, cfg.policy_init, seed)
    results = {}
    for name, select in POLICIES.items():
        policy, rm, history = init, rm0, [seed_prefs]
        acc = {"kept": 0, "correct": 0, "calls": 0, "judge_correct": 0, "gain": 0, "seconds": 0.0}
        for it in range(1, args.iterations + 1):
            t0 = time.perf_counter()
            prompts = plain.run("sample_prompts", iteration=it, pool=pool_ref)[0]["prompts"]
            roll = plain.run("generate", iteration=it, prompts=prompts, policy=policy)[0]["rollouts"]
            prefs, out = _label(plain, cfg, roll, rm, it, select, args.budget)
            base = out if select is None else _label(plain, cfg, roll, rm, it, None, 0)[1]
            m, p = out.metrics, out.outputs["preferences"].table
            g = np.asarray(gold_reward(p["prompt"].to_pylist(), p["chosen"].to_pylist())) - np.asarray(
                gold_reward(p["prompt"].to_pylist(), p["rejected"].to_pylist()))
            by_judge = np.asarray(p["label_source"].to_pylist()) == "judge"
            calls = int(m.get("label/judge_calls", 0))
            acc["kept"] += p.num_rows
            acc["correct"] += int((g > 0).sum())
            acc["calls"] += calls
            acc["judge_correct"] += int((g[by_judge] > 0).sum())
            acc["gain"] += int((g > 0).sum()) - int(base.metrics.get("label/correct_pairs", 0))
            history.append(prefs)
            new_rm, trained = plain.run("train_reward", iteration=it, preferences=history, init=init, previous=rm)
            if trained.metrics["train_reward/accepted"]:  # a regressed ensemble is not used
                rm = new_rm["reward_model"]
            policy = plain.run("train_policy", iteration=it, preferences=prefs, policy=policy, reference=init,
                               prompts=prompts, reward_model=rm)[0]["candidate"]  # no `pool`: no probe
            acc["seconds"] += time.perf_counter() - t0
            print(f"  seed {seed} {name:13s} iter {it}: kept {p.num_rows:4d} oriented "
                  f"{m['label/oriented_correctly']:.3f} calls {calls:3d} judge-labelled {int(by_judge.sum()):3d}"
                  f" rm-judge agreement {m.get('label/rm_judge_agreement', float('nan')):.2f}", flush=True)
        acc["gold"], acc["start_gold"] = _gold_of(cfg, pool, plain.path(policy), seed), start_gold
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

    from components.schemas import conform

    pool = conform(pq.read_table(cfg.prompt_pool), "prompts", cfg.prompt_pool)
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
