"""Best-of-n over-optimisation: one reward model vs the ensemble's aggregations (Gao et al. 2023; Coste et al. 2024).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/best_of_n.py   # = --seeds 1 2 3 --prompts 128 --max-n 256
                                                                 #   --pairs 400 --noise 0.25 --rm-epochs 12

Per seed, on the embedded default (`configs/tiny.yaml`, the repo's `data/` bootstrap or `$BENCH_DATA`):
1. reward-model data as iteration 0 makes it: `sample_prompts` → `generate` from the initial policy → `label` with
   `label.seed_gold_pairs` = `--pairs` gold-labelled random within-prompt pairs; then `--noise` of those pairs get
   their label flipped (chosen ↔ rejected, seeded: Coste et al.'s 25% label-noise setting) → `train_reward`, K
   members (`ensemble.members`), each from its own seed on its own bootstrap resample, as the loop trains them;
2. `--max-n` completions per held-out prompt (`heldout_prompts`, the evaluate stage's set) sampled ONCE from the
   initial policy, scored by every member and by the gold oracle (`components/toy/gold.py`);
3. best-of-n for every n = 1, 2, 4, …, max-n, by each selector: `single` (one member alone; the curve is the
   average over the K members each used alone), the ensemble's `mean`, `worst_case` and `uncertainty_weighted`
   (`components.uncertainty.aggregate`, λ = `ensemble.uw_lambda` unless `--uw-lambda`), and the gold oracle itself
   as the ceiling. The estimate is exact and unbiased over the max-n draws: with the candidates sorted by the
   selector's score, the i-th lowest (0-based) is the best of a uniformly random n-subset with probability
   C(i, n−1) / C(N, n), so E[value of the pick] = Σ_i C(i, n−1) / C(N, n) · value_(i) (every n-subset averaged).

Two variants of the ensemble selectors: the members' rewards as the ensemble scores them (`HFEnsemble.score`, what
the loop aggregates), and each member standardised by its reward mean and std on the iteration-0 rollouts it was
trained from (the initial policy's samples on train-split prompts; Coste et al.'s code records each RM's mean and
std for this): `worst_case` and `uncertainty_weighted` compare members' raw values, so members with different
offsets and scales make min/variance measure the offsets. `single` is the same in both (a per-member monotone map).

Reported per selector and n (mean ± std over seeds of the per-seed mean over prompts): the picked sample's gold
reward and proxy reward (the selector's own score), against n and KL_BoN = log n − (n−1)/n; then per selector
the drop of gold from its peak n to n = max-n, and its ratio to the single RM's drop (target: worst_case and
uncertainty_weighted ≤ 0.5). A PNG (gold and proxy vs KL_BoN, one line per selector, one row per variant) and each
seed's scores (`scores-s<seed>.npz`: members, gold, calibration, texts) go to `--out`.
Stages run through `common.PlainStages` (refs named by content hash here) from a frozen copy of the code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from math import comb
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
from common import (  # benchmarks/common.py: puts the repo root on sys.path
    PlainStages,
    checkpoint_ref,
    config_files,
    emit,
    run_from_snapshot,
)

from components.config import load_config
from components.contract import Seeds
from components.toy.gold import gold_reward
from components.uncertainty import aggregate

ENSEMBLE = ("mean", "worst_case", "uncertainty_weighted")
SELECTORS = ("single", *ENSEMBLE)  # the ones the target compares
ORACLE = "gold_oracle"  # best-of-n by the gold reward itself: the ceiling, not a proxy
VARIANTS = {"raw": "as the ensemble scores them (what the loop aggregates)",
            "standardised": "standardised (each member's mean and std on its training rollouts)"}


def kl_bon(n: int) -> float:
    """KL(best-of-n ‖ base policy) = log n − (n−1)/n (Stiennon et al.; Gao et al. eq. 1)."""
    return float(np.log(n) - (n - 1) / n)


def bon_weights(big_n: int, ns: list[int]) -> np.ndarray:
    """[len(ns), big_n]: w[j, i] = P(the i-th lowest of big_n candidates is the best of a random ns[j]-subset)."""
    return np.array([[comb(i, n - 1) / comb(big_n, n) for i in range(big_n)] for n in ns])


def expected_pick(score: np.ndarray, values: list[np.ndarray], weights: np.ndarray) -> list[np.ndarray]:
    """Mean over prompts of E[value of the best-of-n pick by `score`], for each [P, N] array in `values`: one
    [len(ns)] curve each."""
    order = np.argsort(score, axis=1, kind="stable")
    return [(np.take_along_axis(v, order, axis=1) @ weights.T).mean(axis=0) for v in values]


def flip_labels(table, frac: float, seed: int):
    """The preferences table with `frac` of its rows (seeded) labelled the other way: chosen ↔ rejected (text and
    ids), margin negated. -> (table, rows flipped)."""
    import pyarrow as pa

    flip = np.zeros(table.num_rows, bool)
    flip[np.random.default_rng(seed).permutation(table.num_rows)[:round(frac * table.num_rows)]] = True
    cols = {name: table[name].to_pylist() for name in table.column_names}
    swap = [("chosen", "rejected")] + [("chosen_ids", "rejected_ids")] * ("chosen_ids" in cols)
    for a, b in swap:
        cols[a], cols[b] = ([y if f else x for x, y, f in zip(cols[a], cols[b], flip)],
                            [x if f else y for x, y, f in zip(cols[a], cols[b], flip)])
    if "margin" in cols:
        cols["margin"] = [-m if f else m for m, f in zip(cols["margin"], flip)]
    out = table
    for name, values in cols.items():
        i = out.schema.get_field_index(name)
        out = out.set_column(i, out.schema.field(i), pa.array(values, out.schema.field(i).type))
    return out, int(flip.sum())


def train_ensemble(plain: PlainStages, cfg, pool, noise: float, seed: int) -> tuple[str, tuple, dict]:
    """Iteration 0's reward-model data and ensemble, labels flipped at rate `noise` -> (ensemble dir, the
    iteration's rollouts as (prompts, completions): the members' calibration set, metrics)."""
    init = checkpoint_ref(cfg.policy_init)
    pool_ref = plain.put_table("prompts", pool, "pool")
    prompts = plain.run("sample_prompts", iteration=0, pool=pool_ref)[0]["prompts"]
    refs, generated = plain.run("generate", iteration=0, prompts=prompts, policy=init)
    _, labelled = plain.run("label", iteration=0, gold=True, rollouts=refs["rollouts"])
    prefs, flipped = flip_labels(labelled.outputs["preferences"].table, noise,
                                 Seeds(seed, 0, "best_of_n").sub("label_noise"))
    prefs_ref = plain.put_table("preferences", prefs, "preferences-noisy")
    refs, trained = plain.run("train_reward", iteration=0, preferences=[prefs_ref], init=init)
    m, rollouts = trained.metrics, generated.outputs["rollouts"].table
    info = {"pairs": prefs.num_rows, "flipped": flipped, "train_pairs": m["train_reward/train_pairs"],
            "heldout_accuracy_noisy_labels": m.get("train_reward/heldout_accuracy_mean_member"),
            "train_seconds": sum(v for k, v in m.items() if k.endswith("/seconds"))}
    calibration = (rollouts["prompt"].to_pylist(), rollouts["completion"].to_pylist())
    return plain.path(refs["reward_model"]), calibration, info


def draw_candidates(cfg, pool, n_prompts: int, big_n: int, seed: int):
    """`big_n` completions per held-out prompt from the initial policy -> (prompts, completions) flat,
    prompt-major, and their gold rewards [P, N]."""
    from components.backends.models import sample
    from components.stages.sample_prompts import heldout_prompts

    texts = heldout_prompts(pool, n_prompts, Seeds(seed, 0, "evaluate").fixed("heldout"))["prompt"].to_pylist()
    gen = cfg.generate.model_copy(update={"samples_per_prompt": big_n})
    gens, _ = sample(gen, texts, cfg.policy_init, Seeds(seed, 0, "best_of_n").sub("candidates"))
    completions: list[list[str]] = [[] for _ in texts]
    for g in gens:
        completions[g.prompt_index].append(g.completion)
    if any(len(c) != big_n for c in completions):
        raise RuntimeError("a held-out prompt got fewer samples than asked (too long for max_prompt_length?)")
    flat_p = [t for t, cs in zip(texts, completions) for _ in cs]
    flat_c = [c for cs in completions for c in cs]
    return flat_p, flat_c, np.asarray(gold_reward(flat_p, flat_c)).reshape(len(texts), big_n)


def member_scores(cfg, rm_dir: str, prompts: list[str], completions: list[str]) -> np.ndarray:
    """Every member's reward of every (prompt, completion), [K, M], scored as the stages score (`HFEnsemble`)."""
    from components.backends.models import HFEnsemble, member_dirs

    return HFEnsemble(member_dirs(rm_dir), cfg.ensemble, keep_loaded=False).score(prompts, completions)


