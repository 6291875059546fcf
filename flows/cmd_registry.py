"""Registry commands: promote through the gate, roll back, show a checkpoint's lineage, write an iteration report.

    alignloop promote --version 4                  # re-run the eval gate for v4 against the champion
    alignloop promote --version 4 --force --reason "hotfix"   # skip the gate; who and why go into v4's tags
    alignloop rollback                             # champion -> previous
    alignloop lineage policy@champion --json       # the chain back to the bootstrap policy
    alignloop report 3                             # workspace/reports/iter-0003.html, logged to MLflow

MLflow is the system of record (versions, aliases, runs and their tags); the artifact store and the
workspace's DVC repository supply row counts and data revisions.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import time
from collections import Counter
from pathlib import Path

import typer

from components.artifacts import ArtifactStore, CorruptArtifact
from components.config import ConfigError
from components.gating import outcome_of
from components.lineage import POLICY, REWARD_MODEL, TAG_ITER, TAG_SHA, Tracker, _client
from components.workspace import Workspace
from flows.common import WorkspaceOpt, console, fail, quiet_env, take_lock, workspace_dir

TAG_ROLLBACK = "alignloop.rollback"  # the last rollback's intent (see `rollback`)


def _tracker(ws: Workspace) -> Tracker:
    """The loop's tracker; the experiment name comes from the last iteration run (a workspace holds one loop)."""
    client = _client(ws.tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`alignloop.stage` = 'iteration'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    if not runs:
        raise LookupError(f"{ws.root}: no iteration has been tracked yet")
    return Tracker(ws.tracking_uri, ws.artifact_root, client.get_experiment(runs[0].info.experiment_id).name)


def iteration_run(tracker: Tracker, iteration: int):
    run = tracker._find(f"tags.`{TAG_ITER}` = '{iteration}' and tags.`alignloop.stage` = 'iteration'"
                        " and attributes.status = 'FINISHED'")
    if run is None:
        raise LookupError(f"iteration {iteration}: no finished iteration run in MLflow")
    return run


def resolve(tracker: Tracker, spec: str):
    """`policy@champion`, `policy@3`, `@previous` or `3` -> ModelVersion."""
    name, _, ref = spec.rpartition("@") if "@" in spec else (POLICY, "", spec)
    name = name or POLICY
    mv = tracker.client.get_model_version(name, ref) if ref.isdigit() else tracker.alias(name, ref)
    if mv is None:
        raise LookupError(f"{spec}: no such version or alias of {name!r}")
    return mv


def _stage_runs(tracker: Tracker, parent_id: str) -> dict:
    runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
                                      " and attributes.status = 'FINISHED'")
    return {r.data.tags["alignloop.stage"]: r for r in runs}


def _version_of(tracker: Tracker, name: str, sha: str | None) -> dict | None:
    mv = tracker.version_by_sha(name, sha) if sha else None
    return {"version": str(mv.version), "artifact_sha": sha} if mv else ({"version": None, "artifact_sha": sha}
                                                                      if sha else None)


