"""The real `alignloop` executable: bad input stops before anything is written; status on an empty workspace."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

EXE = shutil.which("alignloop", path=str(Path(sys.executable).parent))


def cli(*args, cwd: Path):
    env = dict(os.environ)
    return subprocess.run([EXE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path, tiny_bootstrap):
    (tmp_path / "c.yaml").write_text(f"policy_init: {tiny_bootstrap['policy']}\nprompt_pool: pool.parquet\n")
    shutil.copy(tiny_bootstrap["prompts"], tmp_path / "pool.parquet")
    return tmp_path


@pytest.mark.parametrize("args,needle", [
    (["--set", "train_policy.beta=-1"], "train_policy.beta"),
    (["--set", "generate.samples_per_prompt=1"], "generate.samples_per_prompt"),
    (["--set", "label.agregation=mean"], "label.agregation: unknown key"),
])
def test_bad_config_stops_before_workspace(project, args, needle):
    r = cli("run", "--config", "c.yaml", "--workspace", "ws", *args, cwd=project)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stdout and f"--set {args[1]}" in r.stdout  # blamed on the --set item, not on c.yaml
    assert not (project / "ws").exists()


def test_bad_prompt_file_names_file_and_column(project):
    table = pq.read_table(project / "pool.parquet").drop(["split"])
    pq.write_table(table, project / "pool.parquet")
    r = cli("run", "--config", "c.yaml", "--workspace", "ws", cwd=project)
    assert r.returncode == 2 and "pool.parquet" in r.stdout and "split" in r.stdout
    assert not (project / "ws").exists()
    (project / "pool.parquet").write_text("not parquet")
    r = cli("run", "--config", "c.yaml", "--workspace", "ws", cwd=project)
    assert r.returncode == 2 and "not a readable Parquet" in r.stdout


def test_existing_workspace_untouched_by_bad_input(project):
    ws = project / "ws"
    ws.mkdir()
    (ws / "keep.txt").write_text("precious")
    pq.write_table(pa.table({"prompt": ["x"]}), project / "pool.parquet")
    r = cli("run", "--config", "c.yaml", "--workspace", "ws", cwd=project)
    assert r.returncode == 2
    assert sorted(p.name for p in ws.iterdir()) == ["keep.txt"]


def test_status_of_empty_workspace(project):
    r = cli("status", "--workspace", "nothing-here", cwd=project)
    assert r.returncode == 0 and "no iterations" in r.stdout


def test_env_file_is_read_and_the_environment_wins(project):
    """`.env` in the working directory (git-ignored secrets and settings) reaches every command; a variable that
    is already set is not overridden."""
    (project / ".env").write_text("ALIGNLOOP_WORKSPACE=from-dotenv\n")
    r = cli("status", cwd=project)
    assert r.returncode == 0 and "from-dotenv" in r.stdout, r.stdout + r.stderr
    env = {**os.environ, "ALIGNLOOP_WORKSPACE": str(project / "from-env")}
    r = subprocess.run([EXE, "status"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "from-env" in r.stdout and "from-dotenv" not in r.stdout, r.stdout
    (project / "other.env").write_text(f"ALIGNLOOP_WORKSPACE={project / 'via-flag'}\n")
    r = cli("--env-file", "other.env", "status", cwd=project)
    assert "via-flag" in r.stdout, r.stdout + r.stderr
