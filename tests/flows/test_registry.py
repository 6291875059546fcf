"""Promotion, rollback, lineage and the iteration report, through the real `alignloop` executable and registry.

Crash safety of promotion is tested on a registry of its own (the process is killed between alias writes);
lineage, report and re-gating use the shared two-iteration loop (`two_iteration_loop`) and put any alias they
move back.
"""

import base64
import getpass
import io
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXE = shutil.which("alignloop", path=str(Path(sys.executable).parent))


def cli(*args, env=None):
    return subprocess.run([EXE, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=600)


def _client(ws):
    from mlflow import MlflowClient

    from components.workspace import Workspace

    uri = Workspace.at(ws).tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


PROMOTE = """
import sys
from components.lineage import Tracker
t = Tracker(sys.argv[1], sys.argv[2], "crash")
getattr(t, sys.argv[3])("policy", *sys.argv[4:]) if sys.argv[3] == "promote" else t.rollback("policy", {})
"""


def _run(tracker, *args, fault=None):
    env = {**os.environ, **({"ALIGNLOOP_FAULT_POINT": fault} if fault else {})}
    return subprocess.run([sys.executable, "-c", PROMOTE, tracker.tracking_uri, "file:///unused", *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_promotion_and_rollback_survive_a_kill_between_alias_writes(tmp_path):
    from components.artifacts import ArtifactRef
    from components.lineage import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "art").as_uri(), "crash")
    run = tracker.client.create_run(tracker.experiment_id).info.run_id
    for v in range(1, 4):
        ref = ArtifactRef(kind="policy", sha256=f"{v:064d}", uri=f"policy/{v}")
        assert tracker.register("policy", ref, f"/nowhere/{v}", run, {}) == str(v)
    tracker.set_alias("policy", "champion", "1")
    tracker.promote("policy", "2")

    def aliases():
        return {k: str(v) for k, v in tracker.client.get_registered_model("policy").aliases.items()}

    assert aliases() == {"champion": "2", "previous": "1", "head": "2"}  # a promotion moves the head too
    killed = _run(tracker, "promote", "3", fault="promote:after-previous")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert aliases()["champion"] == "2"  # the crash left the old champion serving
    killed = _run(tracker, "promote", "3", fault="promote:after-head")  # killed between the head and champion
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert aliases() == {"champion": "2", "previous": "2", "head": "3"}  # the champion still serves
    tracker.promote("policy", "3")  # the re-run completes the move
    assert aliases() == {"champion": "3", "previous": "2", "head": "3"}

    killed = _run(tracker, "rollback", fault="rollback:after-champion")
    assert killed.returncode == -signal.SIGKILL
    assert aliases() == {"champion": "2", "previous": "2", "head": "3"}  # half done: champion already back
    tracker.rollback("policy", {})  # finishing does not roll back a second time
    assert aliases() == {"champion": "2", "previous": "1", "head": "2"}  # the head restarts from the champion
    tracker.set_alias("policy", "head", "3")  # an unpromoted head descending from the champion rolled back
    tracker.rollback("policy", {"alignloop.rollback_reason": "test"})
    assert aliases() == {"champion": "1", "head": "1"}
    assert tracker.client.get_model_version("policy", "2").tags["alignloop.rollback_reason"] == "test"
    with pytest.raises(LookupError, match="nothing to roll back"):
        tracker.rollback("policy", {})


def test_lineage_json_agrees_with_mlflow_and_dvc(two_iteration_loop):
    import dvc.api
    import pyarrow.parquet as pq

    from components.workspace import Workspace

    _, ws, ledgers = two_iteration_loop
    client = _client(ws)
    newest = max(client.search_model_versions("name = 'policy'"), key=lambda mv: int(mv.version))
    r = cli("lineage", f"policy@{newest.version}", "--json", "--workspace", str(ws))
    assert r.returncode == 0, r.stdout + r.stderr
    chain = json.loads(r.stdout)
    # back to the bootstrap policy through the champions each iteration started from (rejected ones skipped)
    assert chain[0]["iteration"] == 1 and chain[-1]["iteration"] == -1 and len(chain) >= 2
    assert chain[-1]["version"] == "1" and chain[-1]["parent"] is None
    repo = str(Workspace.at(ws).data_repo)
    for rec, child in itertools.pairwise(chain):
        it = rec["iteration"]
        mv = client.get_model_version("policy", rec["version"])
        assert rec["artifact_sha"] == mv.tags["alignloop.artifact_sha"] and mv.tags["alignloop.iteration"] == str(it)
        parent_run = client.get_run(client.get_run(mv.run_id).data.tags["mlflow.parentRunId"])
        assert rec["config_hash"] == parent_run.data.tags["config_hash"]
        assert rec["git_sha"] == parent_run.data.tags["git_sha"]
        # the parent checkpoint is the policy this iteration started from (its head); it was compared with the
        # champion of its start state
        assert rec["parent"]["version"] == child["version"] == str(ledgers[it]["start"]["head_version"])
        assert rec["compared_with"]["version"] == str(ledgers[it]["start"]["champion_version"])
        # preferences: the same bytes DVC serves at the iteration's tag, counted independently
        dvc_info = rec["preferences"]["dvc"]
        git = subprocess.run(["git", "-C", repo, "rev-parse", f"{dvc_info['tag']}^{{commit}}"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert dvc_info["rev"] == git == parent_run.data.tags["dvc.rev"]
        with dvc.api.open(dvc_info["path"], repo=repo, rev=dvc_info["tag"], mode="rb") as fh:
            table = pq.read_table(fh)
        assert rec["preferences"]["rows"] == table.num_rows
        assert rec["preferences"]["rows_by_label_source"] == dict(Counter(table["label_source"].to_pylist()))
        # reward models: the one trained this iteration is registered under that iteration
        trained = client.get_model_version("reward-model", rec["reward_models"]["trained"]["version"])
        assert trained.tags["alignloop.iteration"] == str(it)
        labeling = rec["reward_models"]["labeling"]
        assert (labeling is None) == (it == 0)  # iteration 0 is labelled by the gold seed, later ones by an RM
        assert rec["gate"]["promote"] == ledgers[it]["decision"]["promote"]
        assert rec["gate"]["reasons"] == ledgers[it]["decision"]["reasons"]
        assert rec["generation"]["max_new_tokens"] == 24 and rec["judge"]["heldout"] == "toy gold oracle"
    text = cli("lineage", "--workspace", str(ws))  # human-readable, default policy@champion
    assert text.returncode == 0 and "bootstrap policy" in text.stdout


def _pngs(html):
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in re.findall(r'src="data:image/png;base64,([^"]+)"',
                                                                             html)]


def test_report_per_iteration_html_and_mlflow(two_iteration_loop, tmp_path):
    _, ws, ledgers = two_iteration_loop
    client = _client(ws)
    # the flow wrote one per iteration and logged it on the iteration run
    for d in ledgers:
        assert (Path(ws) / "reports" / f"iter-{d['iteration']:04d}.html").exists()
    out = tmp_path / "r.html"
    r = cli("report", "1", "--out", str(out), "--workspace", str(ws))
    assert r.returncode == 0, r.stdout + r.stderr
    html = out.read_text()
    images = _pngs(html)
    assert len(images) == 1 and images[0].size[0] > 1000 and images[0].size[1] > 200  # the curves, 5 panels
    # the label mix per iteration and this iteration's timings are tables with the ledgers' numbers
    for d in ledgers:  # row: iteration, pairs per label source, total pairs
        assert re.search(rf"<tr><td>{d['iteration']}</td>(<td class=num>\d+</td>)+"
                         rf"<td class=num>{d['outputs']['preferences']['meta']['rows']}</td></tr>", html)
    for stage, seconds in ledgers[1]["timings"].items():
        assert f"<tr><td>{stage}</td><td class=num>{seconds:.2f}</td>" in html
    decision = ledgers[1]["decision"]
    for check in decision["checks"]:
        assert f"<td>{check['name']}</td>" in html
    assert f"<b class={decision['outcome']}>{decision['outcome'].upper()}</b>" in html  # promote / head / discard
    assert html.count("<tr><td><code>review ") == 8  # every held-out prompt, candidate next to champion
    run = client.search_runs([client.get_experiment_by_name("flowtest").experiment_id],
                             "tags.`alignloop.iteration` = '1' and tags.`alignloop.stage` = 'iteration'")[0]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/iter-0001.html", "report/r.html"} <= logged
    assert {a.path for a in client.list_artifacts(run.info.run_id, "gate")} == {"gate/decision.json",
                                                                              "gate/decision.md"}


def test_promote_regates_forces_with_a_record_and_rolls_back(two_iteration_loop):
    _, ws, _ = two_iteration_loop
    client = _client(ws)
    start = {k: str(v) for k, v in client.get_registered_model("policy").aliases.items()}
    other = next(str(v.version) for v in sorted(client.search_model_versions("name = 'policy'"),
                                           key=lambda v: -int(v.version)) if str(v.version) != start["champion"])
    try:
        r = cli("promote", "--version", other, "--workspace", str(ws))
        assert r.returncode in (0, 1), r.stdout + r.stderr
        assert "proxy_win_rate" in r.stdout and "reward_hacking" in r.stdout  # the gate table, re-run
        regate = json.loads(client.get_model_version("policy", other).tags["alignloop.regate"])
        assert regate["promote"] == (r.returncode == 0)
        champion = str(client.get_registered_model("policy").aliases["champion"])
        assert champion == (other if r.returncode == 0 else start["champion"])
        if r.returncode == 1:
            assert cli("promote", "--version", other, "--force", "--workspace", str(ws)).returncode == 2  # no reason
            r = cli("promote", "--version", other, "--force", "--reason", "hotfix test", "--workspace", str(ws))
            assert r.returncode == 0, r.stdout + r.stderr
            tags = client.get_model_version("policy", other).tags
            assert tags["alignloop.forced_by"] == getpass.getuser() and tags["alignloop.force_reason"] == "hotfix test"
        aliases = {k: str(v) for k, v in client.get_registered_model("policy").aliases.items()}
        assert aliases["champion"] == other and aliases["previous"] == start["champion"]
        r = cli("rollback", "--reason", "test", "--workspace", str(ws))
        assert r.returncode == 0, r.stdout + r.stderr
        assert str(client.get_registered_model("policy").aliases["champion"]) == start["champion"]
    finally:  # the shared loop's registry as the other tests expect it
        for alias, version in start.items():
            client.set_registered_model_alias("policy", alias, version)


def test_gate_metric_names_are_mlflow_names_and_promote_redecides_from_the_stored_report(two_iteration_loop):
    """Every metric a gate spec names (the standard checks and the gold-oracle experiment's) is the exact string
    the evaluate stage logged to MLflow; and `promote --set gate.…` re-decides from the stored report: the value
    the gate reads is the stored one, bit for bit (no re-sampling)."""
    from components import gating
    from components.config import load_config

    cfg_path, ws, ledgers = two_iteration_loop
    client = _client(ws)
    exp = client.get_experiment_by_name("flowtest")
    last = ledgers[-1]
    evaluate = client.search_runs([exp.experiment_id], f"tags.`alignloop.stage` = 'evaluate' and "
                                  f"tags.`alignloop.iteration` = '{last['iteration']}'")[0]
    logged = evaluate.data.metrics
    assert logged == pytest.approx(last["report"]["metrics"])
    specs = [gating.standard_checks(load_config(cfg_path).gate, logged),
             load_config(["configs/tiny.yaml", "configs/experiments/gold-oracle.yaml"]).gate.checks]
    for check in itertools.chain(*specs):
        assert check.metric in logged, check
        if check.vs_champion != "none":
            assert check.metric.replace("/candidate/", "/champion/") in logged

    start = {k: str(v) for k, v in client.get_registered_model("policy").aliases.items()}
    version = str(last["decision"]["version"])
    try:  # the candidate against the champion its iteration evaluated it with: the stored report applies
        client.set_registered_model_alias("policy", "champion", last["start"]["champion_version"])
        r = cli("promote", "--version", version, "--set", "gate.max_kl=1e-9", "--workspace", str(ws))
        assert r.returncode == 1, r.stdout + r.stderr
        regate = json.loads(client.get_model_version("policy", version).tags["alignloop.regate"])
        kl = last["report"]["metrics"]["evaluate/candidate/kl"]
        assert any(x.startswith(f"kl_budget: evaluate/candidate/kl = {kl:.4g} ") for x in regate["reasons"])
        r = cli("promote", "--version", version, "--set", "gate.no_such_key=1", "--workspace", str(ws))
        assert r.returncode == 2 and "no_such_key" in r.stdout and "Traceback" not in r.stdout + r.stderr
    finally:
        for alias, v in start.items():
            client.set_registered_model_alias("policy", alias, v)