def link(tracker: Tracker, store: ArtifactStore, ws: Workspace, mv) -> dict:
    """One checkpoint's record: where it came from, on what data, judged how, and the gate's verdict."""
    from components.config import LoopConfig

    it = int(mv.tags.get(TAG_ITER, "-1"))
    rec = {"model": mv.name, "version": str(mv.version), "iteration": it, "artifact_sha": mv.tags.get(TAG_SHA),
           "source": mv.source, "tags": dict(mv.tags)}
    if it < 0:
        return {**rec, "origin": "bootstrap policy (loop's initial champion)", "parent": None}
    parent_id = tracker.client.get_run(mv.run_id).data.tags["mlflow.parentRunId"]
    parent = tracker.client.get_run(parent_id)
    stages = _stage_runs(tracker, parent_id)
    cfg = LoopConfig.model_validate_json(parent.data.params["config"])
    tags = {s: r.data.tags for s, r in stages.items()}
    prefs_sha = tags["train_policy"]["input.preferences"]
    prefs = store.read_table(store.ref("preferences", prefs_sha))
    rev = parent.data.tags.get("dvc.rev")
    judge = cfg.label.judge if hasattr(cfg.label, "judge") else None
    return {**rec,
            "parent": _version_of(tracker, POLICY, tags["train_policy"]["input.policy"]),  # the head it trained from
            "compared_with": _version_of(tracker, POLICY, tags["evaluate"].get("input.champion")),  # the champion
            "mlflow_run_id": parent_id, "config_hash": parent.data.tags.get("config_hash"),
            "git_sha": parent.data.tags.get("git_sha"),
            "preferences": {"artifact_sha": prefs_sha, "rows": prefs.num_rows,
                            "rows_by_label_source": dict(Counter(prefs["label_source"].to_pylist())),
                            "dvc": {"repo": str(ws.data_repo), "path": f"iterations/iter-{it:04d}/preferences.parquet",
                                    "rev": rev, "tag": f"iter-{it}"}},
            "reward_models": {"labeling": _version_of(tracker, REWARD_MODEL, tags["label"].get("input.reward_model")),
                              "trained": _version_of(tracker, REWARD_MODEL,
                                                     tags["train_reward"].get("output.reward_model")),
                              "evaluation": _version_of(tracker, REWARD_MODEL,
                                                        tags["evaluate"].get("input.reward_model"))},
            "pool": _pool_of(ws, it),
            "seed_preferences": _seed_of(ws, it),
            "generation": cfg.generate.model_dump(mode="json"),
            "judge": {"heldout": _heldout_judge(cfg),
                      "labeling": judge.model_dump(mode="json", include={"backend", "model", "rubric"})
                      if judge is not None else None,
                      "rubric": "components/toy/gold.py (hidden gold reward)" if cfg.gold == "toy" else None},
            "gate": _gate(tracker, parent_id)}


def _pool_of(ws: Workspace, iteration: int) -> dict | None:
    """The prompt pool version the iteration sampled from (its ledger's start state): path, md5 (= the pool's
    .dvc md5), rows, and the artifact it was stored as."""
    ref = ((ws.read_ledger(iteration) or {}).get("start") or {}).get("pool")
    if not ref:
        return None
    meta = ref.get("meta", {})
    return {"path": meta.get("origin"), "md5": meta.get("md5"), "rows": meta.get("rows"),
            "artifact_sha": ref.get("sha256")}


def _seed_of(ws: Workspace, iteration: int) -> dict | None:
    """The imported seed preference file (label.seed_preferences) the loop's reward models were trained on by this
    iteration (added once, by the first iteration that started with it): path, md5, artifact."""
    for d in ws.ledgers():
        ref = (d.get("start") or {}).get("seed_preferences")
        if ref and d["iteration"] <= iteration and d.get("status") != "failed":
            meta = ref.get("meta", {})
            return {"path": meta.get("origin"), "md5": meta.get("md5"), "iteration": d["iteration"],
                    "artifact_sha": ref.get("sha256")}
    return None


def _heldout_judge(cfg) -> str | dict:
    """What judged the iteration's held-out comparisons (evaluate.heldout)."""
    judge = cfg.evaluate.heldout_judge()
    if judge is not None:
        return judge.model_dump(mode="json", include={"backend", "model", "rubric", "noise", "position_bias"})
    return "toy gold oracle" if cfg.evaluate.heldout == "gold" else "none"


def _gate(tracker: Tracker, run_id: str) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return json.loads(Path(tracker.client.download_artifacts(run_id, "gate/decision.json", d)).read_text())


def chain(ws: Workspace, spec: str) -> list[dict]:
    """Records from the checkpoint `spec` back to the bootstrap policy, newest first."""
    tracker, store = _tracker(ws), ArtifactStore(ws.store)
    out, mv = [], resolve(tracker, spec)
    while mv is not None:
        out.append(link(tracker, store, ws, mv))
        parent = out[-1]["parent"]
        mv = tracker.client.get_model_version(POLICY, parent["version"]) if parent and parent["version"] else None
    return out


def load_path(store: ArtifactStore, mv) -> str:
    """Where to load a registered policy from: through the store by its content hash (fetched from the S3 mirror
    when this machine lacks it, whatever the registry's source URI says), else the source itself (a hub id)."""
    try:
        return str(store.path(store.ref("policy", mv.tags[TAG_SHA])))
    except (KeyError, FileNotFoundError):  # not a store artifact: a hub id registered as the initial policy
        return mv.source.removeprefix("file://")


