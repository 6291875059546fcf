"""Ensemble scoring cost: K separate reward models vs one shared-backbone model with K heads, vs one member.

    .venv/bin/python benchmarks/bench_ensemble.py [--members 4 --pairs 256 --repeats 3]

Separate members are `save_pretrained` num_labels=1 sequence-classification models on the embedded default's
policy backbone; the shared ensemble is one num_labels=K model on the same backbone (what
`train_reward.shared_backbone` saves as `shared/`). Scoring cost does not depend on the weights' values. All
variants (one member; K = 2 .. K separate; K = 2 .. K shared) alternate within each repeat, on the same
(prompt, completion) pairs through `components.backends.hf.RewardEnsemble`; medians reported, for scoring alone
and for load + scoring (what the label stage pays per iteration). Target: shared K=4 ≤ 1.5× one member.
"""

from __future__ import annotations

import argparse
import statistics
import time

import common


def build(policy: str, heads: int, path) -> str:
    """A reward model with `heads` score heads (1 = a separate member) on the policy's trunk."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy)
    torch.manual_seed(heads)
    model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=heads)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = common.scratch("ensemble")
    common.setup_env(root)
    common.warm_imports()
    import pyarrow.parquet as pq

    from components.backends.hf import RewardEnsemble
    from components.backends.models import sample
    from components.config import GenerateConfig

    boot = common.bootstrap()
    ks = sorted({2, args.members})
    separate = [build(str(boot["policy"]), 1, root / f"member-{i}") for i in range(args.members)]
    variants = {"one member": (1, separate[:1])}  # name -> (K, paths)
    variants |= {f"K={k} separate": (k, separate[:k]) for k in ks}
    variants |= {f"K={k} shared": (k, [build(str(boot["policy"]), k, root / f"shared-{k}")]) for k in ks}
    n_prompts = max(1, args.pairs // 4)
    texts = pq.read_table(boot["prompts"]).slice(0, n_prompts)["prompt"].to_pylist()
    cfg = GenerateConfig(samples_per_prompt=4, max_new_tokens=32, batch_size=128)  # the figures' batching
    gens, _ = sample(cfg, texts, str(boot["policy"]), seed=0)
    p, c = [texts[g.prompt_index] for g in gens], [g.completion for g in gens]

    score_s = {v: [] for v in variants}
    total_s = {v: [] for v in variants}
    for _ in range(args.repeats):
        for name, (k, paths) in variants.items():
            s = time.perf_counter()
            ens = RewardEnsemble(paths)
            loaded = time.perf_counter()
            r = ens.score(p, c)
            done = time.perf_counter()
            assert r.shape == (k, len(p))
            score_s[name].append(done - loaded)
            total_s[name].append(done - s)
    med = {v: (statistics.median(score_s[v]), statistics.median(total_s[v])) for v in variants}
    one = med["one member"]
    print(f"{len(p)} completions scored (median of {args.repeats}):")
    for v, (sc, tot) in med.items():
        print(f"  {v:>14}: score {sc:.3f} s ({sc / one[0]:.2f}× one member), load+score {tot:.3f} s "
              f"({tot / one[1]:.2f}×)")
    k = args.members
    print(f"K={k}: shared backbone {med[f'K={k} shared'][0] / one[0]:.2f}× one member to score (target ≤ 1.5×), "
          f"separate models {med[f'K={k} separate'][0] / one[0]:.2f}×")
    common.emit("ensemble", {
        "completions": len(p), "repeats": args.repeats,
        "score_s": {v: x[0] for v, x in med.items()}, "load_and_score_s": {v: x[1] for v, x in med.items()},
        "ratio_score_vs_one": {v: x[0] / one[0] for v, x in med.items()},
        "ratio_load_and_score_vs_one": {v: x[1] / one[1] for v, x in med.items()}})


if __name__ == "__main__":
    main()
