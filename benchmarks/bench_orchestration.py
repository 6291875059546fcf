"""Orchestration overhead: one iteration through the Prefect flow (MLflow + DVC tracking, artifact store,
ledger) vs the same stage functions in a plain Python loop with no tracking. Target: per-iteration overhead
≤ 3% of the iteration's wall time.

    .venv/bin/python benchmarks/bench_orchestration.py [--repeats 2]

One-time start-up is measured apart: importing prefect/mlflow/dvc, the ephemeral Prefect server (first flow
run), creating a workspace (MLflow database, DVC repo), and one untimed plain iteration that absorbs lazy imports
and first-call costs. Then plain and flow iterations alternate, each flow iteration in a fresh, prepared workspace
(so both compute iteration 0 from the same inputs); medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import common


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    root = common.scratch("orchestration")
    common.setup_env(root)
    imports_ml = common.warm_imports()

    s = time.perf_counter()
    import dvc.repo  # noqa: F401
    import mlflow  # noqa: F401
    from prefect import flow

    from components.config import load_config
    from flows.iteration import iteration_flow
    imports_orch = time.perf_counter() - s

    @flow(name="bench-noop")
    def noop() -> int:
        return 0

    s = time.perf_counter()
    noop()  # starts the ephemeral Prefect server
    server_start = time.perf_counter() - s

    files = common.config_files(root)
    cfg = load_config(files)
    s = time.perf_counter()
    common.plain_iteration(cfg, root / "warm-up")  # lazy imports and first-call costs land here, untimed
    warm_up = time.perf_counter() - s
    plain, flowed, stage_gap, ws_init = [], [], [], []
    for r in range(args.repeats):
        work = root / f"plain-{r}"
        s = time.perf_counter()
        t_plain = common.plain_iteration(cfg, work)
        plain.append(time.perf_counter() - s)

        ws = root / f"ws-{r}"
        common.use_workspace(ws)
        s = time.perf_counter()
        common.prepare_workspace(ws, cfg.name)
        ws_init.append(time.perf_counter() - s)
        s = time.perf_counter()
        ledger = iteration_flow(files, [], str(ws))
        flowed.append(time.perf_counter() - s)
        stage_gap.append({k: ledger["timings"].get(k, 0.0) - t_plain.get(k, 0.0) for k in ledger["timings"]})
        print(f"repeat {r}: plain {plain[-1]:.1f} s, flow {flowed[-1]:.1f} s "
              f"(stages: {', '.join(f'{k} {v:+.2f}' for k, v in stage_gap[-1].items())})", flush=True)

    p, f = statistics.median(plain), statistics.median(flowed)
    overhead = f - p
    per_stage = {k: statistics.median(g[k] for g in stage_gap) for k in stage_gap[0]}
    print(f"\none-time start-up: ML imports {imports_ml:.1f} s, prefect+mlflow+dvc imports {imports_orch:.1f} s, "
          f"ephemeral Prefect server {server_start:.1f} s, new workspace {statistics.median(ws_init):.1f} s, "
          f"untimed warm-up iteration {warm_up:.1f} s")
    print(f"per iteration (median of {args.repeats}): plain loop {p:.2f} s, Prefect flow {f:.2f} s, "
          f"overhead {overhead:+.2f} s = {100 * overhead / f:+.1f}% of the flow's wall time (target ≤ 3%), "
          f"ratio flow/plain {f / p:.3f}")
    print("flow − plain per stage (s): " + ", ".join(f"{k} {v:+.2f}" for k, v in per_stage.items()))
    common.emit("orchestration", {
        "repeats": args.repeats, "plain_s": p, "flow_s": f, "overhead_s": overhead,
        "overhead_pct_of_iteration": 100 * overhead / f, "ratio_flow_over_plain": f / p,
        "per_stage_overhead_s": per_stage, "startup_s": {"ml_imports": imports_ml, "orchestration_imports":
                                                          imports_orch, "prefect_server": server_start,
                                                          "workspace_init": statistics.median(ws_init),
                                                          "warm_up_plain_iteration": warm_up},
        "plain_runs_s": plain, "flow_runs_s": flowed})


if __name__ == "__main__":
    main()