def regate(ws: Workspace, tracker: Tracker, version: str, overrides: list[str], re_evaluate: bool) -> dict:
    """The gate's decision on `version` vs the current champion, with the config of the iteration that made it
    (`overrides` applied, e.g. gate.max_kl=10). From that iteration's stored evaluation report when it compared the
    candidate with the champion of now (a threshold change re-decides without re-sampling); otherwise, or with
    `re_evaluate`, evaluated afresh with the stored machinery of the last iteration (pool, reference, ensemble)."""
    from components import gating
    from components.config import LoopConfig, with_overrides

    store, mv = ArtifactStore(ws.store), tracker.client.get_model_version(POLICY, version)
    it = int(mv.tags.get(TAG_ITER, "-1"))
    made = ws.read_ledger(it) if it >= 0 else None
    cfg = with_overrides(LoopConfig.model_validate_json(iteration_run(tracker, max(it, 0)).data.params["config"]),
                         overrides)
    champ = tracker.alias(POLICY, "champion")
    for v in (mv, champ):  # a corrupt checkpoint is never gated (store.path verifies: CorruptArtifact)
        load_path(store, v)
    stored = made is not None and made.get("status") == "finished" and \
        made["start"]["champion"]["sha256"] == champ.tags.get(TAG_SHA)
    if stored and not re_evaluate:
        metrics = made["report"]["metrics"]
    else:
        metrics = _evaluate_against_champion(ws, store, tracker, cfg, mv, champ)
    return gating.decide(metrics, cfg.gate).to_dict()


def _evaluate_against_champion(ws: Workspace, store: ArtifactStore, tracker: Tracker, cfg, mv, champ) -> dict:
    """The evaluate stage on (`mv`, the champion) with the last finished iteration's pool, reference and ensemble."""
    from components.artifacts import ArtifactRef
    from components.backends.models import Models
    from components.contract import Backends, Inputs, Seeds
    from components.judge import make_runner
    from components.stages import evaluate
    from components.toy.gold import GoldOracle

    last = [d for d in ws.ledgers() if d.get("status") == "finished"][-1]
    initial = ArtifactRef(**last["start"]["initial"])

    def policy(v) -> ArtifactRef:
        return initial if v.tags.get(TAG_SHA) == initial.sha256 else store.ref("policy", v.tags[TAG_SHA])

    with store.staging_dir() as scratch:
        inputs = Inputs(str(store.root), {"pool": ArtifactRef(**last["start"]["pool"]), "candidate": policy(mv),
                                          "champion": policy(champ), "reference": initial,
                                          "reward_model": ArtifactRef(**last["outputs"]["reward_model"])},
                        last["iteration"], scratch=str(scratch))
        seeds, gold = Seeds(cfg.seed, last["iteration"], "evaluate"), GoldOracle() if cfg.gold == "toy" else None
        judge = cfg.evaluate.heldout_judge()  # as the iteration's evaluate stage got it (flows/iteration.py)
        judge = judge and make_runner(judge, gold=gold, seed=seeds.fixed("evaluate/judge"), cache_dir=ws.judge_cache,
                                      metric_prefix="evaluate/heldout_judge")
        backends = Backends(models=Models(inputs, ensemble=cfg.ensemble, generate=cfg.generate, models=cfg.models),
                            gold=gold, judge=judge)
        result = evaluate.run(cfg.evaluate, inputs, backends=backends, seed=seeds)
    return result.metrics


def open_workspace(workspace) -> Workspace:
    ws = Workspace.at(workspace_dir(workspace))
    # never create a tracking store just to find it empty (a tracking server, from the env, is not ours to judge)
    if not os.environ.get("MLFLOW_TRACKING_URI") and not (ws.root / "mlflow.db").exists():
        console.print(f"[red]error:[/] {ws.root}: no alignloop workspace here (run `alignloop run` first)")
        raise typer.Exit(2)
    quiet_env(ws.root)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return ws


