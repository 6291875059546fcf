"""Orchestration overhead: one iteration through the Prefect flow (MLflow + DVC tracking, artifact store,
ledger) vs the same stage functions in a plain Python loop with no tracking. Target: per-iteration overhead
≤ 3% of the iteration's wall time.

    .venv/bin/python benchmarks/bench_orchestration.py [--repeats 2] [--small]

The iteration is the embedded default's first (configs/tiny.yaml; `--small` layers benchmarks/small.yaml for a
~5 s iteration, on which any fixed cost looks large). The flow runs twice per repeat: with `report: false` and
with the default per-iteration HTML report (`report: true`), so the report's cost is reported apart.

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
    ap.add_argument("--small", action="store_true", help="layer benchmarks/small.yaml (a ~5 s iteration)")
    args = ap.parse_args()
    root = common.scratch("orchestration")
    common.setup_env(root)
    imports_ml = common.warm_imports()

    s = time.perf_counter()
    import dvc.repo  # noqa: F401
    import mlflow  # noqa: F401
    import networkx  # noqa: F401  (dvc imports it lazily on the first `add`)
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

    files = {"off": common.config_files(root, small=args.small, name="report-off", report=False),
             "on": common.config_files(root, small=args.small, name="report-on", report=True)}
    cfg = load_config(files["off"])
    s = time.perf_counter()
    common.plain_iteration(cfg, root / "warm-up")  # lazy imports and first-call costs land here, untimed
    warm_up = time.perf_counter() - s
    plain: list[float] = []
    flowed: dict[str, list[float]] = {"off": [], "on": []}
    stage_gap: list[dict[str, float]] = []
    # Attributable without the training stages' run-to-run noise: flow wall − Σ stage tasks (flow set-up, ledger,
    # registry/MLflow summary, report) + the bookkeeping-only stages (gate: registry; version: DVC).
    attributable: dict[str, list[float]] = {"off": [], "on": []}
    ws_init: list[float] = []
    for r in range(args.repeats):
        s = time.perf_counter()
        t_plain = common.plain_iteration(cfg, root / f"plain-{r}")
        plain.append(time.perf_counter() - s)
        for report in ("off", "on"):
            ws = root / f"ws-{r}-report-{report}"
            common.use_workspace(ws)
            s = time.perf_counter()
            common.prepare_workspace(ws, cfg.name)
            ws_init.append(time.perf_counter() - s)
            s = time.perf_counter()
            ledger = iteration_flow(files[report], [], str(ws))
            flowed[report].append(time.perf_counter() - s)
            t = ledger["timings"]
            attributable[report].append(flowed[report][-1] - sum(t.values()) + t["gate"] + t["version"])
            if report == "off":
                stage_gap.append({k: ledger["timings"].get(k, 0.0) - t_plain.get(k, 0.0) for k in ledger["timings"]})
        print(f"repeat {r}: plain {plain[-1]:.1f} s, flow {flowed['off'][-1]:.1f} s, flow + report "
              f"{flowed['on'][-1]:.1f} s (stages: {', '.join(f'{k} {v:+.2f}' for k, v in stage_gap[-1].items())})",
              flush=True)

    p = statistics.median(plain)
    f = {k: statistics.median(v) for k, v in flowed.items()}
    per_stage = {k: statistics.median(g[k] for g in stage_gap) for k in stage_gap[0]}
    print(f"\none-time start-up: ML imports {imports_ml:.1f} s, prefect+mlflow+dvc imports {imports_orch:.1f} s, "
          f"ephemeral Prefect server {server_start:.1f} s, new workspace {statistics.median(ws_init):.1f} s, "
          f"untimed warm-up iteration {warm_up:.1f} s")
    result = {}
    for k, label in (("off", "Prefect flow, report: false"), ("on", "Prefect flow, report: true (default)")):
        over = f[k] - p
        print(f"per iteration (median of {args.repeats}): plain loop {p:.2f} s, {label} {f[k]:.2f} s, overhead "
              f"{over:+.2f} s = {100 * over / f[k]:+.1f}% of the flow's wall time (target ≤ 3%), "
              f"ratio flow/plain {f[k] / p:.3f}")
        a = statistics.median(attributable[k])
        print(f"  attributable overhead (flow − Σ stage tasks, + gate + version): {a:.2f} s = "
              f"{100 * a / f[k]:.1f}% of the flow's wall time; runs: {', '.join(f'{x:.2f}' for x in attributable[k])}")
        result[f"report_{k}"] = {"flow_s": f[k], "overhead_s": over, "overhead_pct_of_iteration": 100 * over / f[k],
                                 "ratio_flow_over_plain": f[k] / p, "flow_runs_s": flowed[k],
                                 "attributable_overhead_s": a, "attributable_overhead_pct": 100 * a / f[k],
                                 "attributable_runs_s": attributable[k]}
    print("flow (report: false) − plain per stage (s): " + ", ".join(f"{k} {v:+.2f}" for k, v in per_stage.items()))
    common.emit("orchestration", {
        "repeats": args.repeats, "config": "small" if args.small else "embedded default", "plain_s": p, **result,
        "per_stage_overhead_s": per_stage, "startup_s": {"ml_imports": imports_ml, "orchestration_imports":
                                                          imports_orch, "prefect_server": server_start,
                                                          "workspace_init": statistics.median(ws_init),
                                                          "warm_up_plain_iteration": warm_up},
        "plain_runs_s": plain})


if __name__ == "__main__":
    main()
