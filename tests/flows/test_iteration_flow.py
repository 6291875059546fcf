"""The real loop end to end: two iterations through Prefect, checked with independent MLflow and DVC clients."""

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

STAGES = {"sample_prompts", "generate", "label", "train_reward", "train_policy", "evaluate", "gate", "version"}


@pytest.fixture(scope="module")
def two_iterations(two_iteration_loop):
    return two_iteration_loop


def test_two_iterations_tracked_in_mlflow(two_iterations):
    from mlflow import MlflowClient

    from components.workspace import Workspace

    cfg, ws, ledgers = two_iterations
    assert [d["iteration"] for d in ledgers] == [0, 1] and all(d["status"] == "finished" for d in ledgers)
    client = MlflowClient(Workspace.at(ws).tracking_uri)
    exp = client.get_experiment_by_name("flowtest")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags["alignloop.stage"] == "iteration"]
    assert sorted(r.data.tags["alignloop.iteration"] for r in parents) == ["0", "1"]
    for parent in parents:
        assert parent.info.status == "FINISHED" and parent.data.tags["config_hash"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert {r.data.tags["alignloop.stage"] for r in children} == STAGES
        assert all(r.info.status == "FINISHED" for r in children)
        label = next(r for r in children if r.data.tags["alignloop.stage"] == "label")
        assert label.data.tags["input.rollouts"] and label.data.tags["output.preferences"]
        assert "label/pairs_kept" in label.data.metrics
    # iteration 0 seeds with gold labels, iteration 1 is labelled by the ensemble trained in iteration 0
    assert ledgers[0]["report"] and ledgers[1]["start"]["reward_model"]["sha256"] == \
        ledgers[0]["outputs"]["reward_model"]["sha256"]
    policy = client.get_registered_model("policy")
    versions = client.search_model_versions("name = 'policy'")
    assert len(versions) == 3  # initial + two candidates
    assert {"champion", "candidate"} <= set(policy.aliases)
    promoted = [d for d in ledgers if d["decision"]["promote"]]
    expected = promoted[-1]["decision"]["version"] if promoted else "1"
    assert str(policy.aliases["champion"]) == str(expected)
    assert len(client.search_model_versions("name = 'reward-model'")) == 2


def test_iteration_data_retrievable_with_dvc(two_iterations):
    import dvc.api

    from components.artifacts import ArtifactRef, ArtifactStore
    from components.workspace import Workspace

    _, ws, ledgers = two_iterations
    w = Workspace.at(ws)
    store = ArtifactStore(w.store)
    for d in ledgers:
        ref = ArtifactRef(**d["outputs"]["preferences"])
        with dvc.api.open(f"iterations/iter-{d['iteration']:04d}/preferences.parquet", repo=str(w.data_repo),
                          rev=f"iter-{d['iteration']}", mode="rb") as fh:
            assert pq.read_table(fh).equals(store.read_table(ref))
    assert any(w.dvc_remote.rglob("*")), "iteration data was pushed to the DVC remote"


def test_rerun_of_a_finished_iteration_recomputes_nothing(two_iterations):
    from mlflow import MlflowClient

    from components.workspace import Workspace
    from flows.iteration import iteration_flow

    cfg, ws, ledgers = two_iterations
    w = Workspace.at(ws)
    client = MlflowClient(w.tracking_uri)
    exp = client.get_experiment_by_name("flowtest")
    before = len(client.search_runs([exp.experiment_id]))
    last = dict(ledgers[-1], status="running")  # as if the process died after its last stage
    w.write_ledger(1, last)
    again = iteration_flow(str(cfg), [], str(ws))
    assert again["outputs"] == ledgers[-1]["outputs"]
    # every stage came from the cache, so each keeps the time it took when it ran, not the cache lookup's
    assert again["timings"] == ledgers[-1]["timings"] and ledgers[-1]["timings"]["train_policy"] > 0.2
    assert len(client.search_runs([exp.experiment_id])) == before  # no stage ran again, no duplicate runs
    assert len(client.search_model_versions("name = 'policy'")) == 3