def promote(version: str = typer.Option(..., "--version", help="policy version to make champion"),
            force: bool = typer.Option(False, "--force", help="promote without the gate (needs --reason)"),
            reason: str = typer.Option("", "--reason", help="why (recorded in the version's tags)"),
            set_: list[str] = typer.Option([], "--set", help="Gate with changed thresholds: --set gate.max_kl=10"),
            re_evaluate: bool = typer.Option(False, "--re-evaluate",
                                             help="sample and score afresh instead of deciding from the stored "
                                                  "evaluation report"),
            workspace: Path = WorkspaceOpt):
    """Re-run the eval gate for a policy version against the champion (from its stored evaluation report while
    that compared it with today's champion); promote it if it passes."""
    if force and not reason:
        console.print("[red]error:[/] --force needs --reason TEXT")
        raise typer.Exit(2)
    ws = open_workspace(workspace)
    with contextlib.closing(take_lock(ws.root)):  # a run gating meanwhile must not see the champion change
        _promote(ws, version, force, reason, set_, re_evaluate)


def _promote(ws: Workspace, version: str, force: bool, reason: str, set_: list[str], re_evaluate: bool) -> None:
    from components import gating

    tracker = _registry(ws)
    champ = tracker.alias(POLICY, "champion")
    if champ is not None and str(champ.version) == version:
        console.print(f"policy v{version} is already champion")
        raise typer.Exit(0)
    from components.retention import deleted

    if (sha := tracker.client.get_model_version(POLICY, version).tags.get(TAG_SHA)) in deleted(ws):
        fail(f"policy v{version}: its checkpoint {sha[:12]} was deleted by `alignloop gc` (retention:): it cannot be "
             "champion again")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    if force:
        for k, v in {"alignloop.forced_by": getpass.getuser(), "alignloop.force_reason": reason,
                     "alignloop.forced_at": stamp}.items():
            tracker.client.set_model_version_tag(POLICY, version, k, v)
    else:
        try:
            decision = regate(ws, tracker, version, set_, re_evaluate)
        except (ConfigError, CorruptArtifact) as err:  # a bad --set, or a model that fails its hash check
            console.print(f"[red]error:[/] {err}")
            raise typer.Exit(2) from None
        console.print(gating.markdown(decision, f"gate: policy v{version} vs champion v{champ.version}"))
        tracker.client.set_model_version_tag(POLICY, version, "alignloop.regate",
                                             json.dumps({"at": stamp, "promote": decision["promote"],
                                                         "reasons": decision["reasons"]})[:5000])
        if not decision["promote"]:
            console.print(f"[red]rejected[/]: policy v{version} stays where it is")
            raise typer.Exit(1)
    tracker.promote(POLICY, version)
    console.print(f"[green]policy v{version} is champion[/] (previous: v{champ.version if champ else '-'})")


