"""The workspace record on a real iteration: the ledger records what must exist; a run refuses when mlflow.db or
the data repo is gone; `alignloop repair` re-creates them and the loop goes on with the same version numbers. One
iteration of its own (the shared two-iteration loop is not touched)."""

import shutil

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_iteration(tmp_path_factory, tiny_bootstrap, prefect_backend, make_flow_config):
    from flows.iteration import continual_flow

    tmp = tmp_path_factory.mktemp("record_flow")
    cfg, ws = make_flow_config(tmp, tiny_bootstrap), tmp / "ws"
    continual_flow(str(cfg), [], str(ws), 1)
    return cfg, ws


def test_lost_mlflow_db_and_data_repo_are_refused_then_repaired(one_iteration):
    from components import record
    from components.lineage import TAG_SHA, _client
    from components.versioning import DataRepo
    from components.workspace import Workspace
    from flows.iteration import iteration_flow

    cfg, root = one_iteration
    ws = Workspace.at(root)
    rec = ws.read_ledger(0)["record"]
    assert rec["data_tag"] == "iter-0" and {"1", "2"} <= set(rec["registry"]["policy"])
    assert rec["registry"]["reward-model"] and rec["aliases"]["policy"]["champion"]

    (root / "mlflow.db").unlink()
    shutil.rmtree(root / "data")
    with pytest.raises(record.WorkspaceRecordError) as err:
        iteration_flow(str(cfg), [], str(root))
    assert "mlflow.db" in str(err.value) and "data (the DVC data repository" in str(err.value)
    assert not (root / "mlflow.db").exists() and not (root / "data").exists()
    assert ws.read_ledger(1) is None

    record.repair(ws)
    client = _client(ws.tracking_uri)
    for name, versions in rec["registry"].items():
        got = {str(mv.version): mv.tags[TAG_SHA] for mv in client.search_model_versions(f"name = '{name}'")}
        assert got == {v: e["sha"] for v, e in versions.items()}
    assert DataRepo(ws.data_repo, str(ws.dvc_remote)).rev(0)

    # the loop goes on: iteration 1's candidate is a new version number, not a reused one
    ledger = iteration_flow(str(cfg), [], str(root))
    assert ledger["status"] == "finished" and ledger["iteration"] == 1
    assert int(ledger["decision"]["version"]) > max(map(int, rec["registry"]["policy"]))
