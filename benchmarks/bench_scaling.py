"""Scaling: iteration wall time and peak memory (RSS) at 1×, 2×, 4×, 8× prompts per iteration.

    .venv/bin/python benchmarks/bench_scaling.py [--base-prompts 12 --factors 1 2 4 8]

Each size runs one iteration through the flow in a fresh process and a fresh workspace; the seed pairs labelled
in iteration 0 grow with the prompts (4 per prompt) so training scales too, while the held-out evaluation stays
fixed (it does not depend on the iteration's prompts). Reported per size: the iteration's wall time (timed after
the process's start-up, reported apart: imports, the ephemeral Prefect server, the workspace's MLflow database and
DVC repository), the sum of its stages, the
per-stage times, and the peak RSS of the process that runs the stages (the Prefect server is a separate process,
not included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common


def child(files: list[str], ws: str) -> None:
    """One iteration, timed after the process's one-time start-up (imports, ephemeral Prefect server)."""
    t0 = time.perf_counter()
    common.use_workspace(Path(ws))
    common.warm_imports()
    import dvc.repo  # noqa: F401
    import mlflow  # noqa: F401
    import networkx  # noqa: F401  (dvc imports it lazily on the first `add`)
    from prefect import flow

    from components.config import load_config
    from flows.iteration import in_process_run, iteration_flow

    common.prepare_workspace(Path(ws), load_config(files).name)  # MLflow database, DVC repo: once per loop

    @flow(name="bench-noop")
    def noop() -> int:
        return 0

    with in_process_run():  # as `alignloop run` runs it
        noop()  # starts the ephemeral Prefect server
        startup = time.perf_counter() - t0
        s = time.perf_counter()
        ledger = iteration_flow(files, [], ws)
    print(json.dumps({"flow_s": time.perf_counter() - s, "startup_s": startup, "process_s": time.perf_counter() - t0,
                      "rss_mb": common.peak_rss_mb(), "timings": ledger["timings"]}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-prompts", type=int, default=12)
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--files", nargs="*", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    common.run_from_snapshot(sys.argv)
    if args.child:
        child(args.files, args.child)
        return
    root = common.scratch("scaling")
    common.setup_env(root)
    rows = {}
    for f in args.factors:
        n = args.base_prompts * f
        out = root / f"x{f}"
        out.mkdir()
        files = common.config_files(out, sample={"n_prompts": n}, label={"seed_gold_pairs": 4 * n})
        cmd = [sys.executable, __file__, "--child", str(out / "ws"), "--files", *files]
        proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{f}×: iteration failed:\n{proc.stderr[-3000:]}")
        r = json.loads(next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("{")))
        r["stages_s"] = sum(r["timings"].values())
        rows[f] = r
        print(f"{f}× ({n} prompts): iteration {r['flow_s']:.1f} s, stages {r['stages_s']:.1f} s, start-up "
              f"{r['startup_s']:.1f} s, peak RSS {r['rss_mb']:.0f} MB | "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items()), flush=True)
    base = rows[args.factors[0]]
    print("\nrelative to the smallest: " + "; ".join(
        f"{f}×: iteration {r['flow_s'] / base['flow_s']:.2f}×, stages {r['stages_s'] / base['stages_s']:.2f}×, "
        f"RSS {r['rss_mb'] / base['rss_mb']:.2f}×"
        for f, r in rows.items()))
    common.emit("scaling", {"base_prompts": args.base_prompts, "by_factor": rows})


if __name__ == "__main__":
    main()
