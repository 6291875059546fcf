"""The workspace record (components/record.py) and store verification (components/integrity.py, `alignloop
verify`) on a workspace built by hand the way a finished iteration leaves it: artifacts in the store, a real
MLflow registry (SQLite), a real git+DVC data repo with its local remote, and a ledger with its record. No
iteration runs here (tests/flows/test_record_flow.py runs one)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from components import record
from components.artifacts import ArtifactStore
from components.lineage import POLICY, REWARD_MODEL, TAG_SHA, Tracker
from components.versioning import DataRepo
from components.workspace import Workspace

os.environ["DVC_NO_ANALYTICS"] = "1"


def _model(store: ArtifactStore, kind: str, seed: int):
    with store.staging_dir() as d:
        (d / "m").mkdir()
        (d / "m" / "config.json").write_text("{}")
        (d / "m" / "model.safetensors").write_bytes(hashlib.sha256(str(seed).encode()).digest() * 8)
        return store.put_dir(kind, d / "m", meta={"seed": seed})


def _tables(store: ArtifactStore) -> dict:
    prompts = pa.table({"prompt_id": ["p0", "p1"], "prompt": ["review a :", "review b :"], "source": ["a", "b"],
                        "split": ["train", "train"], "iteration": [0, 0]})
    prefs = pa.table({"pair_id": ["x"], "prompt_id": ["p0"], "prompt": ["review a :"], "chosen": [" good"],
                      "rejected": [" bad"], "label_source": ["gold"], "margin": [1.0], "uncertainty": [0.0],
                      "agreement": [1.0], "iteration": [0]})
    return {"prompts": store.put_table("prompts", prompts), "preferences": store.put_table("preferences", prefs),
            "eval_report": store.put_json("eval_report", {"metrics": {"evaluate/x": 1.0}})}


def build(root: Path) -> Workspace:
    """One finished iteration: initial policy v1, candidate v2 (promoted), reward-model v1, data tag iter-0."""
    ws = Workspace.at(root)
    store = ArtifactStore(ws.store)
    initial, candidate, rm = _model(store, "policy", 0), _model(store, "policy", 1), _model(store, "reward_model", 2)
    outputs = {**_tables(store), "candidate": candidate, "reward_model": rm}
    tracker = Tracker(ws.tracking_uri, ws.artifact_root, "handmade")
    run = tracker.iteration_run(0, "handmade", {"config_hash": "c0ffee", "git_sha": "abc"}, {"config": "{}"})
    tracker.register(POLICY, initial, store.uri(initial), run, {"alignloop.iteration": "-1"})
    tracker.set_alias(POLICY, "champion", "1")
    tracker.register(REWARD_MODEL, rm, store.uri(rm), run, {"alignloop.iteration": "0"})
    tracker.set_alias(REWARD_MODEL, "champion", "1")
    tracker.promote(POLICY, tracker.register(POLICY, candidate, store.uri(candidate), run,
                                             {"alignloop.iteration": "0", "alignloop.gate": "promote"}))
    repo = DataRepo(ws.data_repo, str(ws.dvc_remote))
    repo.init()
    files = {f"{k}{store.path(r).suffix}": store.path(r) for k, r in outputs.items() if k in record.DATA_OUTPUTS}
    rev = repo.track_iteration(0, files)
    tracker.end_run(run)
    ws.write_ledger(0, {"iteration": 0, "status": "finished", "config_hash": "c0ffee", "timings": {"label": 1.0},
                        "outputs": {k: v.model_dump() for k, v in outputs.items()}, "data_rev": rev,
                        "decision": {"promote": True, "reasons": [], "checks": []},
                        "record": record.what_must_exist(ws, tracker, 0, run, rev)})
    return ws


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("record") / "ws").root


@pytest.fixture
def ws(built: Path, tmp_path: Path) -> Workspace:
    """A private copy of the built workspace (the DVC remote is the original's: remotes are absolute)."""
    shutil.copytree(built, tmp_path / "ws", symlinks=True)
    return Workspace.at(tmp_path / "ws")


def _versions(ws: Workspace) -> dict:
    from components.lineage import _client

    client = _client(ws.tracking_uri)
    return {name: {str(mv.version): mv.tags.get(TAG_SHA) for mv in client.search_model_versions(f"name = '{name}'")}
            for name in (POLICY, REWARD_MODEL)}


def test_the_record_names_versions_aliases_and_the_data_tag(built: Path):
    ws = Workspace.at(built)
    rec = ws.read_ledger(0)["record"]
    assert rec["experiment"] == "handmade" and rec["data_tag"] == "iter-0"
    assert sorted(rec["registry"][POLICY]) == ["1", "2"] and sorted(rec["registry"][REWARD_MODEL]) == ["1"]
    assert rec["aliases"][POLICY] == {"champion": "2", "previous": "1", "head": "2"}  # repair restores the head too
    assert record.missing(ws) == []
    record.check(ws)


def test_a_deleted_mlflow_db_is_refused_then_repaired_with_the_same_version_numbers(ws: Workspace):
    recorded = ws.read_ledger(0)["record"]["registry"]
    (ws.root / "mlflow.db").unlink()
    with pytest.raises(record.WorkspaceRecordError) as err:
        record.check(ws)
    assert "mlflow.db (the MLflow tracking store and model registry) is missing" in str(err.value)
    assert "alignloop repair" in str(err.value) and "Nothing was written" in str(err.value)
    assert not (ws.root / "mlflow.db").exists()  # the check created nothing

    done = record.repair(ws)
    assert any("policy v2 re-created" in line for line in done), done
    assert _versions(ws) == {name: {v: e["sha"] for v, e in versions.items()} for name, versions in recorded.items()}
    tracker = Tracker(ws.tracking_uri, ws.artifact_root, "handmade")
    assert str(tracker.alias(POLICY, "champion").version) == "2"
    assert str(tracker.alias(REWARD_MODEL, "champion").version) == "1"
    run = tracker._find("tags.`alignloop.iteration` = '0' and attributes.status = 'FINISHED'")
    assert run.data.tags["dvc.rev"] == ws.read_ledger(0)["data_rev"] and run.data.params["config"] == "{}"
    assert record.missing(ws) == [] and record.repair(ws) == []  # idempotent


def test_a_rebuilt_registry_that_reuses_numbers_is_named(ws: Workspace):
    """What a run did before the check: a fresh mlflow.db in which v1 names another checkpoint."""
    (ws.root / "mlflow.db").unlink()
    tracker = Tracker(ws.tracking_uri, ws.artifact_root, "handmade")
    other = _model(ArtifactStore(ws.store), "policy", 9)
    tracker.register(POLICY, other, "file:///elsewhere", None, {})
    problems = record.missing(ws)
    assert f"registry: policy v1 holds artifact {other.short}" in " ".join(problems)
    assert "registry: policy v2 (artifact" in " ".join(problems)
    with pytest.raises(record.WorkspaceRecordError, match="policy v1 holds artifact"):
        record.repair(ws)


def test_a_deleted_data_repo_is_refused_then_re_tracked_from_the_store(ws: Workspace):
    prefs = ArtifactStore(ws.store).path(ArtifactStore(ws.store).ref(
        "preferences", ws.read_ledger(0)["outputs"]["preferences"]["sha256"]))
    shutil.rmtree(ws.data_repo)
    with pytest.raises(record.WorkspaceRecordError, match=r"data \(the DVC data repository, tags iter-0\) is missing"):
        record.check(ws)
    assert not ws.data_repo.exists()
    done = record.repair(ws)
    assert done and "tag iter-0" in done[0]
    repo = DataRepo(ws.data_repo, str(ws.dvc_remote))
    assert repo.rev(0) == ws.read_ledger(0)["data_rev"] == ws.read_ledger(0)["record"]["data_rev"]
    with repo.open(0, "preferences.parquet") as fh:
        assert fh.read() == prefs.read_bytes()
    assert record.missing(ws) == []


def test_a_deleted_tag_is_named(ws: Workspace):
    import subprocess

    subprocess.run(["git", "-C", str(ws.data_repo), "tag", "-d", "iter-0"], check=True, capture_output=True)
    assert record.missing(ws) == [f"data repo tag iter-0 is missing from {ws.data_repo}"]
    record.repair(ws)
    assert record.missing(ws) == []


def test_iteration_flow_refuses_before_writing_anything(ws: Workspace, monkeypatch):
    from flows import iteration

    monkeypatch.setattr(iteration, "validate_inputs", lambda cfg, path: None)
    (ws.root / "mlflow.db").unlink()
    before = sorted(p.relative_to(ws.root) for p in ws.root.rglob("*"))
    config = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    with pytest.raises(record.WorkspaceRecordError, match=r"mlflow\.db"):
        iteration.iteration_flow.fn(str(config), [], str(ws.root))
    assert sorted(p.relative_to(ws.root) for p in ws.root.rglob("*")) == before


def _cli(*args: str):
    from flows.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _flip(path: Path) -> None:
    st = path.stat()
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_verify_finds_corruption_and_repairs_it_from_the_dvc_copy(ws: Workspace):
    store = ArtifactStore(ws.store)
    out = ws.read_ledger(0)["outputs"]
    prefs = store.root / out["preferences"]["uri"]
    weights = store.root / out["candidate"]["uri"] / "model.safetensors"
    good = prefs.read_bytes()
    r = _cli("verify", "--workspace", str(ws.root))
    assert r.exit_code == 0 and "0 corrupt" not in r.output and "ok" in r.output, r.output
    _flip(prefs)
    _flip(weights)
    r = _cli("verify", "--workspace", str(ws.root))
    assert r.exit_code == 1, r.output
    assert f"corrupt preferences {out['preferences']['sha256']}" in r.output.replace("\n", "")
    assert f"corrupt policy {out['candidate']['sha256']}" in r.output.replace("\n", "")
    assert "alignloop verify --repair" in r.output

    # the data repo's own copy is intact (not a hardlink of the store's): preferences come back from it; the
    # candidate was never in the data repo, so it stays corrupt and the exit status says so
    r = _cli("verify", "--repair", "--workspace", str(ws.root))
    assert r.exit_code == 1 and "repaired preferences" in r.output and "good copy from the data repo" in r.output
    assert prefs.read_bytes() == good
    assert "no good copy found" in r.output


def test_verify_repairs_from_the_dvc_remote_when_the_dvc_cache_is_bad_too(ws: Workspace):
    store = ArtifactStore(ws.store)
    out = ws.read_ledger(0)["outputs"]
    prefs = store.root / out["preferences"]["uri"]
    good = prefs.read_bytes()
    _flip(prefs)
    md5 = hashlib.md5(good).hexdigest()
    cached = ws.data_repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    _flip(cached)  # e.g. the old layout, where the cache was a hardlink of the store's file
    r = _cli("verify", "--repair", "--workspace", str(ws.root))
    assert r.exit_code == 0, r.output
    assert "good copy from the DVC remote" in r.output.replace("\n", "")
    assert prefs.read_bytes() == good
