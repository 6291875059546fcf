"""Orchestration overhead: one iteration through the Prefect flow (MLflow + DVC tracking, artifact store,
ledger) vs the same stage functions in a plain Python loop with no tracking. Target: per-iteration overhead
≤ 3% of the iteration's wall time.

    .venv/bin/python benchmarks/bench_orchestration.py [--repeats 4] [--small]

The iteration is the embedded default's first (configs/tiny.yaml; `--small` layers benchmarks/small.yaml for a
~5 s iteration, on which any fixed cost looks large). The flow runs twice per repeat: with `report: false` and
with the default per-iteration HTML report (`report: true`), so the report's cost is reported apart.

Two measures of the overhead, both printed:
- direct: median flow wall time − median plain-loop wall time. Honest but noisy: the training stages of two
  runs of the same computation differ by ±1–3 s on a shared VM, more than the effect measured;
- orchestration time: in each run, wall time − the time spent inside the pure stage functions (common.StageClock
  times `components.stages.<stage>.run` on both sides; under the stage contract a stage reads its inputs through
  the store itself, on either side), i.e. everything the flow adds (Prefect task runs, cache keys and result
  persistence, publishing outputs: content hashing and atomic renames, the initial policy's copy into the store,
  MLflow runs/metrics/registry, DVC, ledger, report) measured inside one run, without the training noise; minus
  the same for the plain loop (`common.PlainStages`: the pool read, its outputs written by name, unhashed).
  The ratio Σ stage compute (flow) / Σ stage compute (plain) says whether the stages themselves ran slower
  under the flow (contention from its background threads/processes), which the second measure would hide.

One-time start-up is measured apart: importing prefect/mlflow/dvc, the ephemeral Prefect server (first flow
run), creating a workspace (MLflow database, DVC repo), and one untimed plain iteration that absorbs lazy imports
and first-call costs. Then plain and flow iterations alternate, each flow iteration in a fresh, prepared workspace
(so both compute iteration 0 from the same inputs); medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

import common

SIDES = {"plain": "plain loop", "off": "Prefect flow, report: false", "on": "Prefect flow, report: true (default)"}


@dataclass
class Runs:
    """Per side, per repeat: wall seconds, Σ seconds inside the pure stage functions, and (flow sides) per stage
    task seconds − compute; the seconds each fresh workspace took to prepare."""

    wall: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in SIDES})
    compute: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in SIDES})
    wrapper: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {"off": [], "on": []})
    ws_init: list[float] = field(default_factory=list)


def start_up() -> dict[str, float]:
    """One-time costs: ML imports, prefect/mlflow/dvc imports, the ephemeral Prefect server (first flow run)."""
    imports_ml = common.warm_imports()

    s = time.perf_counter()
    import dvc.repo  # noqa: F401
    import mlflow  # noqa: F401
    import networkx  # noqa: F401  (dvc imports it lazily on the first `add`)
    from prefect import flow

    from components.config import load_config  # noqa: F401
    from flows.iteration import in_process_run, iteration_flow  # noqa: F401
    imports_orch = time.perf_counter() - s

    @flow(name="bench-noop")
    def noop() -> int:
        return 0

    s = time.perf_counter()
    noop()  # starts the ephemeral Prefect server
    server_start = time.perf_counter() - s
    return {"ml_imports": imports_ml, "orchestration_imports": imports_orch, "prefect_server": server_start}


def timed_iteration(side: str, r: int, root, cfg, files: dict, clock: common.StageClock, runs: Runs) -> float:
    """Repeat `r` of one side (plain loop, or the flow in a fresh prepared workspace); returns its wall seconds."""
    from flows.iteration import in_process_run, iteration_flow

    s = time.perf_counter()
    if side == "plain":
        common.plain_iteration(cfg, root / f"plain-{r}")
    else:
        ws = root / f"ws-{r}-report-{side}"
        common.use_workspace(ws)
        t0 = time.perf_counter()
        common.prepare_workspace(ws, cfg.name)
        runs.ws_init.append(time.perf_counter() - t0)
        s = time.perf_counter()
        with in_process_run():  # as `alignloop run` runs it
            ledger = iteration_flow(files[side], [], str(ws))
        runs.wrapper[side].append({k: v - clock.seconds.get(k, 0.0) for k, v in ledger["timings"].items()})
    return time.perf_counter() - s


def measure(repeats: int, root, cfg, files: dict) -> Runs:
    """Plain and flow iterations alternating, `repeats` times."""
    runs = Runs()
    for r in range(repeats):
        for side in SIDES:
            with common.StageClock() as clock:
                runs.wall[side].append(timed_iteration(side, r, root, cfg, files, clock, runs))
            runs.compute[side].append(sum(clock.seconds.values()))
        print(f"repeat {r}: " + ", ".join(f"{SIDES[k]} {runs.wall[k][-1]:.1f} s (stages {runs.compute[k][-1]:.1f} s)"
                                          for k in SIDES), flush=True)
    return runs


def flow_side(k: str, repeats: int, runs: Runs, plain_orch: float) -> dict:
    """Print one flow side's overhead (both measures); returns its JSON result."""
    med = statistics.median
    wall, compute, wrapper = runs.wall, runs.compute, runs.wrapper
    f, over = med(wall[k]), med(wall[k]) - med(wall["plain"])
    orch = [w - c - plain_orch for w, c in zip(wall[k], compute[k])]
    slow = med(compute[k]) / med(compute["plain"])
    per_stage = {s: med(g[s] for g in wrapper[k]) for s in wrapper[k][0]}
    outside = [w - c - sum(g.values()) for w, c, g in zip(wall[k], compute[k], wrapper[k])]
    print(f"{SIDES[k]} (median of {repeats}): {f:.2f} s\n"
          f"  orchestration time (wall − stage compute − the plain loop's): {med(orch):.2f} s = "
          f"{100 * med(orch) / f:.1f}% of the iteration's wall time (target ≤ 3%); runs: "
          f"{', '.join(f'{x:.2f}' for x in orch)}\n"
          f"  direct: flow − plain {over:+.2f} s = {100 * over / f:+.1f}%, ratio {f / med(wall['plain']):.3f}; "
          f"stage compute flow/plain {slow:.3f} (runs: flow {', '.join(f'{x:.1f}' for x in compute[k])}; "
          f"plain {', '.join(f'{x:.1f}' for x in compute['plain'])})\n"
          "  per stage, task − stage compute (s): " + ", ".join(f"{s} {v:.2f}" for s, v in per_stage.items())
          + f"; outside the stage tasks (flow set-up, ledger, parent run, report): {med(outside):.2f}")
    return {"flow_s": f, "flow_runs_s": wall[k], "stage_compute_runs_s": compute[k],
            "orchestration_s": med(orch), "orchestration_pct": 100 * med(orch) / f,
            "orchestration_runs_s": orch, "direct_overhead_s": over,
            "direct_overhead_pct": 100 * over / f, "ratio_flow_over_plain": f / med(wall["plain"]),
            "stage_compute_ratio_flow_over_plain": slow, "per_stage_wrapper_s": per_stage,
            "outside_stage_tasks_s": med(outside)}


