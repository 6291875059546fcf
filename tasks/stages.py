"""Thin Prefect tasks, one per stage: load artifacts, call the pure stage, publish outputs, track in MLflow.

Policies live here only: retries, and the cache key = task name + input artifact ids + stage config +
seed + workspace + code version. A re-run of a finished iteration therefore recomputes nothing (the
persisted result is the output ArtifactRef), and a run killed mid-stage resumes at that stage. MLflow
child runs are opened inside the task body, so a cached stage never creates a duplicate run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from functools import lru_cache
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from components import config as C
from components import gating
from components.artifacts import ArtifactRef, ArtifactStore
from components.backends.launch import run_stage
from components.lineage import POLICY, REWARD_MODEL, Tracker, fault_point
from components.stages import evaluate, generate, label, sample_prompts
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


def artifact_cache_key(_task_ctx, params: dict) -> str:
    ctx: RunContext = params["ctx"]
    keyed = {k: (v.model_dump(mode="json") if isinstance(v, BaseModel) else v) for k, v in params.items()
             if k != "ctx"}
    blob = json.dumps({"task": _task_ctx.task.name, "params": keyed, "seed": ctx.seed, "iteration": ctx.iteration,
                       "ws": ctx.workspace_id,
                       "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# No task tags: every tagged task run asks the server for a tag concurrency slot (measured ~8.6 s per iteration);
# concurrency between iterations is the deployment's limit and the workspace lock.
stage_task = task(cache_key_fn=artifact_cache_key, persist_result=True, retries=1, retry_delay_seconds=5)


def _gold(name: str | None):
    if name == "toy":
        from components.toy.gold import gold_reward

        return gold_reward
    return None


def _members(store: ArtifactStore, ensemble: ArtifactRef | None) -> list[str] | None:
    if ensemble is None:
        return None
    root = store.path(ensemble)
    return [str(p) for p in sorted([*root.glob("member-*"), *root.glob("shared")])]  # shared: one K-head model


@stage_task
def sample_prompts_task(ctx: RunContext, cfg: C.SampleConfig, pool: ArtifactRef) -> ArtifactRef:
    store = ctx.store()
    with ctx.stage("sample_prompts", cfg, {"prompt_pool": pool}) as run:
        table = sample_prompts.run(cfg, store.read_table(pool), iteration=ctx.iteration, seed=ctx.seed)
        ref = store.put_table("prompts", table, parents=[pool], meta={"iteration": ctx.iteration})
        run.outputs({"prompts": ref})
        run.log_metrics({"prompts": table.num_rows, "strata": len(set(table["source"].to_pylist()))})
    return ref


@stage_task
def generate_task(ctx: RunContext, cfg: C.GenerateConfig, prompts: ArtifactRef, policy: ArtifactRef,
                  policy_source: str, fanout: C.FanoutConfig = C.FanoutConfig()) -> ArtifactRef:
    """`fanout.generate_shards` prompt shards, sampled as Ray tasks with `fanout.task_runner: ray`
    (tasks/fanout.py), else one after another here; the rollouts are the same either way."""
    store = ctx.store()
    on_ray = fanout.task_runner == "ray" and fanout.generate_shards > 1
    shard_map = {"map_shards": ray_shard_map(fanout)} if on_ray else {}
    with ctx.stage("generate", cfg, {"prompts": prompts, "policy": policy}) as run:
        table, stats = generate.run(cfg, store.read_table(prompts), policy_source, policy_sha=policy.sha256,
                                    seed=ctx.seed * 100_003 + ctx.iteration, shards=fanout.generate_shards,
                                    **shard_map)
        ref = store.put_table("rollouts", table, parents=[prompts, policy])
        run.outputs({"rollouts": ref})
        run.log_metrics(stats)
    return ref


@stage_task
def label_task(ctx: RunContext, cfg: C.LabelConfig, rollouts: ArtifactRef, reward_model: ArtifactRef | None,
               gold: str | None, human: list[ArtifactRef] | None = None) -> ArtifactRef:
    """`human`: imported human-label tables (alignloop labels import) this iteration adds. The judge's cache
    lives in <workspace>/judge_cache, its transcript becomes a `judge_transcript` artifact, uncertain pairs
    go to <workspace>/human_queue/iter-NNNN.jsonl when label.uncertain = human_queue."""
    import json

    import pyarrow as pa

    from components.human_queue import write_queue
    from components.judge import make_runner

    store, human = ctx.store(), human or []
    inputs = {"rollouts": rollouts, **({"reward_model": reward_model} if reward_model else {}),
              **{f"human.{i}": h for i, h in enumerate(human)}}
    with ctx.stage("label", cfg, inputs) as run:
        judge = make_runner(cfg.judge, gold=_gold(gold), seed=ctx.seed, cache_dir=ctx.ws.root / "judge_cache")
        out = label.run(cfg, store.read_table(rollouts), reward_models=_members(store, reward_model),
                        gold=_gold(gold), iteration=ctx.iteration, seed=ctx.seed, judge=judge,
                        human=pa.concat_tables([store.read_table(h) for h in human]) if human else None)
        parents = [rollouts] + ([reward_model] if reward_model else []) + human
        scores_ref = store.put_table("scores", out.scores, parents=parents)
        # the label mix travels with the ref (into the ledger and the demo table); full metrics go to MLflow
        mix = ("pairs_built", "pairs_kept", "kept/rm_ensemble", "kept/judge", "kept/gold", "kept/human", "judge_calls",
               "oriented_correctly")
        meta = {"scores": scores_ref.sha256, "iteration": ctx.iteration,
                "label": {k: out.metrics[k] for k in mix if k in out.metrics and out.metrics[k] == out.metrics[k]}}
        refs = {"scores": scores_ref}
        if out.transcript:
            with store.staging_dir() as d:
                (d / "t").mkdir()
                (d / "t" / "calls.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n"
                                                             for c in out.transcript))
                refs["judge_transcript"] = store.put_dir("judge_transcript", d / "t", parents=[rollouts])
            run.log_artifact(store.path(refs["judge_transcript"]) / "calls.jsonl", "judge_transcript")
            meta["judge_transcript"] = refs["judge_transcript"].sha256
        if out.human_queue:
            run.log_artifact(write_queue(ctx.ws, ctx.iteration, out.human_queue), "human_queue")
        ref = store.put_table("preferences", out.preferences, parents=parents, meta=meta)
        run.outputs({"preferences": ref, **refs})
        run.log_metrics({f"label/{k}": v for k, v in out.metrics.items()})
    return ref


@stage_task
def train_reward_task(ctx: RunContext, cfg: C.RewardConfig, preferences: list[ArtifactRef], init: str,
                      launch: C.LaunchConfig = C.LaunchConfig(), previous: ArtifactRef | None = None,
                      fanout: C.FanoutConfig = C.FanoutConfig()) -> ArtifactRef:
    """Retrain (warm-started from `previous`, the ensemble in use); returns the ensemble to use from now on: the
    new one, registered and aliased `champion`, or `previous` if held-out accuracy regressed (not registered).
    `fanout.task_runner: ray` trains the members as Ray tasks (tasks/fanout.py); everything else stays here."""
    store = ctx.store()
    inputs = {f"preferences.{p.meta.get('iteration', i)}": p for i, p in enumerate(preferences)}
    with ctx.stage("train_reward", cfg, {**inputs, **({"previous": previous} if previous else {})}) as run:
        with store.staging_dir() as d:
            metrics = run_stage("train_reward", cfg, launch, store, preferences, init_path=init,
                                out_dir=d / "ensemble", seed=ctx.seed, previous=_members(store, previous),
                                **({"map_members": ray_map(fanout)} if fanout.task_runner == "ray" else {}))
            ref = store.put_dir("reward_model", d / "ensemble", parents=preferences,
                                meta={"members": cfg.members, "iteration": ctx.iteration})
        run.log_metrics(metrics)
        if previous is not None and not metrics["accepted"]:
            ctx.tracker().client.set_tag(run.run_id, "alignloop.rm_decision", "kept previous: held-out accuracy "
                                         f"regressed by {metrics['trusted_accuracy_regression']:.3f}")
            run.outputs({"reward_model": previous})
            return previous
        run.outputs({"reward_model": ref})
        ctx.tracker().client.set_tag(run.run_id, "alignloop.rm_decision", "registered")
        version = ctx.tracker().register(REWARD_MODEL, ref, store.uri(ref), run.run_id,
                                         {"alignloop.iteration": str(ctx.iteration)})
        ctx.tracker().set_alias(REWARD_MODEL, "champion", version)
    return ref


@stage_task
def train_policy_task(ctx: RunContext, cfg: C.PolicyConfig, preferences: ArtifactRef, policy: ArtifactRef,
                      policy_source: str, reference_source: str, launch: C.LaunchConfig = C.LaunchConfig(),
                      prompts: ArtifactRef | None = None, pool: ArtifactRef | None = None,
                      reward_model: ArtifactRef | None = None, label_cfg: C.LabelConfig = C.LabelConfig()
                      ) -> ArtifactRef:
    """`prompts` feed online RL; `pool`'s eval split feeds the post-update KL/entropy probe; `reward_model` (with
    label_cfg's aggregation) is the RL reward and the probe's proxy."""
    store = ctx.store()
    with ctx.stage("train_policy", cfg, {"preferences": preferences, "policy": policy}) as run:
        with store.staging_dir() as d:
            heldout = (evaluate.heldout_prompts(store.read_table(pool), cfg.probe_prompts, ctx.seed)["prompt"]
                       .to_pylist() if pool else [])
            metrics = run_stage("train_policy", cfg, launch, store, [preferences], policy_path=policy_source,
                                ref_path=reference_source, out_dir=d / "policy", seed=ctx.seed + ctx.iteration,
                                prompts=store.read_table(prompts)["prompt"].to_pylist() if prompts else [],
                                heldout_prompts=heldout, reward_models=_members(store, reward_model),
                                aggregation=label_cfg.aggregation, uw_lambda=label_cfg.uw_lambda)
            ref = store.put_dir("policy", d / "policy", parents=[preferences, policy],
                                meta={"iteration": ctx.iteration})
        run.outputs({"candidate": ref})
        # the trainer's trajectories (loss, logps, reward, kl, ...)
        run.log_history([{f"train_policy/trajectory/{k}" if k != "step" else k: v for k, v in window.items()}
                         for window in metrics.pop("history", [])])
        run.log_metrics(metrics)
    return ref


@stage_task
def evaluate_task(ctx: RunContext, cfg: C.EvalConfig, gen: C.GenerateConfig, label_cfg: C.LabelConfig,
                  pool: ArtifactRef, candidate: ArtifactRef, champion: ArtifactRef, champion_source: str,
                  reference_source: str, reward_model: ArtifactRef, gold: str | None) -> ArtifactRef:
    store = ctx.store()
    with ctx.stage("evaluate", cfg, {"candidate": candidate, "champion": champion, "reward_model": reward_model}
                   ) as run:
        prompts = evaluate.heldout_prompts(store.read_table(pool), cfg.n_prompts, ctx.seed)
        samples, report = evaluate.run(cfg, gen, prompts, candidate_path=str(store.path(candidate)),
                                       champion_path=champion_source, ref_path=reference_source,
                                       reward_models=_members(store, reward_model), gold=_gold(gold),
                                       aggregation=label_cfg.aggregation, uw_lambda=label_cfg.uw_lambda,
                                       seed=ctx.seed)
        parents = [candidate, champion, reward_model]
        samples_ref = store.put_table("eval_samples", samples, parents=parents)
        ref = store.put_json("eval_report", {**report, "samples": samples_ref.sha256}, parents=parents)
        run.outputs({"eval_report": ref, "eval_samples": samples_ref})
        flat = {k.replace(".", "/"): v for k, v in evaluate.flat_metrics(report).items()}
        run.log_metrics({**flat, "gate/promote": float(report["gate"]["promote"])})
    return ref


@stage_task
def gate_task(ctx: RunContext, report: ArtifactRef, candidate: ArtifactRef) -> dict:
    """Register the candidate (alias `candidate`); move `champion` only if the gate passed."""
    store = ctx.store()
    decision = store.read_json(report)["gate"]
    tracker = ctx.tracker()
    with ctx.stage("gate", None, {"eval_report": report, "candidate": candidate}) as run:
        version = tracker.register(POLICY, candidate, store.uri(candidate), run.run_id,
                                   {"alignloop.iteration": str(ctx.iteration),
                                    "alignloop.gate": "promote" if decision["promote"] else "reject"})
        tracker.set_alias(POLICY, "candidate", version)
        if decision["promote"]:
            tracker.promote(POLICY, version)
        run.log_metrics({"promote": float(decision["promote"])})
        tracker.client.set_tag(run.run_id, "alignloop.gate_reasons", "; ".join(decision["reasons"]) or "all passed")
        # The decision where people look: the iteration's MLflow run and the Prefect UI.
        table = gating.markdown(decision, f"{ctx.loop} iteration {ctx.iteration}: gate for policy v{version}")
        tracker.log_gate(ctx.parent_run_id, decision, table)
        create_markdown_artifact(markdown=table, key=f"gate-{ctx.loop}-iter-{ctx.iteration}".lower().replace(
            "_", "-").replace(".", "-"), description=f"gate decision, policy v{version}")
    return {"version": version, **decision}


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
