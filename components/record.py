"""The workspace's record: what a finished iteration leaves behind that later runs depend on, written into its
ledger, checked before every iteration, and re-created from the ledger and the store by `alignloop repair`.

A finished iteration's ledger holds, under "record":
    experiment    the MLflow experiment (one per loop) and the tracking URI it was in
    registry      every registered version of `policy` and `reward-model` at that point: version -> artifact sha,
                  source and tags (so version numbers can be re-created in order and keep naming the same bytes)
    aliases       champion / previous / candidate (and the policy's head) of both models
    run           the iteration run's name, tags and params (the config)
    data_tag      the data repo's tag iter-N (and data_rev, its commit)

Deleting mlflow.db or data/ used to go unnoticed: the next run built a new registry that reused version numbers
for other checkpoints, or a data repo without the old tags. Now `check` refuses to start an iteration, listing
what is missing, before anything is written; `repair` re-creates it.
"""

from __future__ import annotations

import json
import os
import subprocess

from components.artifacts import ArtifactRef, ArtifactStore
from components.lineage import POLICY, REWARD_MODEL, TAG_ITER, TAG_SHA, TAG_STAGE, Tracker, _client
from components.workspace import Workspace

MODELS = (POLICY, REWARD_MODEL)
DATA_OUTPUTS = ("prompts", "rollouts", "preferences", "eval_report")  # what tasks.stages.version_task tracks
REPAIRED = "alignloop.repaired"


class WorkspaceRecordError(ValueError):
    """The workspace lacks something its finished iterations recorded."""

    def __init__(self, root, problems: list[str]):
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{root}: the workspace no longer has what its finished iterations recorded "
                         f"(ledger/iter-*.json):\n{listed}\nNothing was written. Restore the missing files "
                         f"(mlflow.db, data/) from backup, or run `alignloop repair --workspace {root}` to re-register "
                         "from the ledger and the store.")


