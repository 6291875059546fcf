"""Disk retention: `components.retention.to_delete` on a hand-made history, and `alignloop gc [--dry-run]` on a
hand-built workspace and on a copy of the real two-iteration run: the dry run deletes nothing, the real run
deletes exactly what it listed, the champion and the last iterations survive, status and verify still pass."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.artifacts import ArtifactRef, ArtifactStore
from components.retention import RetentionConfig, deleted, to_delete
from components.workspace import Workspace

EXE = shutil.which("alignloop", path=str(Path(sys.executable).parent))
REPO = Path(__file__).resolve().parents[2]


def cli(*args):
    return subprocess.run([EXE, *args], cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)


def _ref(kind: str, name: str, iteration: int | None = None, parents=()) -> ArtifactRef:
    sha = hashlib.sha256(name.encode()).hexdigest()
    return ArtifactRef(kind=kind, sha256=sha, uri=f"{kind}/{sha}", parents=tuple(p.sha256 for p in parents),
                       meta={} if iteration is None else {"iteration": iteration})


def _history():
    """Iterations 0-2 finished (0 and 2 promoted), 3 running with two stage outputs its ledger does not name yet."""
    init, pool, human = _ref("policy", "init", -1), _ref("prompts", "pool"), _ref("preferences", "human")
    refs, ledgers, champ, rm = {"init": init, "pool": pool, "human": human}, [], init, None
    for i, promote in ((0, True), (1, False), (2, True)):
        r = {"prompts": _ref("prompts", f"p{i}", i)}
        r["rollouts"] = _ref("rollouts", f"r{i}", parents=(r["prompts"], champ))
        r["scores"] = _ref("scores", f"x{i}", parents=(r["rollouts"],))
        r["preferences"] = _ref("preferences", f"f{i}", i, parents=(r["rollouts"],))
        r["reward_model"] = _ref("reward_model", f"m{i}", i)
        r["candidate"] = _ref("policy", f"c{i}", i)
        r["eval_samples"] = _ref("eval_samples", f"s{i}", parents=(r["candidate"],))
        r["eval_report"] = _ref("eval_report", f"e{i}", parents=(r["candidate"],))
        start = {"pool": pool.model_dump(), "initial": init.model_dump(), "champion": champ.model_dump(),
                 "reward_model": rm and rm.model_dump(), "human_labels": [human.model_dump()] if i == 1 else []}
        outputs = {k: v.model_dump() for k, v in r.items() if k not in ("scores", "eval_samples")}
        ledgers.append({"iteration": i, "status": "finished", "start": start, "outputs": outputs,
                        "report": {"eval_samples": r["eval_samples"].sha256}, "decision": {"promote": promote}})
        refs.update({f"{k}{i}": v for k, v in r.items()})
        champ, rm = (r["candidate"] if promote else champ), r["reward_model"]
    refs["p3"] = _ref("prompts", "p3", 3)
    refs["r3"] = _ref("rollouts", "r3", parents=(refs["p3"], champ))
    ledgers.append({"iteration": 3, "status": "running", "start": {"champion": champ.model_dump(),
                                                                   "reward_model": rm.model_dump()}})
    return refs, ledgers


def test_to_delete_keeps_champion_aliases_last_iterations_and_the_running_one():
    refs, ledgers = _history()
    doomed = to_delete(list(refs.values()), ledgers, aliased={refs["reward_model0"].sha256},
                       cfg=RetentionConfig(keep_iterations=1, keep_candidates=1))
    names = {n for n, r in refs.items() if r.sha256 in {d.sha256 for d, _ in doomed}}
    # iteration 2 (the last finished, and the champion's) keeps all it references, including c0 and m1 it started
    # from; the running iteration 3 keeps p3/r3; versioned tables, the pool, human labels, init always stay
    assert names == {"scores0", "scores1", "candidate1"}
    assert {it for _, it in doomed} == {0, 1}
    wide = to_delete(list(refs.values()), ledgers, aliased=(), cfg=RetentionConfig(keep_iterations=3))
    # iterations 1-3 kept (m0: iteration 1 started from it; c0: 2 did); 0's own leftovers go
    assert {r.sha256 for r, _ in wide} == {refs["scores0"].sha256}
    assert to_delete(list(refs.values()), [], (), RetentionConfig()) == []  # no ledgers: nothing is known


def test_to_delete_frees_old_reward_models_without_an_alias():
    refs, ledgers = _history()
    doomed = {r.sha256 for r, _ in to_delete(list(refs.values()), ledgers, (), RetentionConfig(keep_iterations=1,
                                                                                                 keep_candidates=0))}
    assert refs["reward_model0"].sha256 in doomed and refs["candidate1"].sha256 in doomed
    assert refs["candidate0"].sha256 not in doomed  # iteration 2 started from it (and `previous` would name it)
    assert refs["candidate2"].sha256 not in doomed and refs["init"].sha256 not in doomed


def _hand_workspace(root: Path) -> tuple[Workspace, dict[str, ArtifactRef]]:
    """The `_history` refs as real store artifacts (one small directory each) and its ledgers."""
    ws, refs = Workspace.at(root / "ws"), {}
    store = ArtifactStore(ws.store)
    made, ledgers = _history()
    by_sha = {}
    for name, r in made.items():
        with store.staging_dir() as d:
            (d / "a").mkdir()
            (d / "a" / "payload.bin.txt").write_text(name * 100)
            real = store.put_dir(r.kind, d / "a", parents=[by_sha.get(p, p) for p in r.parents], meta=r.meta)
        by_sha[r.sha256], refs[name] = real.sha256, real
    swap = {old: by_sha[old] for old in by_sha}

    def fix(doc):
        if isinstance(doc, dict):
            return {k: fix(v) for k, v in doc.items()}
        if isinstance(doc, list):
            return [fix(v) for v in doc]
        return swap.get(doc, doc) if isinstance(doc, str) else doc

    for d in ledgers:
        d = fix(d)
        for k in list(d.get("outputs", {})):
            d["outputs"][k] = refs[f"{k}{d['iteration']}"].model_dump()
        for k in ("pool", "initial", "champion", "reward_model"):
            if d.get("start", {}).get(k):
                d["start"][k] = store.ref(d["start"][k]["kind"], d["start"][k]["sha256"]).model_dump()
        ws.write_ledger(d["iteration"], {**d, "config_hash": "c", "timings": {}})
    return ws, refs


def _sidecars(ws: Workspace) -> set[str]:
    return {r.sha256 for r in ArtifactStore(ws.store).refs()}


def test_gc_dry_run_lists_then_gc_deletes_exactly_that(tmp_path):
    ws, refs = _hand_workspace(tmp_path)
    before = _sidecars(ws)
    keep = ["--set", "retention.keep_iterations=1", "--set", "retention.keep_candidates=1", "-w", str(ws.root)]
    dry = cli("gc", "--dry-run", *keep)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would delete 4 artifacts" in dry.stdout  # _history's 3 and reward_model0 (no registry here)
    assert refs["candidate1"].short in dry.stdout
    assert _sidecars(ws) == before and not (ws.root / "gc-log.jsonl").exists()
    real = cli("gc", *keep)
    assert real.returncode == 0, real.stdout + real.stderr
    gone = before - _sidecars(ws)
    assert gone == set(deleted(ws)) and len(gone) == 4
    assert all(sha[:12] in dry.stdout for sha in gone)
    for name in ("candidate2", "candidate0", "init", "preferences0", "reward_model1", "p3", "r3"):
        assert (ws.store / refs[name].uri).exists(), name
    assert not (ws.store / refs["candidate1"].uri).exists()
    again = cli("gc", "--dry-run", *keep)
    assert "would delete 0 artifacts" in again.stdout
    check = cli("verify", "-w", str(ws.root))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "4 artifacts were deleted by `alignloop gc`" in check.stdout


def test_verify_reports_a_half_deleted_artifact_as_deleted_by_gc(tmp_path):
    from components.retention import Doomed, delete

    ws, refs = _hand_workspace(tmp_path)
    victim = refs["candidate1"]
    delete(ws, [Doomed(victim, 1, 1)])
    (ws.store / f"policy/{victim.sha256}.ref.json").write_text(victim.model_dump_json())  # as if gc was killed
    out = cli("verify", "-w", str(ws.root))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deleted-by-gc" in out.stdout and "missing" not in out.stdout


def test_gc_on_a_real_run_keeps_the_champion_and_the_last_iteration(two_iteration_loop, tmp_path):
    from components.lineage import POLICY, REWARD_MODEL, TAG_SHA, _client

    _, src, ledgers = two_iteration_loop
    root = tmp_path / "ws"
    shutil.copytree(src, root, symlinks=True)
    ws = Workspace.at(root)
    before = _sidecars(ws)
    keep = ["--set", "retention.keep_iterations=1", "--set", "retention.keep_candidates=0", "-w", str(root)]
    dry = cli("gc", "--dry-run", *keep)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert _sidecars(ws) == before
    real = cli("gc", *keep)
    assert real.returncode == 0, real.stdout + real.stderr
    gone = before - _sidecars(ws)
    assert gone and gone == set(deleted(ws))
    assert all(sha[:12] in dry.stdout for sha in gone)
    last = ledgers[-1]
    for k, ref in {**last["outputs"], **{k: v for k, v in last["start"].items() if isinstance(v, dict)}}.items():
        assert (root / "store" / ref["uri"]).exists(), k
    client = _client(ws.tracking_uri)
    for name in (POLICY, REWARD_MODEL):
        champ = client.get_model_version_by_alias(name, "champion").tags[TAG_SHA]
        assert champ not in gone
    for mv in client.search_model_versions(f"name = '{POLICY}'"):  # a deleted candidate cannot become champion
        if mv.tags.get(TAG_SHA) in gone:
            out = cli("promote", "--version", str(mv.version), "--force", "--reason", "test", "-w", str(root))
            assert out.returncode == 2 and "deleted by `alignloop gc`" in out.stdout, out.stdout + out.stderr
    for cmd in (["status", "-w", str(root)], ["verify", "-w", str(root)]):
        out = cli(*cmd)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "corrupt" not in out.stdout and "warning" not in out.stdout


@pytest.mark.parametrize("args", [["gc", "--dry-run"], ["gc"]])
def test_gc_without_a_store_is_a_clean_error(tmp_path, args):
    out = cli(*args, "-w", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "no artifact store" in out.stdout
