"""DataRepo against real git, real DVC and a real local-directory remote (no mocks; faults are injected
by making one step raise, the way a crash would stop the run there)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dvc.repo import Repo

from components.versioning import DataRepo

os.environ["DVC_NO_ANALYTICS"] = "1"
DVC = Path(sys.executable).with_name("dvc")
PREFS = "preferences.parquet"


def git(path: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True)
    return proc.stdout.strip()


def n_commits(repo: DataRepo) -> int:
    return int(git(repo.path, "rev-list", "--count", "HEAD"))


def remote_has(remote: Path, content: bytes) -> bool:
    md5 = hashlib.md5(content).hexdigest()
    obj = remote / "files" / "md5" / md5[:2] / md5[2:]  # DVC 3's remote layout
    return obj.is_file() and obj.read_bytes() == content


def crash(exc: BaseException):
    """A step that dies the way a killed or failing run would stop there."""
    def step(*_args, **_kwargs):
        raise exc
    return step


def preferences(path: Path, seed: int) -> Path:
    """A small preferences table standing in for an artifact-store file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"pair_id": [f"p{seed}-{i}" for i in range(5)], "chosen": [" good"] * 5,
                             "rejected": [" bad"] * 5, "margin": [float(seed + i) for i in range(5)]}), path)
    return path


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path / "workspace"


@pytest.fixture
def repo(ws: Path) -> DataRepo:
    r = DataRepo(ws / "data", str(ws / "dvc-remote"))
    r.init()
    return r


def test_init_is_idempotent_and_follows_a_changed_remote(repo: DataRepo, ws: Path):
    assert n_commits(repo) == 1
    repo.init()
    DataRepo(repo.path, str(ws / "dvc-remote")).init()
    assert n_commits(repo) == 1
    assert git(repo.path, "status", "--porcelain") == ""
    config = (repo.path / ".dvc" / "config").read_text()
    assert str(ws / "dvc-remote") in config and "analytics = False" in config

    DataRepo(repo.path, "s3://bucket/alignloop", endpoint_url="http://127.0.0.1:9").init()
    assert n_commits(repo) == 2
    config = (repo.path / ".dvc" / "config").read_text()
    assert "s3://bucket/alignloop" in config and "endpointurl = http://127.0.0.1:9" in config


def test_each_iteration_is_retrievable_from_the_remote_alone(repo: DataRepo, ws: Path, tmp_path: Path):
    p0 = preferences(ws / "store" / "preferences" / "aaa.parquet", 0)
    p1 = preferences(ws / "store" / "preferences" / "bbb.parquet", 1)
    bytes0, bytes1 = p0.read_bytes(), p1.read_bytes()
    sha0 = repo.track_iteration(0, {PREFS: p0})
    sha1 = repo.track_iteration(1, {PREFS: p1}, message="iteration 1: preferences")
    assert (repo.rev(0), repo.rev(1)) == (sha0, sha1) and sha0 != sha1
    assert repo.rev(2) is None
    assert git(repo.path, "status", "--porcelain") == ""
    assert remote_has(ws / "dvc-remote", bytes0) and remote_has(ws / "dvc-remote", bytes1)
    # DVC's cache holds its own copy: one corruption (a flipped byte in the store) cannot reach both.
    md5 = hashlib.md5(bytes0).hexdigest()
    cached = repo.path / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    assert cached.read_bytes() == bytes0
    assert cached.stat().st_ino != p0.stat().st_ino and p0.stat().st_nlink == 1
    assert (repo.path / repo.path_in_repo(0, PREFS)).stat().st_ino != p0.stat().st_ino

    # Without the local cache, reads must come from the remote.
    shutil.rmtree(repo.path / ".dvc" / "cache")
    with repo.open(0, PREFS) as fh:
        assert fh.read() == bytes0
    with repo.open(1, PREFS) as fh:
        assert fh.read() == bytes1
    assert Path(repo.url(0, PREFS)).read_bytes() == bytes0

    # A fresh clone elsewhere, checked out at the tag, then `dvc pull`.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--branch", "iter-0", str(repo.path), str(clone))
    with Repo(str(clone)) as cloned:
        cloned.pull()
    assert (clone / repo.path_in_repo(0, PREFS)).read_bytes() == bytes0
    assert not (clone / repo.path_in_repo(1, PREFS)).exists()

    # The documented one-liner for users, through the real CLI.
    out = tmp_path / "got.parquet"
    subprocess.run([str(DVC), "get", str(repo.path), repo.path_in_repo(1, PREFS), "--rev", "iter-1",
                    "-o", str(out)], cwd=tmp_path, check=True)
    assert out.read_bytes() == bytes1


