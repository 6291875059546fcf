"""Does the loop compound? Four labeling arms, N iterations × seeds, compared on the same oracle-call scale.

    .venv/bin/python benchmarks/continual.py --iterations 8 --seeds 0 1 2            # small.yaml-sized
    .venv/bin/python benchmarks/continual.py --size bench --iterations 4 --seeds 0 1 2  # benchmarks/small.yaml

Arms (every one gated the same way: the noisy held-out judge of configs/tiny.yaml, head/champion as the flow):
  oracle       gold labels every best-vs-worst pair each night (configs/experiments/gold-oracle.yaml's labeler)
  offline      the uncertainty arm's total oracle budget spent as gold seed pairs in iteration 0 on the initial
               policy's samples; later nights label with the ensemble only (no new external label)
  random       gold seed pairs + the nightly judge budget on random pairs (label.judge.select = random)
  uncertainty  gold seed pairs + the nightly judge budget on the least certain pairs (the default loop)
One oracle call = one pairwise query answered by gold or the toy judge (a judged pair costs 2: both orders):
`label/oracle_calls`. The gate's held-out judge calls (`evaluate/oracle_calls`) are the same in every arm and are
reported apart. Per seed the arms see the same prompts per iteration (stage seeds depend on seed and iteration).

The pure stage functions run in a plain loop (benchmarks/common.py PlainStages: no Prefect/MLflow/DVC), and the
gate is the flow's: `components.gating.decide` on the evaluation report, promote → head and champion move,
head → only the head moves, discard → nothing. A bad promotion is one whose candidate's exact held-out gold mean
is below the champion's it replaced (same prompts, same sampling seed).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
from common import REPO, SMALL, PlainStages, checkpoint_ref, emit, scratch  # puts the repo root on sys.path

from components.config import load_config
from components.gating import decide

ARMS = ("oracle", "offline", "random", "uncertainty")


def arm_overrides(arm: str, seed_pairs: int, budget: int, iterations: int) -> list[str]:
    """The `--set` overrides of an arm on top of the base config."""
    if arm == "oracle":
        return ["label.labeler=gold", "label.judge.backend=none"]
    if arm == "offline":
        return [f"label.seed_gold_pairs={seed_pairs + budget * (iterations - 1)}", "label.judge.backend=none"]
    select = "random" if arm == "random" else "uncertainty"
    return [f"label.seed_gold_pairs={seed_pairs}", "label.judge.backend=toy", f"label.judge.budget={budget}",
            f"label.judge.select={select}"]


def run_arm(files: list[str], overrides: list[str], seed: int, iterations: int, work: Path) -> list[dict]:
    """One arm, one seed: `iterations` nights of the loop; a record per night."""
    cfg = load_config(files, [*overrides, f"seed={seed}"])
    plain = PlainStages(cfg, work, judge_cache=False)  # each arm pays for its own judge calls
    import pyarrow.parquet as pq

    from components.schemas import conform

    pool = plain.put_table("prompts", conform(pq.read_table(cfg.prompt_pool), "prompts", cfg.prompt_pool), "pool")
    initial = checkpoint_ref(cfg.policy_init)
    head = champion = initial
    rm, history, nights, calls = None, [], [], 0
    for it in range(iterations):
        t0 = time.perf_counter()
        prompts = plain.run("sample_prompts", iteration=it, pool=pool)[0]["prompts"]
        rollouts = plain.run("generate", iteration=it, prompts=prompts, policy=head)[0]["rollouts"]
        refs, lab = plain.run("label", iteration=it, gold=True, judge=cfg.label.judge, rollouts=rollouts,
                              reward_model=rm)
        history.append(refs["preferences"])
        new_rm, trained = plain.run("train_reward", iteration=it, preferences=history, init=initial, previous=rm)
        if rm is None or trained.metrics["train_reward/accepted"]:
            rm = new_rm["reward_model"]
        candidate = plain.run("train_policy", iteration=it, preferences=refs["preferences"], policy=head,
                              reference=initial, prompts=prompts, reward_model=rm)[0]["candidate"]
        _, ev = plain.run("evaluate", iteration=it, gold=True, judge=cfg.evaluate.heldout_judge(), pool=pool,
                          candidate=candidate, champion=champion, reference=initial, reward_model=rm)
        report = ev.outputs["eval_report"].doc
        outcome = decide(report["metrics"], cfg.gate).outcome
        calls += int(lab.metrics["label/oracle_calls"])
        cand, champ = report["candidate"], report["champion"]
        nights.append({"iteration": it, "outcome": outcome, "oracle_calls": calls,
                       "eval_oracle_calls": int(report["metrics"]["evaluate/oracle_calls"]),
                       "candidate_gold": cand["gold_reward"], "champion_gold_before": champ["gold_reward"],
                       "champion_gold": cand["gold_reward"] if outcome == "promote" else champ["gold_reward"],
                       "bad_promotion": outcome == "promote" and cand["gold_reward"] < champ["gold_reward"],
                       "kl": cand["kl"] if outcome == "promote" else champ["kl"],
                       "mean_tokens": cand["mean_tokens"] if outcome == "promote" else champ["mean_tokens"],
                       "judge_kept": int(lab.metrics.get("label/kept/judge", 0)),
                       "seconds": round(time.perf_counter() - t0, 1)})
        if outcome != "discard":
            head = candidate
        if outcome == "promote":
            champion = candidate
        n = nights[-1]
        print(f"  seed {seed} iter {it}: {outcome:8s} champion gold {n['champion_gold']:+.3f} (candidate "
              f"{n['candidate_gold']:+.3f}) oracle calls {calls} judge labels {n['judge_kept']} {n['seconds']:.0f}s",
              flush=True)
    return nights


def _ms(xs) -> str:
    return f"{np.mean(xs):+.3f} ± {np.std(xs):.3f}"


def head_gold(nights: list[dict], start: float) -> list[float]:
    """Held-out gold of the training head after each night's gate (the last kept candidate, else the start)."""
    out, g = [], start
    for n in nights:
        g = n["candidate_gold"] if n["outcome"] != "discard" else g
        out.append(g)
    return out