# ---- what must exist --------------------------------------------------------------------------------------------
def what_must_exist(ws: Workspace, tracker: Tracker, iteration: int, run_id: str, data_rev: str) -> dict:
    """The record of a finishing iteration (goes into its ledger)."""
    client = tracker.client
    registry, aliases = {}, {}
    for name in MODELS:
        versions = client.search_model_versions(f"name = '{name}'")
        registry[name] = {str(mv.version): {"sha": mv.tags.get(TAG_SHA), "source": mv.source, "tags": dict(mv.tags)}
                          for mv in versions}
        aliases[name] = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()} if versions else {}
    run = client.get_run(run_id)
    return {"tracking_uri": ws.tracking_uri, "experiment": client.get_experiment(tracker.experiment_id).name,
            "experiment_id": tracker.experiment_id, "registry": registry, "aliases": aliases,
            "run": {"name": run.info.run_name, "params": dict(run.data.params),
                    "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}},
            "data_tag": ws.data_tag(iteration), "data_rev": data_rev}


def _finished(ws: Workspace) -> list[dict]:
    docs = []
    for p in sorted((ws.root / "ledger").glob("iter-*.json")):
        try:
            docs.append(json.loads(p.read_text()))
        except (OSError, ValueError):  # a torn ledger records nothing (status reports it)
            continue
    return sorted((d for d in docs if isinstance(d, dict) and d.get("status") == "finished"),
                  key=lambda d: d["iteration"])


def _registry(finished: list[dict]) -> dict[str, dict[str, dict]]:
    """name -> version -> entry, over every finished iteration's record (later ledgers win)."""
    out: dict[str, dict[str, dict]] = {name: {} for name in MODELS}
    for d in finished:
        for name, versions in d.get("record", {}).get("registry", {}).items():
            out.setdefault(name, {}).update(versions)
    return out


def forget_stores(uri: str) -> None:
    """Drop MLflow's per-process stores and engines of `uri` (cached per URI): after mlflow.db was deleted, or
    re-created by a repair, a cached one still writes to the deleted file ("attempt to write a readonly
    database")."""
    try:
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore
        from mlflow.tracking._model_registry.utils import _get_store_registry
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        for reg in (_tracking_store_registry, _get_store_registry()):
            type(reg)._get_store_with_resolved_uri.cache_clear()
        for cls in (TrackingStore, RegistryStore):
            engine = cls._engine_map.pop(uri, None)
            if engine is not None:
                engine.dispose()
    except (ImportError, AttributeError):  # another MLflow version: a new process sees the new file anyway
        pass


def _tracking_missing(ws: Workspace, finished: list[dict]) -> list[str]:
    if not os.environ.get("MLFLOW_TRACKING_URI") and not (ws.root / "mlflow.db").exists():
        forget_stores(ws.tracking_uri)  # so this process finds the file `alignloop repair` or a restore puts back
        return [f"{ws.root / 'mlflow.db'} (the MLflow tracking store and model registry) is missing"]
    recorded = [d["record"] for d in finished if "record" in d]
    if not recorded:  # ledgers written before the record existed
        return []
    client, problems = _client(ws.tracking_uri), []
    exp = recorded[-1]["experiment"]
    found = client.get_experiment_by_name(exp)
    if found is None or found.lifecycle_stage != "active":
        problems.append(f"MLflow experiment {exp!r} is missing from {ws.tracking_uri}")
    for name, versions in _registry(finished).items():
        have = {str(mv.version): mv.tags.get(TAG_SHA) for mv in client.search_model_versions(f"name = '{name}'")}
        for v, entry in sorted(versions.items(), key=lambda kv: int(kv[0])):
            if v not in have:
                problems.append(f"registry: {name} v{v} (artifact {str(entry['sha'])[:12]}) is missing")
            elif have[v] != entry["sha"]:
                problems.append(f"registry: {name} v{v} holds artifact {str(have[v])[:12]}, the ledger recorded "
                                f"{str(entry['sha'])[:12]} (a different registry: restore the original from backup)")
    return problems


def _tags(repo) -> set[str] | None:
    if not (repo / ".git").exists():
        return None
    proc = subprocess.run(["git", "-C", str(repo), "tag", "-l"], capture_output=True, text=True, check=False)
    return set(proc.stdout.split()) if proc.returncode == 0 else None


def _data_missing(ws: Workspace, finished: list[dict]) -> list[str]:
    wanted = [ws.data_tag(d["iteration"]) for d in finished if d.get("data_rev")]
    if not wanted:
        return []
    tags = _tags(ws.data_repo)
    if tags is None:
        return [f"{ws.data_repo} (the DVC data repository, tags {', '.join(wanted)}) is missing"]
    return [f"data repo tag {t} is missing from {ws.data_repo}" for t in wanted if t not in tags]


def missing(ws: Workspace) -> list[str]:
    """What the finished iterations' ledgers say must exist and does not; [] when all is there."""
    finished = _finished(ws)
    return (_tracking_missing(ws, finished) + _data_missing(ws, finished)) if finished else []


def check(ws: Workspace) -> None:
    """Before an iteration writes anything: refuse (WorkspaceRecordError) if the record is incomplete."""
    problems = missing(ws)
    if problems:
        raise WorkspaceRecordError(ws.root, problems)


# ---- repair -----------------------------------------------------------------------------------------------------
def repair(ws: Workspace) -> list[str]:
    """Re-create what is missing from the ledger and the store: the data repo's iterations and tags, then the
    MLflow experiment, the iteration runs and the registry versions in version order (so numbers match), and the
    aliases. Returns what was done; raises WorkspaceRecordError for what cannot be repaired."""
    finished, done = _finished(ws), []
    if not finished:
        return done
    _repair_data(ws, finished, done)
    recorded = [d for d in finished if "record" in d]
    if recorded:
        if not os.environ.get("MLFLOW_TRACKING_URI") and not (ws.root / "mlflow.db").exists():
            forget_stores(ws.tracking_uri)
        _repair_tracking(ws, finished, recorded[-1]["record"], done)
    problems = missing(ws)
    if problems:
        raise WorkspaceRecordError(ws.root, problems)
    return done


def _repair_data(ws: Workspace, finished: list[dict], done: list[str]) -> None:
    from components.versioning import DataRepo

    tags = _tags(ws.data_repo) or set()
    todo = [d for d in finished if d.get("data_rev") and ws.data_tag(d["iteration"]) not in tags]
    if not todo:
        return
    store, remote = ArtifactStore(ws.store), ws.dvc_remote_url
    repo = DataRepo(ws.data_repo, remote, endpoint_url=ws.s3_endpoint if remote.startswith("s3://") else None)
    repo.init()
    for d in todo:
        i = d["iteration"]
        refs = {k: ArtifactRef(**d["outputs"][k]) for k in DATA_OUTPUTS if k in d["outputs"]}
        files = {f"{k}{store.path(ref).suffix}": store.path(ref) for k, ref in refs.items()}
        rev = repo.track_iteration(i, files, message=f"iteration {i} (re-tracked by alignloop repair)")
        record = {**d.get("record", {}), "data_rev": rev} if "record" in d else None
        d.update(data_rev=rev, **({"record": record} if record else {}))
        ws.write_ledger(i, d)
        done.append(f"data repo: iteration {i} re-tracked from the store, tag {ws.data_tag(i)} ({rev[:12]})")


def _repair_tracking(ws: Workspace, finished: list[dict], last: dict, done: list[str]) -> None:
    tracker = Tracker(ws.tracking_uri, ws.artifact_root, last["experiment"])  # creates the experiment if missing
    runs = {d["iteration"]: _iteration_run(tracker, d, done) for d in finished}
    for name, versions in _registry(finished).items():
        _repair_versions(tracker, name, versions, runs, done)
    for name, aliases in last.get("aliases", {}).items():
        for alias, version in aliases.items():
            if tracker.alias(name, alias) is None:
                tracker.set_alias(name, alias, version)
                done.append(f"registry: {name}@{alias} -> v{version}")


def _iteration_run(tracker: Tracker, d: dict, done: list[str]) -> str | None:
    """The iteration's finished run (re-created from the ledger when gone); its dvc.rev tag as the ledger says."""
    i, rec = d["iteration"], d.get("record", {}).get("run")
    found = tracker._find(f"tags.`{TAG_ITER}` = '{i}' and tags.`{TAG_STAGE}` = 'iteration'"
                          " and attributes.status = 'FINISHED'")
    if found is not None:
        run_id = found.info.run_id
        if d.get("data_rev") and found.data.tags.get("dvc.rev") != d["data_rev"]:
            tracker.client.set_tag(run_id, "dvc.rev", d["data_rev"])
        return run_id
    if rec is None:
        return None
    from components.lineage import _log_batch

    tags = {**rec["tags"], TAG_ITER: str(i), TAG_STAGE: "iteration", REPAIRED: f"from ledger/iter-{i:04d}.json",
            **({"dvc.rev": d["data_rev"]} if d.get("data_rev") else {})}
    run = tracker.client.create_run(tracker.experiment_id, run_name=rec.get("name"), tags=tags)
    _log_batch(tracker.client, run.info.run_id, [(f"timing/{k}_s", v, 0) for k, v in d.get("timings", {}).items()],
               params=rec.get("params", {}))
    if d.get("decision"):
        tracker.client.log_dict(run.info.run_id, d["decision"], "gate/decision.json")
    tracker.client.set_terminated(run.info.run_id, "FINISHED")
    done.append(f"MLflow: iteration {i} run re-created ({run.info.run_id})")
    return run.info.run_id


def _repair_versions(tracker: Tracker, name: str, versions: dict[str, dict], runs: dict, done: list[str]) -> None:
    """Re-create the missing versions of `name` in version order, so each number names the recorded artifact."""
    from mlflow.exceptions import MlflowException

    if not versions:
        return
    client = tracker.client
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    have = {int(mv.version): mv for mv in client.search_model_versions(f"name = '{name}'")}
    for v in range(1, max(map(int, versions)) + 1):
        entry = versions.get(str(v))
        if v in have:
            continue  # a wrong artifact under this number is reported by `missing`, not overwritten
        if have and max(have) > v:
            raise WorkspaceRecordError(tracker.tracking_uri, [f"registry: {name} v{v} is missing but v{max(have)} "
                                                              "exists: versions cannot be re-created out of order"])
        entry = entry or {"sha": None, "source": "alignloop:placeholder", "tags": {
            REPAIRED: "placeholder: this version number was used, but no ledger records what it held"}}
        it = entry["tags"].get(TAG_ITER)
        mv = client.create_model_version(name, source=entry["source"],
                                         run_id=runs.get(int(it)) if it and it.lstrip("-").isdigit() else None,
                                         tags={**entry["tags"], REPAIRED: entry["tags"].get(REPAIRED, "from ledger")})
        have[int(mv.version)] = mv
        if int(mv.version) != v:
            raise WorkspaceRecordError(tracker.tracking_uri, [f"registry: re-creating {name} v{v} made v{mv.version}"])
        done.append(f"registry: {name} v{v} re-created (artifact {str(entry['sha'])[:12]})")
