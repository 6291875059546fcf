"""Resume: wall time to re-run an already finished iteration (target ≤ 5 s, zero stages recomputed), and to resume
an iteration whose process was killed (SIGKILL) during the policy-update stage.

    .venv/bin/python benchmarks/bench_resume.py [--kill-after 2.0]

Iteration 0 runs through the flow; its ledger is then marked unfinished (as if the process died after its last
stage) and the flow re-run, warm (Prefect server already up) and in a fresh process (what `alignloop run` pays).
Iteration 1 runs in a child process that SIGKILLs itself `--kill-after` seconds after the train_policy stage
function starts (mid-training); this process then resumes it. "Recomputed" = stages that opened a new MLflow
stage run (a cached stage opens none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import common


def _stage_runs(ws: Path, loop: str) -> dict[str, str]:
    """run id -> stage, for every MLflow stage run in the workspace."""
    from mlflow import MlflowClient

    from components.workspace import Workspace

    client = MlflowClient(Workspace.at(ws).tracking_uri)
    exp = client.get_experiment_by_name(loop)
    runs = client.search_runs([exp.experiment_id], max_results=10_000)
    return {r.info.run_id: r.data.tags.get("alignloop.stage") for r in runs
            if r.data.tags.get("alignloop.stage") != "iteration"}


def child(files: list[str], ws: str, kill_after: float | None) -> None:
    """Run one iteration in this process; with kill_after, SIGKILL ourselves that long after the pure
    train_policy stage function starts (inside the Prefect task, its MLflow run open)."""
    t0 = time.perf_counter()
    from components.stages import train_policy
    from flows import iteration

    if kill_after is not None:
        stage_fn = train_policy.run

        def run_then_die(*a, **kw):
            print(json.dumps({"killed_at_s": time.perf_counter() - t0 + kill_after}), flush=True)
            threading.Timer(kill_after, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
            return stage_fn(*a, **kw)

        train_policy.run = run_then_die
    s = time.perf_counter()
    with iteration.in_process_run():  # as `alignloop run` runs it
        iteration.iteration_flow(files, [], ws)
    print(json.dumps({"flow_s": time.perf_counter() - s, "process_s": time.perf_counter() - t0}), flush=True)


def run_child(files: list[str], ws: Path, root: Path, kill_after: float | None, api_url: str | None = None
              ) -> tuple[int, list[dict]]:
    """Run `child` in its own process group. A SIGKILLed flow process leaves its ephemeral Prefect server
    running (orphaned, holding the output pipes), so the group is terminated afterwards and output goes to files.
    With `api_url` the child uses that running Prefect server instead of starting an ephemeral one."""
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect-home-child")}  # its own ephemeral server DB
    if api_url:
        env["PREFECT_API_URL"] = api_url
    cmd = [sys.executable, __file__, "--child", str(ws), *(["--kill-after", str(kill_after)] if kill_after else []),
           "--files", *files]
    out, err = root / "child.out", root / "child.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, start_new_session=True)
        rc = proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # the group of the child we started: its leftover server
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
    if rc not in (0, -signal.SIGKILL):
        raise RuntimeError(f"child failed ({rc}):\n{err.read_text()[-3000:]}")
    return rc, lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kill-after", type=float, default=None, help="seconds into train_policy (default 0.5)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--files", nargs="*", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    common.run_from_snapshot(sys.argv)
    if args.child:
        child(args.files, args.child, args.kill_after)
        return
    kill_after = 0.5 if args.kill_after is None else args.kill_after
    root = common.scratch("resume")
    common.setup_env(root)
    ws = root / "ws"
    common.use_workspace(ws)
    common.warm_imports()
    from prefect import flow

    from components.config import load_config
    from components.workspace import Workspace
    from flows import iteration
    from flows.iteration import in_process_run, iteration_flow

    @flow(name="bench-noop")
    def noop() -> int:
        return 0

    s = time.perf_counter()
    noop()
    server_start = time.perf_counter() - s
    files = common.config_files(root)
    loop = load_config(files).name
    w = Workspace.at(ws)

    s = time.perf_counter()
    with in_process_run():
        first = iteration_flow(files, [], str(ws))
    full_s = time.perf_counter() - s

    def rerun_warm() -> tuple[float, set[str]]:
        before = _stage_runs(ws, loop)
        w.write_ledger(0, dict(first, status="running"))
        s = time.perf_counter()
        with in_process_run():
            again = iteration_flow(files, [], str(ws))
        dt = time.perf_counter() - s
        assert again["outputs"] == first["outputs"], "a re-run changed the iteration's outputs"
        return dt, {v for k, v in _stage_runs(ws, loop).items() if k not in before}

    warm_s, recomputed_warm = rerun_warm()
    before = _stage_runs(ws, loop)
    w.write_ledger(0, dict(first, status="running"))
    _, cold = run_child(files, ws, root, None)
    recomputed_cold = {v for k, v in _stage_runs(ws, loop).items() if k not in before}
    # what `alignloop run` pays against a running server (`alignloop stack up`): no ephemeral server start
    from flows import stack

    srv = root / "prefect-server"
    api = stack.prefect_server(srv, stack.free_port(), dict(os.environ))
    try:
        before = _stage_runs(ws, loop)
        w.write_ledger(0, dict(first, status="running"))
        _, served = run_child(files, ws, root, None, api_url=api)
        recomputed_cold |= {v for k, v in _stage_runs(ws, loop).items() if k not in before}
    finally:
        stack.stop(srv, "prefect")
    print(f"iteration 0: full run {full_s:.1f} s; re-run of the finished iteration: warm {warm_s:.2f} s, "
          f"fresh process with an ephemeral server {cold[-1]['flow_s']:.2f} s in the flow + start-up = "
          f"{cold[-1]['process_s']:.1f} s, fresh process against a running server {served[-1]['flow_s']:.2f} s in "
          f"the flow + start-up = {served[-1]['process_s']:.1f} s (target ≤ 5 s); stages recomputed: warm "
          f"{sorted(recomputed_warm) or 'none'}, fresh {sorted(recomputed_cold) or 'none'}", flush=True)

    before = _stage_runs(ws, loop)
    rc, _ = run_child(files, ws, root, kill_after)
    assert rc == -signal.SIGKILL and w.read_ledger(1)["status"] == "running", "the child was not killed mid-iteration"
    after_kill = _stage_runs(ws, loop)
    done_before_kill = sorted(v for k, v in after_kill.items() if k not in before)
    stage_s: dict[str, float] = {}  # this run's seconds per stage (the ledger keeps a cached stage's first time)
    def listen(stage: str, event: str, sec: float) -> None:
        if event == "done":
            stage_s[stage] = sec

    iteration._listeners.append(listen)
    s = time.perf_counter()
    with in_process_run():
        iteration_flow(files, [], str(ws))
    resume_s = time.perf_counter() - s
    iteration._listeners.remove(listen)
    recomputed = sorted(v for k, v in _stage_runs(ws, loop).items() if k not in after_kill)
    if "train_policy" not in recomputed:
        print(f"NOTE: the kill landed after train_policy had finished (recomputed {recomputed}): use a smaller "
              "--kill-after", flush=True)
    print(f"iteration 1 killed {kill_after} s into train_policy (stage runs opened before the kill: "
          f"{done_before_kill}); resume took {resume_s:.1f} s, recomputing {recomputed}; stage times on resume: "
          + ", ".join(f"{k} {v:.2f}" for k, v in stage_s.items()))
    common.emit("resume", {
        "prefect_server_start_s": server_start, "iteration_full_s": full_s,
        "rerun_finished_warm_s": warm_s, "rerun_finished_fresh_process_flow_s": cold[-1]["flow_s"],
        "rerun_finished_fresh_process_total_s": cold[-1]["process_s"],
        "rerun_finished_fresh_process_running_server_flow_s": served[-1]["flow_s"],
        "rerun_finished_fresh_process_running_server_total_s": served[-1]["process_s"],
        "rerun_recomputed_stages": sorted(recomputed_warm | recomputed_cold),
        "kill_after_s_into_train_policy": kill_after, "stages_run_before_kill": done_before_kill,
        "resume_after_kill_s": resume_s, "resume_recomputed_stages": recomputed, "resume_stage_s": stage_s})


if __name__ == "__main__":
    main()