def pair_accuracy(members: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Gold pair accuracy on the held-out candidates: disjoint iid pairs (2j, 2j+1) per prompt, gold ties left out;
    per member (mean) and for the ensemble mean."""
    dg = gold[:, 0::2] - gold[:, 1::2]
    dm = members[:, :, 0::2] - members[:, :, 1::2]
    keep = dg != 0
    ok = (np.sign(dm) == np.sign(dg))[:, keep]
    return {"member": float(ok.mean()), "ensemble_mean": float((np.sign(dm.mean(0)) == np.sign(dg))[keep].mean())}


def curves(members: np.ndarray, gold: np.ndarray, ns: list[int], uw_lambda: float) -> dict[str, dict]:
    """{selector: {"gold": [len(ns)], "proxy": [len(ns)]}} from one seed's scores ([K, P, N], [P, N]); `single` is
    the average of the K curves of each member used alone."""
    w = bon_weights(gold.shape[1], ns)
    singles = [expected_pick(r, [gold, r], w) for r in members]
    out = {"single": {"gold": np.mean([s[0] for s in singles], 0), "proxy": np.mean([s[1] for s in singles], 0)}}
    k, p, n = members.shape
    for how in ENSEMBLE:
        agg = aggregate(members.reshape(k, p * n), how, uw_lambda).reshape(p, n)
        g, proxy = expected_pick(agg, [gold, agg], w)
        out[how] = {"gold": g, "proxy": proxy}
    g = expected_pick(gold, [gold], w)[0]
    out[ORACLE] = {"gold": g, "proxy": g}
    return out


def run_seed(cfg, args, pool, seed: int, work: Path, ns: list[int]) -> dict:
    """One seed: its ensemble, its candidates, both variants' curves, diagnostics and timings."""
    t0 = time.perf_counter()
    rm_dir, (cal_p, cal_c), info = train_ensemble(PlainStages(cfg, work / f"s{seed}", seed=seed), cfg, pool,
                                                  args.noise, seed)
    t1 = time.perf_counter()
    prompts, completions, gold = draw_candidates(cfg, pool, args.prompts, ns[-1], seed)
    t2 = time.perf_counter()
    scores = member_scores(cfg, rm_dir, cal_p + prompts, cal_c + completions)
    t3 = time.perf_counter()
    cal, members = scores[:, :len(cal_p)], scores[:, len(cal_p):].reshape(-1, *gold.shape)
    mu, sd = cal.mean(1)[:, None, None], cal.std(1)[:, None, None]
    np.savez_compressed(args.out / f"scores-s{seed}.npz", members=members.astype(np.float32), gold=gold,
                        calibration=cal.astype(np.float32), prompts=np.asarray(prompts).reshape(gold.shape),
                        completions=np.asarray(completions).reshape(gold.shape))
    acc = pair_accuracy(members, gold)
    rm = {**info, "gold_pair_accuracy": acc, "member_mean": mu.ravel().tolist(), "member_std": sd.ravel().tolist(),
          "across_member_std": float(members.std(axis=0).mean()),
          "member_correlation": np.corrcoef(members.reshape(len(members), -1)).tolist()}
    res = {"curves": {"raw": curves(members, gold, ns, args.uw), "standardised": curves((members - mu) / sd, gold, ns,
                                                                                        args.uw)},
           "rm": rm, "seconds": {"rm_data_and_training": t1 - t0, "sampling": t2 - t1, "scoring": t3 - t2}}
    print(f"  seed {seed}: {info['pairs']} gold pairs, {info['flipped']} flipped, {info['train_pairs']} trained on;"
          f" gold pair accuracy on held-out candidates: member {acc['member']:.3f}, ensemble mean"
          f" {acc['ensemble_mean']:.3f}; member reward mean {np.round(mu.ravel(), 3).tolist()} std"
          f" {np.round(sd.ravel(), 3).tolist()}; {' '.join(f'{k} {v:.0f}s' for k, v in res['seconds'].items())}",
          flush=True)
    return res


def drop(curve: np.ndarray) -> tuple[float, int]:
    """(gold at its peak − gold at the largest n, index of the peak)."""
    i = int(np.argmax(curve))
    return float(curve[i] - curve[-1]), i


def summarise(per_seed: list[dict], ns: list[int], variant: str) -> dict:
    """One variant: mean ± std over seeds per selector and n; drop of the seed-mean curve and per seed; ratio of
    each drop to the single RM's; whether the target holds."""
    out: dict = {}
    for sel in (*SELECTORS, ORACLE):
        g = np.array([s["curves"][variant][sel]["gold"] for s in per_seed])
        p = np.array([s["curves"][variant][sel]["proxy"] for s in per_seed])
        d, peak = drop(g.mean(0))
        out[sel] = {"gold_mean": g.mean(0).tolist(), "gold_std": g.std(0).tolist(),
                    "proxy_mean": p.mean(0).tolist(), "proxy_std": p.std(0).tolist(),
                    "drop": d, "peak_n": ns[peak], "drop_per_seed": [drop(x)[0] for x in g]}
    single = out["single"]["drop"]
    for sel in SELECTORS:
        out[sel]["drop_ratio_vs_single"] = out[sel]["drop"] / single if single > 0 else None  # no drop: no ratio
    met = single > 0 and all(out[s]["drop_ratio_vs_single"] <= 0.5 for s in ("worst_case", "uncertainty_weighted"))
    return {"selectors": out, "target_met": bool(met)}


def print_tables(summary: dict, ns: list[int]) -> None:
    kl = [kl_bon(n) for n in ns]
    for variant, v in summary.items():
        sels = v["selectors"]
        for key in ("gold", "proxy"):
            print(f"\n{key} reward of the pick (mean ± std over seeds), members {VARIANTS[variant]}")
            print(f"  {'n':>4s} {'KL_BoN':>6s} " + " ".join(f"{sel[:15]:>15s}" for sel in sels))
            for j, n in enumerate(ns):
                print(f"  {n:4d} {kl[j]:6.3f} " + " ".join(f"{s[f'{key}_mean'][j]:+7.3f} ± {s[f'{key}_std'][j]:5.3f}"
                                                         for s in sels.values()))
        print(f"  drop of gold from its peak to n={ns[-1]} (seed-mean curve; per seed mean ± std), ratio vs single:")
        for sel in SELECTORS:
            s, ratio = sels[sel], sels[sel]["drop_ratio_vs_single"]
            print(f"    {sel:22s} peak n={s['peak_n']:4d}  drop {s['drop']:+.3f}  per seed"
                  f" {np.mean(s['drop_per_seed']):+.3f} ± {np.std(s['drop_per_seed']):.3f}"
                  f"  ratio {'n/a' if ratio is None else format(ratio, '.2f')}")
        print(f"  target (worst_case and uncertainty_weighted drop ≤ 50% of single's): "
              f"{'met' if v['target_met'] else 'NOT met'}")


def plot(summary: dict, ns: list[int], path: Path, title: str) -> None:
    """Gold and proxy vs KL_BoN, one line per selector (± std over seeds), one row per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kl = np.array([kl_bon(n) for n in ns])
    fig, axes = plt.subplots(len(summary), 2, figsize=(11, 4 * len(summary)), squeeze=False)
    for row, (variant, v) in zip(axes, summary.items()):
        for sel in SELECTORS:  # not the oracle: its ceiling (in the table) would flatten the proxies' curves
            s = v["selectors"][sel]
            for ax, key in zip(row, ("gold", "proxy")):
                m, sd = np.asarray(s[f"{key}_mean"]), np.asarray(s[f"{key}_std"])
                line, = ax.plot(kl, m, label=sel, marker="o", markersize=3)
                ax.fill_between(kl, m - sd, m + sd, alpha=0.15, color=line.get_color())
        for ax, name in zip(row, ("gold reward of the pick", "proxy reward of the pick (the selector's score)")):
            ax.set(xlabel="KL_BoN = log n − (n−1)/n (nats)", ylabel=name, title=f"members {VARIANTS[variant]}")
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
            top = ax.secondary_xaxis("top")
            top.set_xticks(kl[1::2], [str(n) for n in ns[1::2]])
            top.set_xlabel("n")
        row[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seed 0 was the development seed")
    ap.add_argument("--prompts", type=int, default=128, help="held-out prompts (the eval split has 128)")
    ap.add_argument("--max-n", type=int, default=256, help="a power of 2: n = 1, 2, 4, ..., max-n")
    ap.add_argument("--pairs", type=int, default=400, help="label.seed_gold_pairs: the RMs' training pairs"
                    " (the embedded default's 800 clean pairs show no single-RM over-optimisation by n=256)")
    ap.add_argument("--rm-epochs", type=int, default=12, help="train_reward.epochs (embedded default: 4)")
    ap.add_argument("--noise", type=float, default=0.25, help="share of gold labels flipped before train_reward")
    ap.add_argument("--members", type=int, default=None, help="ensemble.members (default: the config's)")
    ap.add_argument("--uw-lambda", type=float, default=None, help="λ of uncertainty_weighted (default: config's)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/benchmarks/best_of_n"))
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="more config overrides, key.sub=value")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    run_from_snapshot(sys.argv)  # others edit components/ meanwhile: one frozen copy of the code for the whole run
    import pyarrow.parquet as pq

    import components
    from components.schemas import conform

    ns = [2 ** j for j in range(int(np.log2(args.max_n)) + 1)]
    if ns[-1] != args.max_n:
        raise SystemExit("--max-n must be a power of 2")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=args.out))
    overrides = [f"label.seed_gold_pairs={args.pairs}", f"train_reward.epochs={args.rm_epochs}",
                 *([f"ensemble.members={args.members}"] * bool(args.members)), *args.overrides]
    cfg = load_config(config_files(work, small=False, name="best_of_n"), overrides)
    pool = conform(pq.read_table(cfg.prompt_pool), "prompts", cfg.prompt_pool)
    args.uw = cfg.ensemble.uw_lambda if args.uw_lambda is None else args.uw_lambda
    settings = {"seeds": args.seeds, "prompts": args.prompts, "max_n": args.max_n, "pairs": args.pairs,
                "noise": args.noise, "rm_epochs": args.rm_epochs, "members": cfg.ensemble.members,
                "uw_lambda": args.uw, "overrides": overrides}
    print(f"code {Path(components.__file__).parent}; policy {cfg.policy_init}; configs/tiny.yaml + {overrides};"
          f" K={cfg.ensemble.members}, label noise {args.noise}, λ={args.uw}; {args.prompts} held-out prompts ×"
          f" {args.max_n} samples; seeds {args.seeds}", flush=True)
    t0 = time.perf_counter()
    try:
        per_seed = [run_seed(cfg, args, pool, seed, work, ns) for seed in args.seeds]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    summary = {variant: summarise(per_seed, ns, variant) for variant in VARIANTS}
    print_tables(summary, ns)
    png = args.out / "best_of_n.png"
    plot(summary, ns, png, f"best-of-n from the initial policy: {args.prompts} held-out prompts, {len(args.seeds)}"
                           f" seeds, K={cfg.ensemble.members}, {args.pairs} gold pairs, {args.noise:.0%} label noise,"
                           f" {args.rm_epochs} RM epochs,"
                           f" λ={args.uw}")
    print(f"\nplot: {png}; {wall:.0f} s for {len(args.seeds)} seeds")
    emit("best_of_n", {"n": ns, "kl_bon": [kl_bon(n) for n in ns], "variants": summary, "seconds": wall,
                       "settings": settings, "per_seed_rm": [s["rm"] for s in per_seed],
                       "per_seed_seconds": [s["seconds"] for s in per_seed]})


if __name__ == "__main__":
    main()
