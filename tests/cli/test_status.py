"""`alignloop status` on a populated workspace: the registry's aliases, the iteration table and the last gate
decisions. The workspace is written by hand (ledger JSON files in the format flows/iteration.py writes, and a
registry with both models' aliases), so no iteration has to run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

EXE = shutil.which("alignloop", path=str(Path(sys.executable).parent))


def _side(gold, proxy, kl, tokens):
    return {"gold_reward": gold, "proxy_reward": proxy, "kl": kl, "mean_tokens": tokens}


def _finished(i: int, decision: dict, champion: dict, candidate: dict, label: dict, heldout: bool = True) -> dict:
    wr = {"value": 0.61, "ci_low": 0.52, "ci_high": 0.7}
    return {"iteration": i, "status": "finished", "config_hash": "c0ffee",
            "report": {"champion": champion, "candidate": candidate, "proxy_win_rate": wr,
                       "heldout_win_rate": {"value": 0.55, "ci_low": 0.41, "ci_high": 0.69} if heldout else None,
                       "metrics": {"evaluate/oracle_calls": 1024}},
            "decision": decision, "outputs": {"preferences": {"meta": {"label": label}}},
            "timings": {"generate": 10.4, "label": 2.2, "train_policy": 30.1}}


def _workspace(root: Path) -> Path:
    from components.lineage import POLICY, REWARD_MODEL, _client
    from components.workspace import Workspace

    ws = Workspace.at(root / "ws")
    ws.write_ledger(0, _finished(0, {"promote": True, "outcome": "promote", "reasons": [], "version": "2",
                                     "head_version": "2", "champion_version": "2"},
                                 _side(0.1, 0.2, 0.0, 12.0), _side(0.35, 0.5, 1.25, 11.5),
                                 {"label/kept/rm_ensemble": 40, "label/kept/judge": 3, "label/kept/gold": 96,
                                  "label/judge_calls": 8, "label/oracle_calls": 104}))
    ws.write_ledger(1, _finished(1, {"promote": False, "outcome": "head", "version": "3", "head_version": "3",
                                     "champion_version": "2",
                                     "reasons": ["heldout_win_rate: evaluate/heldout_win_rate/ci_low = 0.48"]},
                                 _side(0.35, 0.5, 1.25, 11.5), _side(0.4, 0.6, 1.5, 11.0),
                                 {"label/kept/rm_ensemble": 52, "label/kept/judge": 4, "label/judge_calls": 8,
                                  "label/oracle_calls": 8}, heldout=False))
    # a ledger written before heads existed: no outcome, no versions, oracle calls = its judge calls
    ws.write_ledger(2, _finished(2, {"promote": False, "reasons": ["KL 9.10 > max_kl 8.00"]},
                                 _side(0.35, 0.5, 1.25, 11.5), _side(None, 0.9, 9.1, 30.0),
                                 {"label/kept/rm_ensemble": 52, "label/kept/human": 2, "label/judge_calls": 6}))
    ws.write_ledger(3, {"iteration": 3, "status": "failed", "config_hash": "c0ffee", "timings": {}})
    client = _client(ws.tracking_uri)
    for name, versions, aliases in ((POLICY, 3, {"champion": "2", "previous": "1", "candidate": "3", "head": "3"}),
                                    (REWARD_MODEL, 2, {"champion": "2"})):
        client.create_registered_model(name)
        for v in range(versions):
            client.create_model_version(name, (root / f"{name}-{v}").as_uri())
        for alias, v in aliases.items():
            client.set_registered_model_alias(name, alias, v)
    return ws.root


def test_status_prints_aliases_the_iteration_table_and_the_last_decisions(tmp_path):
    ws = _workspace(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ALIGNLOOP_WORKSPACE")}
    r = subprocess.run([EXE, "status", "--workspace", str(ws)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "policy: candidate=v3, champion=v2, head=v3, previous=v1" in lines
    assert "reward-model: champion=v2" in lines
    rows = {cells[0]: cells[1:] for line in lines
            if len(cells := [c.strip() for c in line.strip("│┃ ").split("│")]) == 11}
    assert rows["start"] == ["-", "-", "- | +0.100", "- | +0.200", "0.00", "- | 12.0", "-", "-", "-", "-"]
    # candidate | the champion it was compared with, versions after the gate, oracle calls and their running total
    assert rows["0"] == ["promote", "v2/v2/v2", "+0.350 | +0.100", "+0.500 | +0.200", "1.25", "11.5 | 12.0",
                         "0.55 [0.41, 0.69]", "40/3/96/0", "104 / 104", "43"]
    assert rows["1"] == ["head", "v3/v3/v2", "+0.400 | +0.350", "+0.600 | +0.500", "1.50", "11.0 | 11.5",
                         "0.61 [0.52, 0.70]", "52/4/0/0", "8 / 112", "43"]  # no held-out signal: the proxy's
    assert rows["2"] == ["discard", "-/-/-", "- | +0.350", "+0.900 | +0.500", "9.10", "30.0 | 11.5",
                         "0.55 [0.41, 0.69]", "52/0/0/2", "6 / 118", "43"]
    assert rows["3"] == ["failed"] + ["-"] * 9
    assert "iter 1: head — heldout_win_rate: evaluate/heldout_win_rate/ci_low = 0.48" in lines
    assert "iter 2: discard — KL 9.10 > max_kl 8.00" in lines
    assert not any(line.startswith("iter 3") for line in lines)  # only finished iterations have a decision


def test_status_json_is_the_same_table(tmp_path):
    import json

    ws = _workspace(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ALIGNLOOP_WORKSPACE")}
    r = subprocess.run([EXE, "status", "--json", "--workspace", str(ws)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    its = {d["iteration"]: d for d in doc["iterations"]}
    assert [its[i].get("decision") for i in range(4)] == ["promote", "head", "discard", None]
    assert its[1]["head_version"] == "3" and its[1]["champion_version"] == "2" and its[1]["candidate_version"] == "3"
    assert its[1]["candidate"] == {"gold_reward": 0.4, "proxy_reward": 0.6, "kl": 1.5, "mean_tokens": 11.0}
    assert its[1]["champion"]["gold_reward"] == 0.35
    assert [its[i].get("oracle_calls_total") for i in range(3)] == [104, 112, 118]
    assert its[0]["eval_oracle_calls"] == 1024 and its[3]["status"] == "failed"


def _status(tmp_path: Path, ws: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ALIGNLOOP_WORKSPACE")}
    return subprocess.run([EXE, "status", "--workspace", str(ws)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_status_after_the_only_iteration_failed(tmp_path):
    """The first iteration registered the initial policy, then a stage failed: no reward model exists."""
    from components.lineage import POLICY, _client
    from components.workspace import Workspace

    ws = Workspace.at(tmp_path / "ws")
    ws.write_ledger(0, {"iteration": 0, "status": "failed", "config_hash": "c0ffee", "timings": {"generate": 1.0},
                        "error": "RuntimeError('boom')"})
    client = _client(ws.tracking_uri)
    client.create_registered_model(POLICY)
    client.create_model_version(POLICY, (tmp_path / "p").as_uri())
    client.set_registered_model_alias(POLICY, "champion", "1")
    r = _status(tmp_path, ws.root)
    assert r.returncode == 0 and "Traceback" not in r.stderr + r.stdout, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "policy: champion=v1" in lines and "reward-model: not registered" in lines
    assert any(line.strip("│┃ ").startswith("0 ") and "failed" in line for line in lines), r.stdout


def test_status_on_odd_workspaces(tmp_path):
    from components.workspace import Workspace

    # nothing at all, and a ledger directory without ledgers
    (tmp_path / "empty" / "ledger").mkdir(parents=True)
    for root in (tmp_path / "none", tmp_path / "empty"):
        r = _status(tmp_path, root)
        assert r.returncode == 0 and "no iterations in" in r.stdout, r.stdout + r.stderr
    # a torn ledger, a "finished" one without its report, a running one; no mlflow.db at all, no data repo
    ws = Workspace.at(tmp_path / "odd")
    ws.write_ledger(0, {"iteration": 0, "status": "finished", "config_hash": "c", "timings": {}, "data_rev": "abc"})
    ws.write_ledger(1, {"iteration": 1, "status": "running", "config_hash": "c", "timings": {}})
    (ws.root / "ledger" / "iter-0002.json").write_text('{"iteration": 2, "sta')
    r = _status(tmp_path, ws.root)
    out = r.stdout
    assert r.returncode == 0 and "Traceback" not in out + r.stderr, out + r.stderr
    assert not (ws.root / "mlflow.db").exists()  # status never creates a tracking store
    assert "no tracking store" in out and "iter-0002.json: unreadable ledger" in out
    assert "iter-0000.json: incomplete finished ledger" in out
    assert "mlflow.db (the MLflow tracking store and model registry) is missing" in out
    assert "alignloop repair" in out
