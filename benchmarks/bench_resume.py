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
from dataclasses import dataclass
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


@dataclass
class Loop:
    """One benchmark loop: its config files, workspace, scratch root and MLflow experiment name."""

    files: list[str]
    ws: Path
    root: Path
    name: str

    def new_stage_runs(self, before: dict[str, str]) -> set[str]:
        return {v for k, v in _stage_runs(self.ws, self.name).items() if k not in before}

    def reopen(self, first: dict) -> dict[str, str]:
        """Mark iteration 0 running again (as a crash would leave it); returns the stage runs so far."""
        from components.workspace import Workspace

        before = _stage_runs(self.ws, self.name)
        Workspace.at(self.ws).write_ledger(0, dict(first, status="running"))
        return before


def in_process_iteration(loop: Loop, progress=None) -> tuple[dict, float]:
    """One iteration through the flow in this process, as `alignloop run` runs it; (ledger, seconds)."""
    from flows.iteration import in_process_run, iteration_flow

    s = time.perf_counter()
    with in_process_run():
        ledger = iteration_flow(loop.files, [], str(loop.ws), progress)
    return ledger, time.perf_counter() - s


def rerun_finished(loop: Loop, first: dict) -> dict:
    """Re-run the finished iteration 0: warm in this process, in a fresh process with an ephemeral server, and in
    a fresh process against a running server (what `alignloop run` pays with `alignloop stack up`)."""
    before = loop.reopen(first)
    again, warm_s = in_process_iteration(loop)
    assert again["outputs"] == first["outputs"], "a re-run changed the iteration's outputs"
    recomputed_warm = loop.new_stage_runs(before)
    before = loop.reopen(first)
    _, cold = run_child(loop.files, loop.ws, loop.root, None)
    recomputed_cold = loop.new_stage_runs(before)
    # what `alignloop run` pays against a running server (`alignloop stack up`): no ephemeral server start
    from infra import stack

    srv = loop.root / "prefect-server"
    api = stack.prefect_server(srv, stack.free_port(), dict(os.environ))
    try:
        before = loop.reopen(first)
        _, served = run_child(loop.files, loop.ws, loop.root, None, api_url=api)
        recomputed_cold |= loop.new_stage_runs(before)
    finally:
        stack.stop(srv, "prefect")
    return {"warm_s": warm_s, "recomputed_warm": recomputed_warm, "cold": cold[-1], "served": served[-1],
            "recomputed_cold": recomputed_cold}


def kill_and_resume(loop: Loop, kill_after: float) -> dict:
    """SIGKILL iteration 1 `kill_after` s into train_policy (in a child), then resume it in this process."""
    from components.workspace import Workspace

    before = _stage_runs(loop.ws, loop.name)
    rc, _ = run_child(loop.files, loop.ws, loop.root, kill_after)
    assert rc == -signal.SIGKILL and Workspace.at(loop.ws).read_ledger(1)["status"] == "running", \
        "the child was not killed mid-iteration"
    after_kill = _stage_runs(loop.ws, loop.name)
    done_before_kill = sorted(v for k, v in after_kill.items() if k not in before)
    stage_s: dict[str, float] = {}  # this run's seconds per stage (the ledger keeps a cached stage's first time)

    def listen(stage: str, event: str, sec: float) -> None:
        if event == "done":
            stage_s[stage] = sec

    _, resume_s = in_process_iteration(loop, progress=listen)
    recomputed = sorted(loop.new_stage_runs(after_kill))
    if "train_policy" not in recomputed:
        print(f"NOTE: the kill landed after train_policy had finished (recomputed {recomputed}): use a smaller "
              "--kill-after", flush=True)
    print(f"iteration 1 killed {kill_after} s into train_policy (stage runs opened before the kill: "
          f"{done_before_kill}); resume took {resume_s:.1f} s, recomputing {recomputed}; stage times on resume: "
          + ", ".join(f"{k} {v:.2f}" for k, v in stage_s.items()))
    return {"kill_after_s_into_train_policy": kill_after, "stages_run_before_kill": done_before_kill,
            "resume_after_kill_s": resume_s, "resume_recomputed_stages": recomputed, "resume_stage_s": stage_s}


def start_server() -> float:
    """Seconds to the first flow run: the ephemeral Prefect server's start."""
    from prefect import flow

    @flow(name="bench-noop")
    def noop() -> int:
        return 0

    s = time.perf_counter()
    noop()
    return time.perf_counter() - s


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
    from components.config import load_config
    from flows import iteration  # noqa: F401  (imported before the server start is timed, as ever)

    server_start = start_server()
    files = common.config_files(root)
    loop = Loop(files, ws, root, load_config(files).name)
    first, full_s = in_process_iteration(loop)
    rerun = rerun_finished(loop, first)
    cold, served, warm_r, cold_r = rerun["cold"], rerun["served"], rerun["recomputed_warm"], rerun["recomputed_cold"]
    print(f"iteration 0: full run {full_s:.1f} s; re-run of the finished iteration: warm {rerun['warm_s']:.2f} s, "
          f"fresh process with an ephemeral server {cold['flow_s']:.2f} s in the flow + start-up = "
          f"{cold['process_s']:.1f} s, fresh process against a running server {served['flow_s']:.2f} s in "
          f"the flow + start-up = {served['process_s']:.1f} s (target ≤ 5 s); stages recomputed: warm "
          f"{sorted(warm_r) or 'none'}, fresh {sorted(cold_r) or 'none'}", flush=True)
    resumed = kill_and_resume(loop, kill_after)
    common.emit("resume", {
        "prefect_server_start_s": server_start, "iteration_full_s": full_s,
        "rerun_finished_warm_s": rerun["warm_s"], "rerun_finished_fresh_process_flow_s": cold["flow_s"],
        "rerun_finished_fresh_process_total_s": cold["process_s"],
        "rerun_finished_fresh_process_running_server_flow_s": served["flow_s"],
        "rerun_finished_fresh_process_running_server_total_s": served["process_s"],
        "rerun_recomputed_stages": sorted(warm_r | cold_r), **resumed})


if __name__ == "__main__":
    main()
