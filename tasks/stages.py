"""Thin Prefect tasks: one generic stage task (`stage_task_run`) for every pure stage of components/stages, plus
the gate (registry) and version (DVC) tasks.

The stage task resolves a stage's input refs through the store (`Inputs`), builds its backends from its `Setup`
(`backends_for`: models, gold, judge, Ray fan-out), runs it here or under `accelerate launch`, publishes every
output of its `StageResult` (`publish`), runs the stage's registry/queue step (`AFTER`) and logs its metrics to
its MLflow child run. Policies live here only: retries, and the cache key = task name + input artifact ids +
stage config + setup + seed + workspace + code version. A re-run of a finished iteration therefore recomputes
nothing (the persisted result is the output ArtifactRef), and a run killed mid-stage resumes at that stage.
MLflow child runs are opened inside the task body, so a cached stage never creates a duplicate run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from components import config as C
from components import gating
from components.artifacts import ArtifactRef, ArtifactStore
from components.backends import launch
from components.contract import Backends, Inputs, Seeds, StageResult
from components.faults import fault_point
from components.lineage import POLICY, REWARD_MODEL, Tracker
from components.stages import evaluate, generate, label, sample_prompts, train_policy, train_reward
from components.workspace import Workspace
from tasks.fanout import ray_map, ray_shard_map


class RunContext(BaseModel):
    """Who is running: passed to every task; part of the cache key through workspace id, iteration and seed
    (seeds derive from both), not through run ids, so a resumed iteration hits the cache."""

    model_config = ConfigDict(frozen=True)
    workspace: str
    workspace_id: str
    loop: str
    iteration: int
    seed: int
    parent_run_id: str
    config_hash: str
    git_sha: str

    @property
    def ws(self) -> Workspace:
        return Workspace.at(self.workspace)

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.ws.store)

    def seeds(self, stage: str) -> Seeds:
        return Seeds(self.seed, self.iteration, stage)

    def tracker(self) -> Tracker:
        return _tracker(self.ws.tracking_uri, self.ws.artifact_root, self.loop)

    @contextlib.contextmanager
    def stage(self, name: str, cfg: BaseModel | None, inputs: dict[str, ArtifactRef]):
        params = {f"{name}.{k}": v for k, v in _flat(cfg.model_dump(mode="json")).items()} if cfg else {}
        with self.tracker().stage_run(self.parent_run_id, self.iteration, name, self.loop, inputs=inputs,
                                      tags={"config_hash": self.config_hash, "git_sha": self.git_sha},
                                      params=params) as run:
            yield run
            # Crash tests die here: outputs published and registered, run not yet FINISHED nor cached.
            fault_point(f"stage:{name}:end")


@lru_cache(maxsize=8)
def _tracker(tracking_uri: str, artifact_root: str, loop: str) -> Tracker:
    """One client per loop and process: a Tracker looks its experiment up when made (a request each time)."""
    return Tracker(tracking_uri, artifact_root, loop)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the library's source: a code change invalidates cached stage results."""
    root = Path(__file__).resolve().parents[1] / "components"
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _jsonable(v):
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return [_jsonable(x) for x in v] if isinstance(v, (list, tuple)) else v


