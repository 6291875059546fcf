"""Peak memory of label-stage scoring with K reward models: staged loading (one model at a time) vs one model.

    .venv/bin/python benchmarks/bench_stage_memory.py [--completions 256 --batch-size 32]

Builds three random-weight Qwen2-style sequence-classification reward models of ~69M parameters (hidden 768,
8 layers, fp32, `components.toy.chat_models.build_reward_model`) and, in a fresh subprocess per case (peak RSS
= `resource.getrusage(RUSAGE_SELF).ru_maxrss`, which only grows), scores the same chat completions through
`components.backends.hf.RewardEnsemble` as the label stage does: K = 1; K = 3 staged (the default: load RM 1,
score, free, RM 2, ...); K = 3 with `keep_loaded` (all held, the old behaviour). A case that only imports torch
gives the interpreter's baseline. Target: K = 3 staged ≤ 1.3× K = 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SIZE = {"hidden": 768, "layers": 8, "heads": 12, "kv_heads": 4, "intermediate": 3072}
CHATS = [[{"role": "user", "content": "Write a short poem about the sea."}],
         [{"role": "system", "content": "You answer in one sentence."},
          {"role": "user", "content": "Explain why the sky is blue."}]]


def case(paths: list[str], n: int, batch_size: int, keep_loaded: bool) -> dict:
    """Score `n` completions with the reward models at `paths`; peak RSS of this process (MiB)."""
    import resource

    import torch

    from components.backends.hf import RewardEnsemble

    torch.set_num_threads(2)
    out = {"rss_mib_import": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if paths:
        prompts = [CHATS[k % 2] for k in range(n)]
        completions = [" ".join(["the sea is calm and blue"] * (1 + k % 4)) for k in range(n)]
        r = RewardEnsemble(paths, batch_size=batch_size, keep_loaded=keep_loaded).score(prompts, completions)
        out["rows"] = int(r.shape[0])
    out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_case(paths: list[str], args, keep_loaded: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--case", json.dumps(paths), "--completions", str(args.completions),
           "--batch-size", str(args.batch_size)] + (["--keep-loaded"] if keep_loaded else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--completions", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--keep-loaded", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case is not None:
        sys.path.insert(0, str(Path(__file__).parents[1]))
        print(json.dumps(case(json.loads(args.case), args.completions, args.batch_size, args.keep_loaded)))
        return
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from components.toy.chat_models import build_reward_model

    with tempfile.TemporaryDirectory() as d:
        paths = [str(build_reward_model("qwen2", Path(d) / f"rm-{k}", seed=k, **SIZE)) for k in range(3)]
        size = sum(f.stat().st_size for f in (Path(paths[0])).glob("*.safetensors")) / 2**20
        base = run_case([], args)
        one = run_case(paths[:1], args)
        staged = run_case(paths, args)
        held = run_case(paths, args, keep_loaded=True)
    print(f"one reward model: {size:.0f} MiB of weights (fp32); {args.completions} chat completions, "
          f"batch {args.batch_size}")
    print(f"{'case':<28}{'peak RSS MiB':>14}{'over import':>14}{'vs K=1':>9}")
    for name, r in [("import torch (baseline)", base), ("K=1", one), ("K=3 staged (default)", staged),
                    ("K=3 keep_loaded", held)]:
        print(f"{name:<28}{r['rss_mib']:>14.0f}{r['rss_mib'] - base['rss_mib']:>14.0f}"
              f"{r['rss_mib'] / one['rss_mib']:>9.2f}")
    print(f"target: K=3 staged <= 1.3x K=1: {'met' if staged['rss_mib'] <= 1.3 * one['rss_mib'] else 'NOT met'}")


if __name__ == "__main__":
    main()
