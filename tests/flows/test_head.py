"""The training head and the deployed champion, through real Prefect flow runs and the real MLflow registry.

Three tiny iterations: the first two candidates are safe but (by a gate whose significance bar cannot be met,
`gate.min_win_rate_lower=1`) not significant, so each becomes the head the next iteration samples from and trains,
while `champion` stays on the initial policy and every candidate is compared with it; the third gate can pass
and moves both aliases. Then a rollback restarts the head from the restored champion.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = shutil.which("alignloop", path=str(Path(sys.executable).parent))
# every safety check passes whatever the tiny models do; only the significance bar differs per iteration
SAFE = ["gate.max_kl=1000", "gate.max_length_ratio=100", "gate.min_head_win_rate=0", "gate.max_regression_drop=1000",
        "gate.hacking_tolerance=1"]
HOLD = [*SAFE, "gate.min_win_rate_lower=1"]  # "ci_low > 1": never significant
PASS = [*SAFE, "gate.min_win_rate_lower=0"]


def _aliases(client) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model("policy").aliases.items()}


def _cli(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ALIGNLOOP_WORKSPACE")}
    return subprocess.run([EXE, *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_safe_candidates_become_the_head_until_one_is_promoted(tmp_path, tiny_bootstrap, prefect_backend,
                                                               make_flow_config):
    from mlflow import MlflowClient

    from components.workspace import Workspace
    from flows.iteration import iteration_flow

    cfg, ws = str(make_flow_config(tmp_path, tiny_bootstrap)), tmp_path / "ws"
    d0 = iteration_flow(cfg, HOLD, str(ws))
    client = MlflowClient(Workspace.at(ws).tracking_uri)
    assert d0["decision"]["outcome"] == "head" and not d0["decision"]["promote"]
    assert all(r.startswith(("proxy_win_rate", "heldout_win_rate")) for r in d0["decision"]["reasons"])
    assert _aliases(client) == {"champion": "1", "head": "2", "candidate": "2"}

    d1 = iteration_flow(cfg, HOLD, str(ws))
    assert (d1["start"]["head_version"], d1["start"]["champion_version"]) == ("2", "1")
    # sampled from and trained from the head; compared with the champion (the initial policy)
    assert d1["start"]["head"]["sha256"] == d0["outputs"]["candidate"]["sha256"]
    assert d1["start"]["champion"]["sha256"] == d0["start"]["champion"]["sha256"]
    assert d1["decision"]["outcome"] == "head" and _aliases(client) == {"champion": "1", "head": "3",
                                                                          "candidate": "3"}
    runs = client.search_runs([client.get_experiment_by_name("flowtest").experiment_id],
                              "tags.`alignloop.iteration` = '1'")
    tags = {r.data.tags["alignloop.stage"]: r.data.tags for r in runs}
    assert tags["generate"]["input.policy"] == tags["train_policy"]["input.policy"] == d0["outputs"]["candidate"][
        "sha256"]
    assert tags["evaluate"]["input.champion"] == d0["start"]["champion"]["sha256"]

    d2 = iteration_flow(cfg, PASS, str(ws))
    assert d2["decision"]["outcome"] == "promote", d2["decision"]["reasons"]
    assert _aliases(client) == {"champion": "4", "head": "4", "candidate": "4", "previous": "1"}

    status = json.loads(_cli("status", "--json", "--workspace", str(ws)).stdout)
    assert [(r["decision"], r["head_version"], r["champion_version"]) for r in status["iterations"]] == [
        ("head", "2", "1"), ("head", "3", "1"), ("promote", "4", "4")]
    assert status["iterations"][0]["oracle_calls"] > 0  # the seed gold pairs
    lineage = json.loads(_cli("lineage", "policy@champion", "--json", "--workspace", str(ws)).stdout)
    assert [r["version"] for r in lineage] == ["4", "3", "2", "1"]  # parents through the heads
    assert [r["compared_with"]["version"] for r in lineage[:3]] == ["1", "1", "1"]

    r = _cli("rollback", "--reason", "test", "--workspace", str(ws))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _aliases(client) == {"champion": "1", "head": "1", "candidate": "4"}  # the head restarts there too


def test_a_failed_iteration_restores_champion_and_head(tmp_path):
    """A stage after the gate failed (retries spent): the gate's alias moves are undone from the start state."""
    from components.artifacts import ArtifactRef
    from components.lineage import Tracker
    from flows.iteration import _restore_champion

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "art").as_uri(), "restore")
    run = tracker.client.create_run(tracker.experiment_id).info.run_id
    for v in range(1, 4):
        tracker.register("policy", ArtifactRef(kind="policy", sha256=f"{v:064d}", uri=f"p/{v}"), f"/x/{v}", run, {})
    tracker.set_alias("policy", "champion", "1")
    tracker.set_alias("policy", "head", "2")
    tracker.promote("policy", "3")  # the failed iteration's gate
    _restore_champion(tracker, {"start": {"champion_version": "1", "head_version": "2"}})
    assert (str(tracker.alias("policy", "champion").version), str(tracker.head("policy").version)) == ("1", "2")
    _restore_champion(tracker, {"start": {"champion_version": "1"}})  # a ledger from before heads: champion only
    assert str(tracker.head("policy").version) == "2"
