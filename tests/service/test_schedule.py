"""The documented scheduling path: a Prefect server on 127.0.0.1 (fixture), `alignloop deploy`, a process worker,
a triggered run that completes, and a second trigger during it that is not run concurrently."""

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

    worker = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "svc-pool"],
                              env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        first = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={}).json()["id"]
        _wait_state(api, first, {"RUNNING"}, 300)
        second = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={}).json()["id"]
        # the worker picks it up while the first holds the deployment's only slot: cancelled, not run
        assert _wait_state(api, second, {"CANCELLED", "COMPLETED", "FAILED", "CRASHED"}, 300) == "CANCELLED"
        assert _wait_state(api, first, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, 600) == "COMPLETED"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    assert [(d["iteration"], d["status"]) for d in Workspace.at(ws).ledgers()] == [(0, "finished")]