def summarise(results: dict[str, list[list[dict]]], start: list[float]) -> dict:
    """Per arm: champion (and head) gold per iteration (mean ± std over seeds), oracle calls, promotions, bad
    promotions, final KL and length, gain over the start as a share of the oracle arm's."""
    out = {}
    for arm, seeds in results.items():
        gold = np.array([[n["champion_gold"] for n in s] for s in seeds])
        heads = np.array([head_gold(s, st) for s, st in zip(seeds, start)])
        out[arm] = {"gold_mean": gold.mean(0).tolist(), "gold_std": gold.std(0).tolist(),
                    "head_gold_mean": heads.mean(0).tolist(), "head_gold_std": heads.std(0).tolist(),
                    "head_gain": float(np.mean(heads[:, -1] - np.asarray(start))),
                    "gain": float(np.mean(gold[:, -1] - np.asarray(start))),
                    "oracle_calls": float(np.mean([s[-1]["oracle_calls"] for s in seeds])),
                    "promotions": float(np.mean([sum(n["outcome"] == "promote" for n in s) for s in seeds])),
                    "heads": float(np.mean([sum(n["outcome"] == "head" for n in s) for s in seeds])),
                    "bad_promotions": int(sum(n["bad_promotion"] for s in seeds for n in s)),
                    "final_kl": float(np.mean([s[-1]["kl"] for s in seeds])),
                    "final_tokens": float(np.mean([s[-1]["mean_tokens"] for s in seeds])),
                    "eval_oracle_calls_per_iteration": seeds[0][0]["eval_oracle_calls"]}
    if "oracle" in out:
        for arm in out:
            out[arm]["share_of_oracle_gain"] = out[arm]["gain"] / out["oracle"]["gain"] if out["oracle"]["gain"] \
                else float("nan")
            out[arm]["share_of_oracle_head_gain"] = out[arm]["head_gain"] / out["oracle"]["head_gain"] \
                if out["oracle"]["head_gain"] else float("nan")
            out[arm]["share_of_oracle_calls"] = out[arm]["oracle_calls"] / out["oracle"]["oracle_calls"]
    return out


