"""Ensemble scoring cost: K separate reward models vs one member, on the same (prompt, completion) pairs.

    .venv/bin/python benchmarks/bench_ensemble.py [--members 4 --pairs 256 --repeats 3]

Members are `save_pretrained` sequence-classification models on the embedded default's policy backbone (scoring
cost does not depend on the weights' values). K=1, 2, .., K alternate within each repeat; medians reported, for
scoring alone and for load + scoring (what the label stage pays per iteration). This measures the separate-models
ensemble (`components.backends.hf.RewardEnsemble`); a shared-backbone ensemble (one trunk, K heads; target ≤ 1.5×
for K=4) is another issue's work and is not measured here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import common


def build_members(policy: str, k: int, out) -> list[str]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy)
    paths = []
    for i in range(k):
        torch.manual_seed(i)
        model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        path = out / f"member-{i}"
        model.save_pretrained(str(path))
        tok.save_pretrained(str(path))
        paths.append(str(path))
    return paths


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
    from components.config import GenerateConfig
    from components.stages import generate

    boot = common.bootstrap()
    paths = build_members(str(boot["policy"]), args.members, root)
    n_prompts = max(1, args.pairs // 4)
    prompts = pq.read_table(boot["prompts"]).slice(0, n_prompts)
    rollouts, _ = generate.run(GenerateConfig(samples_per_prompt=4, max_new_tokens=32), prompts, str(boot["policy"]),
                               policy_sha="bench", seed=0)
    p, c = rollouts["prompt"].to_pylist(), rollouts["completion"].to_pylist()

    ks = sorted({1, 2, args.members})
    score_s = {k: [] for k in ks}
    total_s = {k: [] for k in ks}
    for _ in range(args.repeats):
        for k in ks:
            s = time.perf_counter()
            ens = RewardEnsemble(paths[:k])
            loaded = time.perf_counter()
            r = ens.score(p, c)
            done = time.perf_counter()
            assert r.shape == (k, len(p))
            score_s[k].append(done - loaded)
            total_s[k].append(done - s)
    med = {k: (statistics.median(score_s[k]), statistics.median(total_s[k])) for k in ks}
    print(f"{len(p)} completions scored, separate member models (median of {args.repeats}):")
    for k in ks:
        print(f"  K={k}: score {med[k][0]:.3f} s ({med[k][0] / med[1][0]:.2f}× one member), load+score "
              f"{med[k][1]:.3f} s ({med[k][1] / med[1][1]:.2f}×)")
    print(f"K={args.members} separate models cost {med[args.members][0] / med[1][0]:.2f}× one member to score "
          "(the ≤ 1.5× target is for the shared-backbone ensemble, not built here)")
    common.emit("ensemble", {
        "completions": len(p), "repeats": args.repeats,
        "score_s": {k: v[0] for k, v in med.items()}, "load_and_score_s": {k: v[1] for k, v in med.items()},
        "ratio_score_vs_one": {k: v[0] / med[1][0] for k, v in med.items()},
        "ratio_load_and_score_vs_one": {k: v[1] / med[1][1] for k, v in med.items()},
        "shared_backbone": "not measured (another issue)"})


if __name__ == "__main__":
    main()
