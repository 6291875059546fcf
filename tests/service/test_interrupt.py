"""Ctrl-C a real `alignloop run` mid-stage (SIGINT to its process group, as a terminal sends it, the ephemeral
Prefect server included): it stops within seconds, leaves the iteration resumable (not `failed`) with its MLflow
run KILLED, and the next `alignloop run` finishes the same iteration with the stages done before the interrupt
served from the cache (components/interrupts.py)."""

import contextlib
import os
import signal
import subprocess
import time

import pytest
from service_helpers import EXE, service_config
from test_crash_resume import _running

pytestmark = [pytest.mark.service, pytest.mark.slow]

DONE_BEFORE = ("sample_prompts", "generate", "label")


def _ephemeral_env(tmp_path) -> dict[str, str]:
    """No Prefect server of ours: `alignloop run` starts Prefect's ephemeral one (the case the issue hit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIGNLOOP_", "PREFECT_API_", "MLFLOW_TRACK"))}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home")}


def _group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_sigint_mid_stage_stops_fast_and_resumes(tmp_path, tiny_bootstrap):
    from mlflow import MlflowClient

    from components.workspace import Workspace

    cfg, env, w = service_config(tmp_path, tiny_bootstrap, "interrupt"), _ephemeral_env(tmp_path), \
        Workspace.at(tmp_path / "ws")
    cmd = [EXE, "run", "-c", str(cfg), "-w", str(w.root), "-n", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while proc.poll() is None:  # interrupt train_reward while it runs, after label finished
            ledger = w.read_ledger(0) or {}
            if set(DONE_BEFORE) <= set(ledger.get("timings", {})) and _running(w.root / "mlflow.db", "train_reward"):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    out = out.decode(errors="replace")
    assert took <= 30, f"took {took:.0f} s to stop:\n{out}"
    assert proc.returncode == 130, out
    assert "resumable" in out and "Traceback" not in out, out
    assert _group_gone(proc.pid, 10), "child processes outlived the interrupted run"
    assert w.read_ledger(0)["status"] == "running" and "error" not in w.read_ledger(0)
    client = MlflowClient(w.tracking_uri)
    exp = client.get_experiment_by_name("interrupt").experiment_id
    parent = [r for r in client.search_runs([exp]) if r.data.tags["alignloop.stage"] == "iteration"]
    assert [r.info.status for r in parent] == ["KILLED"]

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, start_new_session=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [(d["iteration"], d["status"]) for d in w.ledgers()] == [(0, "finished")]
    runs = client.search_runs([exp])
    parents = [r for r in runs if r.data.tags["alignloop.stage"] == "iteration"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same iteration run, resumed
    by_stage: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        by_stage.setdefault(run.data.tags["alignloop.stage"], []).append(run.info.status)
    for stage in DONE_BEFORE:  # served from the cache: no second child run
        assert by_stage[stage] == ["FINISHED"], (stage, by_stage)
    assert by_stage["train_reward"] == ["KILLED", "FINISHED"], by_stage