def plot(results: dict[str, list[list[dict]]], start: list[float], path: Path) -> None:
    """Champion gold (solid, std band) and head gold (dashed) vs cumulative oracle calls, mean over seeds."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for arm, seeds in results.items():
        x = [0.0, *np.mean([[n["oracle_calls"] for n in s] for s in seeds], 0).tolist()]
        g = np.array([[st, *[n["champion_gold"] for n in s]] for s, st in zip(seeds, start)])
        line, = ax.plot(x, g.mean(0), "o-", label=f"{arm} champion")
        ax.fill_between(x, g.mean(0) - g.std(0), g.mean(0) + g.std(0), alpha=0.15, color=line.get_color())
        h = np.array([[st, *head_gold(s, st)] for s, st in zip(seeds, start)])
        ax.plot(x, h.mean(0), "--", color=line.get_color(), alpha=0.7, label=f"{arm} head")
    ax.set_xlabel("cumulative oracle calls (label/oracle_calls)")
    ax.set_ylabel("gold reward (held-out), mean ± std over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_tables(results: dict[str, list[list[dict]]], out: Path, seconds: float) -> dict:
    """The summary table, gold per iteration (champion and head), the plot and results.json; returns the summary."""
    start = [s[0]["champion_gold_before"] for s in next(iter(results.values()))]
    summary = summarise(results, start)
    plot(results, start, out / "gold_vs_oracle_calls.png")
    (out / "results.json").write_text(json.dumps({"nights": results, "summary": summary}, indent=1))
    n_seeds, n_it = len(start), len(next(iter(results.values()))[0])
    print(f"\n{n_seeds} seeds × {n_it} iterations, {seconds:.0f} s; start gold {_ms(start)}; plot "
          f"{out / 'gold_vs_oracle_calls.png'}")
    print(f"{'arm':12s} {'final champion':>16s} {'gain':>7s} {'% oracle':>8s} {'final head':>16s} {'gain':>7s}"
          f" {'% oracle':>8s} {'oracle calls':>12s} {'% calls':>7s} {'promoted':>8s} {'heads':>6s} {'bad':>4s}"
          f" {'KL':>6s} {'len':>6s}")
    for arm, s in summary.items():
        g = [r[-1]["champion_gold"] for r in results[arm]]
        h = [head_gold(r, st)[-1] for r, st in zip(results[arm], start)]
        print(f"{arm:12s} {_ms(g):>16s} {s['gain']:+7.3f} {100 * s.get('share_of_oracle_gain', np.nan):7.0f}%"
              f" {_ms(h):>16s} {s['head_gain']:+7.3f} {100 * s.get('share_of_oracle_head_gain', np.nan):7.0f}%"
              f" {s['oracle_calls']:12.0f} {100 * s.get('share_of_oracle_calls', np.nan):6.0f}%"
              f" {s['promotions']:8.1f} {s['heads']:6.1f} {s['bad_promotions']:4d} {s['final_kl']:6.2f}"
              f" {s['final_tokens']:6.1f}")
    for key, what in (("gold", "champion"), ("head_gold", "head")):
        for arm, s in summary.items():
            print(f"{arm:12s} {what:8s} gold per iteration: "
                  + " ".join(f"{m:+.3f}±{d:.3f}" for m, d in zip(s[f"{key}_mean"], s[f"{key}_std"])))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--size", choices=["small", "bench"], default="small",
                    help="small: configs/experiments/small.yaml iterations; bench: benchmarks/small.yaml")
    ap.add_argument("--seed-pairs", type=int, default=None, help="gold seed pairs (default: 10%% of the oracle arm's"
                    " calls)")
    ap.add_argument("--budget", type=int, default=None, help="judge calls per night (default: 10%% of the oracle"
                    " arm's calls spread over the nights after the first)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/benchmarks/continual"))
    ap.add_argument("--from-results", type=Path, default=None, help="print the tables of an earlier run's"
                    " results.json (no run)")
    args = ap.parse_args()
    if args.from_results is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        print_tables(json.loads(args.from_results.read_text())["nights"], args.out, 0)
        return
    size = REPO / "configs/experiments/small.yaml" if args.size == "small" else SMALL
    data = Path(os.environ.get("BENCH_DATA", REPO / "data"))
    files = [str(REPO / "configs/tiny.yaml"), str(size)]
    files_over = [f"policy_init={data / 'bootstrap/policy'}", f"prompt_pool={data / 'prompts/pool.parquet'}"]
    base = load_config(files, files_over)
    oracle_calls = base.sample.n_prompts * args.iterations  # one best-vs-worst pair per prompt per night
    seed_pairs = args.seed_pairs if args.seed_pairs is not None else oracle_calls // 10
    budget = args.budget if args.budget is not None else 2 * (oracle_calls // 20 // max(args.iterations - 1, 1))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{args.size} iterations ({base.sample.n_prompts} prompts × {base.generate.samples_per_prompt}), "
          f"{args.iterations} nights × seeds {args.seeds}; seed pairs {seed_pairs}, judge budget {budget}/night")
    results: dict[str, list[list[dict]]] = {a: [] for a in args.arms}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for arm in args.arms:
            print(f"arm {arm}, seed {seed}", flush=True)
            results[arm].append(run_arm(files, [*files_over, *arm_overrides(arm, seed_pairs, budget,
                                                                            args.iterations)],
                                        seed, args.iterations, scratch(f"continual-{arm}-{seed}")))
    summary = print_tables(results, args.out, time.perf_counter() - t0)
    emit("continual", {"iterations": args.iterations, "seeds": args.seeds, "size": args.size,
                       "seed_pairs": seed_pairs, "budget": budget, "summary": summary,
                       "seconds": round(time.perf_counter() - t0)})


if __name__ == "__main__":
    main()
