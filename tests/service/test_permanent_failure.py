"""A stage that fails for good: the iteration is marked FAILED in MLflow with the error, the champion does not
move (even though the gate had already promoted), and the next run starts a fresh iteration (not a resume:
a permanent failure is history, only a crash is resumed; see flows.iteration and Workspace.next_iteration)."""

import subprocess

import pytest
from service_helpers import EXE, service_config, service_env

pytestmark = [pytest.mark.service, pytest.mark.slow]


def test_failed_iteration_keeps_champion_and_next_run_is_fresh(tmp_path, tiny_bootstrap, prefect_server):
    from mlflow import MlflowClient

    from components.workspace import Workspace

    cfg, ws = service_config(tmp_path, tiny_bootstrap, "failing"), tmp_path / "ws"
    w = Workspace.at(ws)
    # The DVC push of the last stage (version) cannot succeed: /proc is not writable, even by root.
    bad = service_env(prefect_server, ALIGNLOOP_DVC_REMOTE="/proc/alignloop-remote")
    r = subprocess.run([EXE, "run", "-c", str(cfg), "-w", str(ws)], env=bad, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode != 0, r.stdout
    client = MlflowClient(w.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("failing").experiment_id])
    parent = next(x for x in runs if x.data.tags["alignloop.stage"] == "iteration")
    assert parent.info.status == "FAILED" and parent.data.tags["alignloop.error"]
    version = next(x for x in runs if x.data.tags["alignloop.stage"] == "version")
    assert version.info.status == "FAILED" and "alignloop-remote" in version.data.tags["alignloop.error"]
    gate = next(x for x in runs if x.data.tags["alignloop.stage"] == "gate")
    assert gate.data.metrics["gate/promote"] == 1.0, "the loose gate should have promoted before version failed"
    assert str(client.get_registered_model("policy").aliases["champion"]) == "1"  # promotion undone
    assert w.read_ledger(0)["status"] == "failed"

    r = subprocess.run([EXE, "run", "-c", str(cfg), "-w", str(ws)], env=service_env(prefect_server),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [(d["iteration"], d["status"]) for d in w.ledgers()] == [(0, "failed"), (1, "finished")]
    runs = client.search_runs([client.get_experiment_by_name("failing").experiment_id])
    parents = {x.data.tags["alignloop.iteration"]: x.info.status for x in runs
               if x.data.tags["alignloop.stage"] == "iteration"}
    assert parents == {"0": "FAILED", "1": "FINISHED"}
    assert w.read_ledger(1)["start"]["champion_version"] == "1"  # started from the unchanged champion
