"""Issue-4 acceptance: does each policy-update method raise the champion's gold reward, and does the
deliberately unconstrained setting over-optimise its proxy? Runs the real flow (`alignloop run`) per method
and seed in its own workspace, then prints one row per iteration from the workspace ledgers.

    .venv/bin/python benchmarks/training_acceptance.py --seeds 0 1 --iterations 3 [--methods dpo rloo unconstrained-dpo]

Workspaces go to /tmp/alignloop-acceptance/<method>-s<seed>; an existing one is resumed, not redone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

METHODS = {
    "dpo": ["configs/tiny.yaml", "configs/experiments/small.yaml"],
    "rloo": ["configs/tiny.yaml", "configs/experiments/small.yaml", "configs/experiments/rloo.yaml"],
    "unconstrained-dpo": ["configs/tiny.yaml", "configs/experiments/unconstrained-dpo.yaml"],
}


def run(method: str, seed: int, iterations: int, root: Path) -> Path:
    ws = root / f"{method}-s{seed}"
    done = len(list((ws / "ledger").glob("iter-*.json"))) if ws.exists() else 0
    if done < iterations:
        cmd = [str(Path(sys.executable).parent / "alignloop"), "run", "--workspace", str(ws),
               "--iterations", str(iterations - done), "--set", f"seed={seed}"]
        for c in METHODS[method]:
            cmd += ["--config", c]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return ws


def rows(ws: Path) -> list[dict]:
    out = []
    for p in sorted((ws / "ledger").glob("iter-*.json")):
        d = json.loads(p.read_text())
        if d.get("status") != "finished":
            continue
        r = d["report"]
        out.append({"iteration": d["iteration"], "promote": d["decision"]["promote"],
                    "champion_gold_before": r["champion"]["gold_reward"],
                    "candidate_gold": r["candidate"]["gold_reward"], "candidate_proxy": r["candidate"]["proxy_reward"],
                    "candidate_kl": r["candidate"]["kl"], "candidate_len": r["candidate"]["mean_tokens"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--root", type=Path, default=Path("/tmp/alignloop-acceptance"))
    args = ap.parse_args()
    for method in args.methods:
        for seed in args.seeds:
            table = rows(run(method, seed, args.iterations, args.root))
            if not table:
                continue
            final = next((r["candidate_gold"] for r in reversed(table) if r["promote"]),
                         table[0]["champion_gold_before"])
            print(f"\n{method} seed {seed}: champion gold {table[0]['champion_gold_before']:+.3f} -> {final:+.3f}")
            for r in table:
                print("  iter {iteration}: candidate gold {candidate_gold:+.3f} proxy {candidate_proxy:+.3f} "
                      "KL {candidate_kl:.2f} len {candidate_len:.1f} {0}".format(
                          "promote" if r["promote"] else "reject", **r))
            print(json.dumps({"benchmark": "training_acceptance", "method": method, "seed": seed, "rows": table}))


if __name__ == "__main__":
    main()
