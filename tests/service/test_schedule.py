"""The documented scheduling path: a Prefect server on 127.0.0.1 (fixture), `alignloop deploy`, a process worker,
a triggered run that completes, and a second trigger while it holds the slot that is not run concurrently."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from service_helpers import EXE, service_config, service_env

pytestmark = [pytest.mark.service, pytest.mark.slow]


def _wait_state(api: str, run_id: str, states: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{api}/flow_runs/{run_id}").json()["state"]
        if state and state["type"] in states:
            return state["type"]
        time.sleep(1)
    raise TimeoutError(f"flow run {run_id} not in {states} after {timeout}s (last: {state})")


def test_deploy_worker_trigger_completes_one_at_a_time(tmp_path, tiny_bootstrap, prefect_server):
    from components.workspace import Workspace

    api, cfg, ws = prefect_server, service_config(tmp_path, tiny_bootstrap, "sched"), tmp_path / "ws"
    env = service_env(api)
    r = subprocess.run([EXE, "deploy", "-c", str(cfg), "-w", str(ws), "--pool", "svc-pool", "--name", "svc",
                        "--on-collision", "cancel_new"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    dep = httpx.get(f"{api}/deployments/name/alignloop-scheduled/svc").json()
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 2 * * *"]  # nightly by default
    assert dep["work_pool_name"] == "svc-pool" and dep["global_concurrency_limit"]["limit"] == 1
    assert dep["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert dep["parameters"]["workspace"] == str(ws.resolve())

    # Two triggers before the worker starts: its first poll picks up both, so the second always arrives while the
    # first holds the deployment's only slot (triggering it once the first is RUNNING raced with a fast iteration
    # finishing first, and then running the second was correct behaviour).
    runs = [httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={}).json()["id"] for _ in range(2)]
    worker = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "svc-pool"],
                              env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        final = [_wait_state(api, r, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, 600) for r in runs]
        # one ran to completion; the other was cancelled (cancel_new), never run alongside it
        assert sorted(final) == ["CANCELLED", "COMPLETED"], final
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:  # a graceful shutdown waits for runs in flight: don't leave it behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(30)
    assert [(d["iteration"], d["status"]) for d in Workspace.at(ws).ledgers()] == [(0, "finished")]