def test_rerunning_a_tagged_iteration_changes_nothing_and_refuses_other_content(repo: DataRepo, ws: Path):
    p0 = preferences(ws / "store" / "a.parquet", 0)
    sha = repo.track_iteration(0, {PREFS: p0})
    commits = n_commits(repo)
    assert repo.track_iteration(0, {PREFS: p0}) == sha
    assert n_commits(repo) == commits

    with pytest.raises(ValueError, match=r"iter-0 has different content for iterations/iter-0000/prefer"):
        repo.track_iteration(0, {PREFS: preferences(ws / "store" / "b.parquet", 7)})
    with pytest.raises(ValueError, match=r"iter-0 holds \['preferences.parquet'\]"):
        repo.track_iteration(0, {PREFS: p0, "rollouts.parquet": p0})
    assert (n_commits(repo), repo.rev(0)) == (commits, sha)
    with pytest.raises(LookupError, match="no tag iter-5"):
        repo.open(5, PREFS)


def test_crash_before_commit_is_completed_by_a_rerun(repo: DataRepo, ws: Path, monkeypatch):
    p0 = preferences(ws / "store" / "a.parquet", 0)
    commits = n_commits(repo)

    monkeypatch.setattr(DataRepo, "_commit_staged", crash(KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):
        repo.track_iteration(0, {PREFS: p0})
    monkeypatch.undo()
    assert (repo.path / repo.path_in_repo(0, PREFS)).exists()
    assert (n_commits(repo), repo.rev(0)) == (commits, None)

    sha = repo.track_iteration(0, {PREFS: p0})
    assert n_commits(repo) == commits + 1 and repo.rev(0) == sha
    assert remote_has(ws / "dvc-remote", p0.read_bytes())


def test_crash_before_push_is_completed_without_a_new_commit(repo: DataRepo, ws: Path, monkeypatch):
    p0 = preferences(ws / "store" / "a.parquet", 0)
    monkeypatch.setattr(Repo, "push", crash(ConnectionError("remote down")))
    with pytest.raises(ConnectionError):
        repo.track_iteration(0, {PREFS: p0})
    monkeypatch.undo()
    committed = git(repo.path, "rev-parse", "HEAD")
    assert repo.rev(0) is None and not (ws / "dvc-remote").exists()

    # Another iteration lands before the re-run: the tag must still go to iteration 0's own commit.
    p1 = preferences(ws / "store" / "b.parquet", 1)
    head = repo.track_iteration(1, {PREFS: p1})

    assert repo.track_iteration(0, {PREFS: p0}) == committed == repo.rev(0)
    assert git(repo.path, "rev-parse", "HEAD") == head
    assert remote_has(ws / "dvc-remote", p0.read_bytes())


def test_a_model_directory_round_trips(repo: DataRepo, ws: Path, tmp_path: Path):
    model = ws / "store" / "policy" / "abc"
    (model / "tokenizer").mkdir(parents=True)
    files = {"model.safetensors": os.urandom(4096), "config.json": b'{"n_layer": 2}',
             "tokenizer/tokenizer.json": b'{"model": {"type": "WordLevel"}}'}
    for rel, content in files.items():
        (model / rel).write_bytes(content)
    p0 = preferences(ws / "store" / "a.parquet", 0)
    sha = repo.track_iteration(0, {"policy": model, PREFS: p0})
    assert repo.track_iteration(0, {"policy": model, PREFS: p0}) == sha
    assert repo.url(0, "policy").endswith(".dir")

    shutil.rmtree(repo.path / ".dvc" / "cache")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--branch", "iter-0", str(repo.path), str(clone))
    with Repo(str(clone)) as cloned:
        cloned.pull()
    for rel, content in files.items():
        assert (clone / repo.path_in_repo(0, "policy") / rel).read_bytes() == content
    with repo.open(0, "policy/model.safetensors") as fh:
        assert fh.read() == files["model.safetensors"]