def rollback(reason: str = typer.Option("", "--reason", help="why (recorded on the demoted version)"),
             op_id: str = typer.Option("", "--op-id", help="names this rollback (default: the --reason text): "
                                       "running it again after it completed does nothing"),
             workspace: Path = WorkspaceOpt):
    """Move `champion` back to `previous`.

    Each rollback records its intent first (registered-model tag `alignloop.rollback`: op id, from, to, done), so:
    a rollback that was killed half-way is completed by the next `rollback` (whatever its arguments; it does not
    walk back further); a re-run of a completed one (same --op-id, or same --reason when no --op-id) while the
    champion is still the version it restored says so and changes nothing; anything else is a new rollback, one
    step further back."""
    ws = open_workspace(workspace)
    with contextlib.closing(take_lock(ws.root)):
        tracker = _registry(ws)
        key = op_id or reason or None
        if _finish_rollback(tracker) or _already_rolled_back(tracker, key):
            return
        champ, prev = tracker.alias(POLICY, "champion"), tracker.alias(POLICY, "previous")
        if prev is None:
            fail(f"{POLICY}: no `previous` alias, nothing to roll back to")
        intent = {"op": key, "from": str(champ.version) if champ else "", "to": str(prev.version), "done": False,
                  "reason": reason or "-", "by": getpass.getuser(), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_intent(tracker, intent)
        demoted, restored = tracker.rollback(POLICY, {"alignloop.rolled_back_by": intent["by"],
                                                      "alignloop.rollback_reason": intent["reason"]})
        _write_intent(tracker, {**intent, "done": True})
    console.print(f"policy champion: v{demoted} -> v{restored}")


def _intent(tracker: Tracker) -> dict | None:
    raw = tracker.client.get_registered_model(POLICY).tags.get(TAG_ROLLBACK)
    return json.loads(raw) if raw else None


def _write_intent(tracker: Tracker, intent: dict) -> None:
    tracker.client.set_registered_model_tag(POLICY, TAG_ROLLBACK, json.dumps(intent))


def _finish_rollback(tracker: Tracker) -> bool:
    """Complete a recorded rollback that did not finish (the process was killed): True if there was one."""
    intent = _intent(tracker)
    if not intent or intent["done"]:
        return False
    champ, prev = tracker.alias(POLICY, "champion"), tracker.alias(POLICY, "previous")
    champ_v, prev_v = (str(champ.version) if champ else ""), (str(prev.version) if prev else "")
    if (champ_v == intent["from"] and prev_v == intent["to"]) or champ_v == prev_v == intent["to"]:
        tracker.rollback(POLICY, {"alignloop.rolled_back_by": intent["by"],
                                  "alignloop.rollback_reason": intent["reason"]})  # not started, or half done
    elif champ_v != intent["to"]:  # the registry moved on since (e.g. a promotion): that intent is void
        _write_intent(tracker, {**intent, "done": True, "superseded": True})
        return False
    _write_intent(tracker, {**intent, "done": True})
    name = f" {intent['op']!r}" if intent["op"] else ""
    console.print(f"completed the interrupted rollback{name}: policy champion: v{intent['from']} -> v{intent['to']}")
    return True


def _already_rolled_back(tracker: Tracker, key: str | None) -> bool:
    intent = _intent(tracker)
    champ = tracker.alias(POLICY, "champion")
    if key is None or not intent or intent.get("op") != key or intent.get("superseded") or champ is None \
            or str(champ.version) != intent["to"]:
        return False
    console.print(f"already rolled back ({key!r}, {intent['at']}): policy champion is v{intent['to']} "
                  f"(was v{intent['from']}); a new rollback needs another --op-id or --reason")
    return True


def _registry(ws: Workspace) -> Tracker:
    try:
        return _tracker(ws)
    except LookupError as err:
        fail(str(err))


def lineage(spec: str = typer.Argument("policy@champion", help="policy@champion | policy@N | N"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
            workspace: Path = WorkspaceOpt):
    """The chain of a checkpoint back to the bootstrap policy."""
    try:
        records = chain(open_workspace(workspace), spec)
    except LookupError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(records, indent=1, default=str))
        return
    for r in records:
        if r["iteration"] < 0:
            console.print(f"[bold]policy v{r['version']}[/] — {r['origin']}: {r['source']}")
            continue
        p, rm, gate = r["preferences"], r["reward_models"], r["gate"]
        against = f" vs champion v{r['compared_with']['version']}" if r.get("compared_with") else ""
        console.print(f"[bold]policy v{r['version']}[/] iteration {r['iteration']} ← parent "
                      f"v{r['parent']['version']}; gate {outcome_of(gate)}{against}"
                      + (f" ({'; '.join(gate['reasons'])})" if gate["reasons"] else ""))
        console.print(f"  preferences {p['artifact_sha'][:12]} rows {p['rows']} {p['rows_by_label_source']} "
                      f"dvc {p['dvc']['path']}@{p['dvc']['tag']} ({str(p['dvc']['rev'])[:12]})")
        console.print("  reward models: " + ", ".join(f"{k} v{v['version']}" for k, v in rm.items() if v))
        if r.get("pool"):
            console.print(f"  pool: {r['pool']['path']} md5={r['pool']['md5'] or '-'} rows={r['pool']['rows']}")
        console.print(f"  judge {r['judge']}; config {r['config_hash']} git {str(r['git_sha'])[:12]}")


def report(iteration: int = typer.Argument(..., help="iteration number"),
           out: Path = typer.Option(None, "--out", help="HTML path (default workspace/reports/iter-NNNN.html)"),
           workspace: Path = WorkspaceOpt):
    """Write the iteration's HTML report and log it to the iteration's MLflow run."""
    from components.report import write_report

    ws = open_workspace(workspace)
    tracker = _tracker(ws)
    try:
        path = write_report(ws, iteration, tracker.client.get_experiment(tracker.experiment_id).name, out)
        tracker.client.log_artifact(iteration_run(tracker, iteration).info.run_id, str(path), "report")
    except (ValueError, LookupError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(f"wrote {path}")