def report(repeats: int, small: bool, startup: dict[str, float], runs: Runs) -> None:
    med = statistics.median
    wall, compute = runs.wall, runs.compute
    plain_orch = med(w - c for w, c in zip(wall["plain"], compute["plain"]))
    print(f"\none-time start-up: ML imports {startup['ml_imports']:.1f} s, prefect+mlflow+dvc imports "
          f"{startup['orchestration_imports']:.1f} s, ephemeral Prefect server {startup['prefect_server']:.1f} s, "
          f"new workspace {med(runs.ws_init):.1f} s, "
          f"untimed warm-up iteration {startup['warm_up_plain_iteration']:.1f} s")
    print(f"plain loop (median of {repeats}): {med(wall['plain']):.2f} s, of which {plain_orch:.2f} s outside "
          "the stage functions")
    result = {f"report_{k}": flow_side(k, repeats, runs, plain_orch) for k in ("off", "on")}
    common.emit("orchestration", {
        "repeats": repeats, "config": "small" if small else "embedded default", "plain_s": med(wall["plain"]),
        "plain_runs_s": wall["plain"], "plain_stage_compute_runs_s": compute["plain"], **result,
        "startup_s": {**startup, "workspace_init": med(runs.ws_init)}})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--small", action="store_true", help="layer benchmarks/small.yaml (a ~5 s iteration)")
    args = ap.parse_args()
    root = common.scratch("orchestration")
    common.setup_env(root)
    startup = start_up()
    from components.config import load_config

    files = {"off": common.config_files(root, small=args.small, name="report-off", report=False),
             "on": common.config_files(root, small=args.small, name="report-on", report=True)}
    cfg = load_config(files["off"])
    s = time.perf_counter()
    common.plain_iteration(cfg, root / "warm-up")  # lazy imports and first-call costs land here, untimed
    startup["warm_up_plain_iteration"] = time.perf_counter() - s
    report(args.repeats, args.small, startup, measure(args.repeats, root, cfg, files))


if __name__ == "__main__":
    main()
