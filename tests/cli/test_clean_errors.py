"""User errors end in one line, `error: <file or field>: <what to do>`, exit code 2 and no traceback; commands that
write the registry or the workspace take the workspace lock (failing fast while a run holds it, and removing a
killed command's staging leftovers); a re-run of a completed rollback does not roll back twice."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import typer

EXE = shutil.which("alignloop", path=str(Path(sys.executable).parent))


def cli(*args, cwd: Path, env: dict | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ALIGNLOOP_WORKSPACE")
           } | (env or {})
    return subprocess.run([EXE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def clean_error(r, *needles: str) -> None:
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out and "error:" in r.stdout, out
    for n in needles:
        assert n in r.stdout, (n, out)


@pytest.fixture
def project(tmp_path, tiny_bootstrap):
    (tmp_path / "c.yaml").write_text(f"policy_init: {tiny_bootstrap['policy']}\nprompt_pool: pool.parquet\n"
                                     "sample: {n_prompts: 8}\n")
    shutil.copy(tiny_bootstrap["prompts"], tmp_path / "pool.parquet")
    return tmp_path


def test_workspace_path_is_a_file(project):
    (project / "afile").write_text("x")
    clean_error(cli("run", "-c", "c.yaml", "-w", "afile", cwd=project), "afile", "not a directory")
    clean_error(cli("run", "-c", "c.yaml", "-w", "afile/ws", cwd=project), "afile", "not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 555 directory anyway")
def test_read_only_workspace(project):
    (project / "ro").mkdir()
    (project / "ro").chmod(0o555)
    try:
        clean_error(cli("run", "-c", "c.yaml", "-w", "ro", cwd=project), "ro", "not writable")
    finally:
        (project / "ro").chmod(0o755)


def test_read_only_workspace_message(tmp_path, monkeypatch, capsys):
    """The same path in-process (as root, the permission check above cannot fail)."""
    from components.workspace import Workspace
    from flows.common import take_lock

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Workspace, "lock", denied)
    with pytest.raises(typer.Exit) as exit_:
        take_lock(tmp_path / "ws")
    assert exit_.value.exit_code == 2
    assert f"{tmp_path / 'ws'}: not writable" in capsys.readouterr().out


def test_workspace_in_use_by_another_process(project, tmp_path):
    from components.workspace import Workspace

    ws = _registry(tmp_path / "reg")
    held = Workspace.at(ws).lock()
    try:
        clean_error(cli("run", "-c", "c.yaml", "-w", str(ws), cwd=project), "in use by another alignloop process")
        for args in (["rollback"], ["promote", "--version", "2", "--force", "--reason", "x"],
                     ["labels", "import", str(_labels(tmp_path, []))]):
            clean_error(cli(*args, "-w", str(ws), cwd=project), "in use by another alignloop process")
    finally:
        held.close()
    assert _aliases(ws) == {"champion": "3", "previous": "2", "head": "3"}  # nothing moved while the lock was held


def test_labels_file_with_list_fields(tmp_path):
    f = _labels(tmp_path, [{"id": ["p1"], "choice": ["a"]}])
    clean_error(cli("labels", "import", str(f), "-w", str(tmp_path / "ws"), cwd=tmp_path), f"{f}:1", "'id'")
    f.write_text(json.dumps({"id": "p1", "choice": ["a"]}) + "\n")
    clean_error(cli("labels", "import", str(f), "-w", str(tmp_path / "ws"), cwd=tmp_path), f"{f}:1", "choice")
    f.write_bytes(b"\xff\xfe\x00binary")
    clean_error(cli("labels", "import", str(f), "-w", str(tmp_path / "ws"), cwd=tmp_path), str(f), "not a text")


def test_binary_and_empty_config_files_are_named(project):
    (project / "bin.yaml").write_bytes(bytes(range(128, 256)) * 4)
    clean_error(cli("run", "-c", "bin.yaml", "-w", "ws", cwd=project), "bin.yaml", "not a text file")
    (project / "empty.yaml").write_text("# nothing\n")
    clean_error(cli("run", "-c", "empty.yaml", "-w", "ws", cwd=project), "empty.yaml", "empty")
    assert not (project / "ws").exists()


@pytest.mark.parametrize("item,needle", [
    ("train_policy.beta=-1", "train_policy.beta"),
    ("label.agregation=mean", "label.agregation: unknown key"),
    ("label.aggregation=mean", "moved to ensemble.aggregation"),
    ("generate.max_new_tokens=[", "not valid YAML"),
    ("noequals", "expected key.path=value"),
])
def test_set_mistakes_blame_set_not_the_file(project, item, needle):
    r = cli("run", "-c", "c.yaml", "-w", "ws", "--set", item, cwd=project)
    clean_error(r, needle, "--set")
    assert "c.yaml" not in r.stdout, r.stdout  # the file is fine; the --set item is not
    assert not (project / "ws").exists()


def test_a_killed_commands_staging_leftovers_go_with_the_next_command(tmp_path):
    ws = _registry(tmp_path / "reg")
    for n, args in enumerate((["labels", "import", str(_labels(tmp_path, []))], ["rollback", "--reason", "r"])):
        leftover = ws / "store" / ".staging" / f"tmp{n}abc"
        leftover.mkdir(parents=True)
        (leftover / "half.parquet").write_text("partial")
        r = cli(*args, "-w", str(ws), cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not leftover.exists(), args


def test_rollback_rerun_does_not_roll_back_twice(tmp_path):
    ws = _registry(tmp_path / "reg")
    # killed between its alias writes (components.faults): the re-run completes it, and only it
    r = cli("rollback", "--reason", "bad v3", "-w", str(ws), cwd=tmp_path,
            env={"ALIGNLOOP_FAULT_POINT": "rollback:after-champion"})
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    assert _aliases(ws) == {"champion": "2", "previous": "2", "head": "3"}
    r = cli("rollback", "--reason", "bad v3", "-w", str(ws), cwd=tmp_path)
    assert r.returncode == 0 and "completed the interrupted rollback" in r.stdout, r.stdout + r.stderr
    assert _aliases(ws) == {"champion": "2", "previous": "1", "head": "2"}  # the head follows the champion
    # a re-run of the completed operation: nothing changes
    r = cli("rollback", "--reason", "bad v3", "-w", str(ws), cwd=tmp_path)
    assert r.returncode == 0 and "already rolled back" in r.stdout, r.stdout + r.stderr
    assert _aliases(ws) == {"champion": "2", "previous": "1", "head": "2"}
    # a new operation walks back further
    r = cli("rollback", "--op-id", "second", "-w", str(ws), cwd=tmp_path)
    assert r.returncode == 0 and "v2 -> v1" in r.stdout, r.stdout + r.stderr
    assert _aliases(ws) == {"champion": "1", "head": "1"}
    clean_error(cli("rollback", "--op-id", "third", "-w", str(ws), cwd=tmp_path), "nothing to roll back")


# ---- helpers ------------------------------------------------------------------------------------------------

def _registry(root: Path) -> Path:
    """A workspace whose registry has policy v1..v3 promoted in turn (champion v3, previous v2) and one tracked
    iteration run (what the registry commands look up)."""
    from components.artifacts import ArtifactRef
    from components.lineage import Tracker
    from components.workspace import Workspace

    ws = Workspace.at(root)
    ws.root.mkdir(parents=True)
    tracker = Tracker(ws.tracking_uri, ws.artifact_root, "loop")
    run = tracker.client.create_run(tracker.experiment_id, tags={"alignloop.stage": "iteration"}).info.run_id
    for v in range(1, 4):
        tracker.register("policy", ArtifactRef(kind="policy", sha256=f"{v:064d}", uri=f"policy/{v}"), f"/x/{v}",
                         run, {})
    tracker.set_alias("policy", "champion", "1")
    tracker.promote("policy", "2")
    tracker.promote("policy", "3")
    return ws.root


def _aliases(ws: Path) -> dict[str, str]:
    from components.lineage import _client
    from components.workspace import Workspace

    return {k: str(v) for k, v in _client(Workspace.at(ws).tracking_uri).get_registered_model("policy").aliases.items()}


def _labels(tmp_path: Path, docs: list[dict]) -> Path:
    f = tmp_path / "reviewed.jsonl"
    f.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return f