def artifact_cache_key(_task_ctx, params: dict) -> str:
    ctx: RunContext = params["ctx"]
    keyed = {k: _jsonable(v) for k, v in params.items() if k != "ctx"}
    blob = json.dumps({"task": _task_ctx.task.name, "params": keyed, "seed": ctx.seed, "iteration": ctx.iteration,
                       "ws": ctx.workspace_id,
                       "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# No task tags: every tagged task run asks the server for a tag concurrency slot (measured ~8.6 s per iteration);
# concurrency between iterations is the deployment's limit and the workspace lock.
stage_task = task(cache_key_fn=artifact_cache_key, persist_result=True, retries=1, retry_delay_seconds=5)


class Setup(BaseModel):
    """The backends a stage computes with, by config: part of the stage's cache key, so each stage's key holds
    exactly the sections it uses (a judge-budget change re-runs label, not evaluate)."""

    model_config = ConfigDict(frozen=True)
    ensemble: C.EnsembleConfig = C.EnsembleConfig()
    generate: C.GenerateConfig | None = None  # generators (generate, evaluate, the probe / RL reference samples)
    models: C.ModelsConfig = C.ModelsConfig()  # dtype, log-prob batching, residency of every model a stage loads
    gold: str | None = None
    judge: C.JudgeConfig | None = None
    # the judge's stats names (make_runner's `metric_prefix`; None = its default, label's) and whether its seed
    # is this iteration's or fixed across iterations (the held-out judge: a champion re-judged gets the same verdicts)
    judge_metrics: str | None = None
    judge_seed: Literal["iteration", "fixed"] = "iteration"
    fanout: C.FanoutConfig = C.FanoutConfig()
    launch: C.LaunchConfig = C.LaunchConfig()


Refs = dict[str, ArtifactRef | list[ArtifactRef] | None]


def backends_for(ctx: RunContext, stage: str, setup: Setup, inputs: Inputs) -> Backends:
    """The one place that turns a stage's `Setup` into backends."""
    from components.backends.models import Models

    gold = None
    if setup.gold == "toy":
        from components.toy.gold import GoldOracle

        gold = GoldOracle()
    judge = None
    if setup.judge is not None:
        from components.judge import make_runner

        seeds = ctx.seeds(stage)
        seed = seeds.fixed(f"{stage}/judge") if setup.judge_seed == "fixed" else seeds.sub("judge")
        named = {"metric_prefix": setup.judge_metrics} if setup.judge_metrics else {}
        judge = make_runner(setup.judge, gold=gold, seed=seed, cache_dir=ctx.ws.judge_cache, **named)
    ray = setup.fanout.task_runner == "ray"
    shards = ray and setup.generate is not None and setup.generate.shards > 1
    return Backends(models=Models(inputs, ensemble=setup.ensemble, generate=setup.generate or C.GenerateConfig(),
                                  models=setup.models),
                    gold=gold, judge=judge, map_members=ray_map(setup.fanout) if ray else map,
                    map_shards=ray_shard_map(setup.fanout) if shards else map)


def publish(store: ArtifactStore, result: StageResult, parents: list[ArtifactRef]) -> dict[str, ArtifactRef]:
    """Every output of `result` into the store (atomically, content-addressed), in the stage's order, documents
    last: they record the ids of the stage's other outputs (an evaluation report names its samples)."""
    refs: dict[str, ArtifactRef] = {}
    for name, out in sorted(result.outputs.items(), key=lambda kv: kv[1].doc is not None):
        if out.table is not None:
            refs[name] = store.put_table(out.kind, out.table, parents=parents, meta=out.meta)
        elif out.dir is not None:
            refs[name] = store.put_dir(out.kind, out.dir, parents=parents, meta=out.meta)
        else:
            refs[name] = store.put_json(out.kind, {**out.doc, **{k: r.sha256 for k, r in refs.items()}},
                                        parents=parents, meta=out.meta)
    return refs


@stage_task
def stage_task_run(ctx: RunContext, stage: str, cfg: BaseModel, inputs: Refs, setup: Setup = Setup()
                   ) -> dict[str, ArtifactRef]:
    """Any stage of components/stages: resolve its inputs through the store, build its backends, run it (here,
    or under `accelerate launch` for the training stages), publish its outputs, track it in MLflow."""
    store = ctx.store()
    present = {k: (tuple(v) if isinstance(v, list) else v) for k, v in inputs.items() if v}
    tracked = {(f"{k}.{r.meta.get('iteration', i)}" if isinstance(v, tuple) else k): r for k, v in present.items()
               for i, r in enumerate(v if isinstance(v, tuple) else (v,))}
    with ctx.stage(stage, cfg, tracked) as run, store.staging_dir() as scratch:
        ins = Inputs(str(store.root), present, ctx.iteration, scratch=str(scratch))
        if stage in TRAINING and setup.launch.mode == "accelerate":
            result = launch.accelerate(stage, cfg, ins, setup.ensemble, setup.generate, ctx.seeds(stage), setup.launch,
                                       models=setup.models)
        else:
            result = STAGES[stage].run(cfg, ins, backends=backends_for(ctx, stage, setup, ins),
                                       seed=ctx.seeds(stage))
        refs = publish(store, result, list(tracked.values()))
        refs = AFTER.get(stage, lambda ctx, run, refs, result, inputs: refs)(ctx, run, refs, result, present)
        run.outputs(refs)
        run.log_history(result.history)
        run.log_metrics(result.metrics)
    return refs


def _after_label(ctx: RunContext, run, refs: dict, result: StageResult, inputs: dict) -> dict:
    """The transcript and the review queue where people look (MLflow, <workspace>/human_queue)."""
    from components.human_queue import write_queue

    if "judge_transcript" in refs:
        run.log_artifact(ctx.store().path(refs["judge_transcript"]) / "calls.jsonl", "judge_transcript")
    if result.records.get("human_queue"):
        run.log_artifact(write_queue(ctx.ws, ctx.iteration, result.records["human_queue"]), "human_queue")
    return refs


def _after_train_reward(ctx: RunContext, run, refs: dict, result: StageResult, inputs: dict) -> dict:
    """The ensemble to use from now on: the new one, registered and aliased `champion`, or the previous one if
    its held-out accuracy regressed (the new one is not registered)."""
    tracker, previous = ctx.tracker(), inputs.get("previous")
    if previous is not None and not result.metrics["train_reward/accepted"]:
        regression = result.metrics["train_reward/trusted_accuracy_regression"]
        tracker.client.set_tag(run.run_id, "alignloop.rm_decision",
                               f"kept previous: held-out accuracy regressed by {regression:.3f}")
        return {**refs, "reward_model": previous}
    tracker.client.set_tag(run.run_id, "alignloop.rm_decision", "registered")
    ref = refs["reward_model"]
    version = tracker.register(REWARD_MODEL, ref, ctx.store().uri(ref), run.run_id,
                               {"alignloop.iteration": str(ctx.iteration)})
    tracker.set_alias(REWARD_MODEL, "champion", version)
    return refs


# stage name -> its module; `run` is looked up per call (benchmarks wrap a stage's run to time or kill it)
STAGES = {"sample_prompts": sample_prompts, "generate": generate, "label": label, "train_reward": train_reward,
          "train_policy": train_policy, "evaluate": evaluate}
TRAINING = tuple(launch.STAGES)  # the stages `train_launch.mode: accelerate` runs as a subprocess
AFTER = {"label": _after_label, "train_reward": _after_train_reward}


@stage_task
def gate_task(ctx: RunContext, cfg: C.GateConfig, report: ArtifactRef, candidate: ArtifactRef) -> dict:
    """Decide from the stored evaluation report (`gate:` thresholds); register the candidate (alias `candidate`);
    outcome promote: `head` and `champion` move to it; head: only `head` moves (safe, gain not yet significant);
    discard: neither. Every write is idempotent, so a run killed between them redoes them all on resume. A
    threshold change re-decides here without re-sampling."""
    store = ctx.store()
    decision = gating.decide(store.read_json(report)["metrics"], cfg).to_dict()
    tracker, outcome = ctx.tracker(), decision["outcome"]
    with ctx.stage("gate", None, {"eval_report": report, "candidate": candidate}) as run:
        version = tracker.register(POLICY, candidate, store.uri(candidate), run.run_id,
                                   {"alignloop.iteration": str(ctx.iteration), "alignloop.gate": outcome})
        tracker.set_alias(POLICY, "candidate", version)
        if outcome == "promote":
            tracker.promote(POLICY, version)
        elif outcome == "head":
            tracker.set_alias(POLICY, "head", version)
        run.log_metrics({"gate/promote": float(outcome == "promote"), "gate/head": float(outcome != "discard")})
        tracker.client.set_tag(run.run_id, "alignloop.gate_reasons", "; ".join(decision["reasons"]) or "all passed")
        # The decision where people look: the iteration's MLflow run and the Prefect UI.
        table = gating.markdown(decision, f"{ctx.loop} iteration {ctx.iteration}: gate for policy v{version}")
        tracker.log_gate(ctx.parent_run_id, decision, table)
        create_markdown_artifact(markdown=table, key=f"gate-{ctx.loop}-iter-{ctx.iteration}".lower().replace(
            "_", "-").replace(".", "-"), description=f"gate decision, policy v{version}")
        head, champion = tracker.head(POLICY), tracker.alias(POLICY, "champion")
    return {"version": version, **decision, "head_version": str(head.version),
            "champion_version": str(champion.version)}


@stage_task
def version_task(ctx: RunContext, outputs: dict[str, ArtifactRef]) -> str:
    """Track the iteration's data artifacts in the workspace's DVC repo, tag `iter-N`, push to the remote."""
    from components.versioning import DataRepo

    store, ws = ctx.store(), ctx.ws
    data = {"prompts", "rollouts", "preferences", "eval_report"}
    files = {f"{k}{store.path(ref).suffix}": store.path(ref) for k, ref in outputs.items() if k in data}
    remote = ws.dvc_remote_url
    repo = DataRepo(ws.data_repo, remote, endpoint_url=ws.s3_endpoint if remote.startswith("s3://") else None)
    with ctx.stage("version", None, {k: v for k, v in outputs.items() if k in data}) as run:
        repo.init()
        rev = repo.track_iteration(ctx.iteration, files, message=f"{ctx.loop} iteration {ctx.iteration}")
        ctx.tracker().client.set_tag(run.run_id, "dvc.rev", rev)
        ctx.tracker().client.set_tag(ctx.parent_run_id, "dvc.rev", rev)
    return rev
