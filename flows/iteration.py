"""The iteration flow (one Prefect flow run per iteration) and the continual flow (N iterations).

    alignloop run --config configs/tiny.yaml --iterations 3

sample → generate → label → train_reward → train_policy → evaluate → gate → version

Every stage is one call of the generic stage task (tasks/stages.py) with its config section, its input artifacts
and the backends it scores or samples with; `_pipeline` is the diagram.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prefect import flow

from components import interrupts, record
from components.artifacts import ArtifactRef, ArtifactStore
from components.config import LoopConfig, config_hash, load_config
from components.lineage import POLICY, TAG_SHA, Tracker
from components.schemas import conform
from components.validation import check_pool, check_settings
from components.workspace import Workspace
from tasks import stages as t

# A progress listener (the CLI's display) gets (stage, "start" | "done", seconds).
Listener = Callable[[str, str, float], None]


@contextlib.contextmanager
def in_process_run() -> Iterator[None]:
    """Prefect settings for loop flows run in this process (`alignloop run`), as opposed to a deployment's runs,
    which a worker launches and which keep Prefect's defaults.

    Flow-run heartbeats are off here unless PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set. They exist to let a
    server-side automation mark a worker's run Crashed when its machine dies; a run in this process is watched
    by the person who started it (and an ephemeral server ends with it). Their cost is not small: Prefect's
    heartbeat thread sleeps in 1 s steps, which every flow run waits out when it ends (up to 1 s; 0.67 s per
    short flow run measured, the largest single orchestration cost of an iteration; benchmarks/README.md §1)."""
    if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ:
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def validate_inputs(cfg: LoopConfig, config_path: str) -> None:
    """Everything that can be checked before a stage starts, so bad input never touches the workspace."""
    import pyarrow.parquet as pq

    pool = Path(cfg.prompt_pool)
    if not pool.exists():
        raise FileNotFoundError(f"{config_path}: prompt_pool file {pool} does not exist (build it: `dvc repro`)")
    try:
        table = pq.read_table(pool)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"{pool}: not a readable Parquet prompt table ({err})") from None
    check_pool(table, cfg, str(pool))  # types, unique ids, empty/long prompts, splits, n_prompts
    check_settings(cfg)  # warnings for settings that cannot take effect
    if cfg.label.seed_preferences is not None:  # file:row errors before any stage
        from components.seed_preferences import read_seed_preferences

        read_seed_preferences(cfg.label.seed_preferences)
    looks_local = cfg.policy_init.startswith((".", "/")) or Path(cfg.policy_init).exists() or "/" not in cfg.policy_init
    if looks_local and not (Path(cfg.policy_init) / "config.json").exists():
        raise FileNotFoundError(f"{config_path}: policy_init {cfg.policy_init} has no config.json (build the "
                                "embedded default with `dvc repro`, or name a from_pretrained checkpoint)")


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fingerprint(root: Path) -> str:
    """Names, sizes and mtimes of the files under `root`: stat calls only, no reads."""
    import hashlib

    stats = sorted((f.relative_to(root).as_posix(), (st := f.stat()).st_size, st.st_mtime_ns)
                   for f in root.rglob("*") if f.is_file())
    return hashlib.sha256(repr(stats).encode()).hexdigest()


def _hub_ref(name: str) -> ArtifactRef:
    """A checkpoint named by hub id (or a path the loop does not copy): its identity is its name."""
    import hashlib

    return ArtifactRef(kind="policy", sha256=hashlib.sha256(name.encode()).hexdigest(), uri=name,
                       meta={"hub_id": name})


def _initial_policy(store: ArtifactStore, tracker: Tracker, source: str, run_id: str, earlier: list[dict]
                    ) -> ArtifactRef:
    """The champion when the loop starts: registered once as version 1 with alias `champion`.

    A local checkpoint is copied into the store and hashed once per workspace, not every iteration (a 7B
    checkpoint is ~15 GB): an earlier iteration's ref is reused while the files' names, sizes and mtimes are
    unchanged (the check DVC's state database makes before re-hashing). A hub id stays a name (`_hub_ref`)."""
    if Path(source).is_dir():
        fp = _fingerprint(Path(source))
        seen = next((d["start"]["initial"] for d in reversed(earlier) if "start" in d
                     and d["start"]["initial"].get("meta", {}).get("fingerprint") == fp
                     and d["start"]["initial"]["meta"].get("origin") == source), None)
        if seen is not None and store.path(ArtifactRef(**seen)).exists():
            ref = ArtifactRef(**seen)
        else:
            with store.staging_dir() as d:
                import shutil

                shutil.copytree(source, d / "p")
                ref = store.put_dir("policy", d / "p", meta={"iteration": -1, "origin": source, "fingerprint": fp})
        uri = store.uri(ref)
    else:
        ref = _hub_ref(source)
        uri = source
    version = tracker.register(POLICY, ref, uri, run_id, {"alignloop.iteration": "-1", "alignloop.gate": "initial"})
    if tracker.alias(POLICY, "champion") is None:
        tracker.set_alias(POLICY, "champion", version)
    if tracker.alias(POLICY, "head") is None:
        tracker.set_alias(POLICY, "head", str(tracker.alias(POLICY, "champion").version))
    return ref


def _restore_champion(tracker: Tracker, ledger: dict) -> None:
    """A failed iteration must not change the champion or the head: undo a gate's moves made before a later stage
    failed."""
    start = ledger.get("start")
    for alias in ("champion", "head"):
        was, now = (start or {}).get(f"{alias}_version"), tracker.alias(POLICY, alias)
        if was is not None and now is not None and str(now.version) != str(was):
            tracker.set_alias(POLICY, alias, was)


def _start_state(cfg: LoopConfig, ws: Workspace, store: ArtifactStore, tracker: Tracker, i: int, parent: str,
                 ledger: dict) -> dict:
    """Fix the iteration's starting state once (pool, initial policy, champion, training head, reward model in use,
    human labels to add), so a resumed iteration sees exactly the inputs the crashed one saw."""
    import pyarrow.parquet as pq

    from components.human_queue import pending_imports
    from components.prompt_import import pool_version

    if "start" in ledger:
        return ledger["start"]
    earlier = ws.ledgers()
    pool_ref = store.put_table("prompts", conform(pq.read_table(cfg.prompt_pool), "prompts", cfg.prompt_pool),
                               meta={"origin": cfg.prompt_pool, **pool_version(cfg.prompt_pool)})  # md5 = .dvc
    init_ref = _initial_policy(store, tracker, cfg.policy_init, parent, earlier)
    champ, head = tracker.alias(POLICY, "champion"), tracker.head(POLICY)

    def policy_ref(mv) -> ArtifactRef:
        return init_ref if mv.tags[TAG_SHA] == init_ref.sha256 else store.ref("policy", mv.tags[TAG_SHA])
    # the last finished iteration's reward model (a failed iteration produced none)
    prev = next((d for d in reversed(earlier) if d["iteration"] < i and d.get("status") == "finished"), None)
    # human labels imported since (alignloop labels import) join this iteration's preferences, once
    consumed = {h["sha256"] for d in earlier if d["iteration"] != i and d.get("status") != "failed"
                for h in d.get("start", {}).get("human_labels", [])}
    ledger["start"] = {"pool": pool_ref.model_dump(), "initial": init_ref.model_dump(),
                       "champion": policy_ref(champ).model_dump(),
                       "champion_version": str(champ.version),  # int from SQLite, str from a server
                       "head": policy_ref(head).model_dump(), "head_version": str(head.version),
                       "reward_model": prev["outputs"]["reward_model"] if prev else None,
                       "human_labels": [r.model_dump() for r in pending_imports(ws, consumed)],
                       "seed_preferences": _seed_preferences(cfg, store, earlier, i)}
    ws.write_ledger(i, ledger)
    return ledger["start"]


def _seed_preferences(cfg: LoopConfig, store: ArtifactStore, earlier: list[dict], i: int) -> dict | None:
    """label.seed_preferences as a stored preferences table (meta: the file and its md5), the first time an
    iteration starts with it; None once an earlier (not failed) iteration has added the same file."""
    if cfg.label.seed_preferences is None:
        return None
    from components.prompt_import import file_md5
    from components.seed_preferences import read_seed_preferences

    path, md5 = cfg.label.seed_preferences, file_md5(cfg.label.seed_preferences)
    if any((d.get("start", {}).get("seed_preferences") or {}).get("meta", {}).get("md5") == md5 for d in earlier
           if d["iteration"] != i and d.get("status") != "failed"):
        return None
    return store.put_table("preferences", read_seed_preferences(path),
                           meta={"origin": path, "md5": md5, "iteration": -1}).model_dump()


def _stage(name: str, task, record: Callable[[str, float, bool], None], progress: Listener | None, **kwargs):
    """Run one stage task; `record(stage, seconds, cached)` gets its wall time and whether Prefect served it
    from the cache; `progress(stage, "start" | "done", seconds)` is the caller's display."""
    if progress:
        progress(name, "start", 0.0)
    t0 = time.perf_counter()
    state = task.with_options(name=name, task_run_name=name)(**kwargs, return_state=True)
    out = state.result()  # raises what the task raised, as calling it would
    seconds = round(time.perf_counter() - t0, 2)
    if progress:
        progress(name, "done", seconds)
    record(name, seconds, state.name == "Cached")
    return out


@flow(name="alignloop-iteration")
def iteration_flow(config_path: str | list[str], overrides: list[str] | None = None, workspace: str = "workspace",
                   progress: Listener | None = None) -> dict:
    interrupts.rearm()  # over Prefect's SIGTERM bridge, under `alignloop run` (components/interrupts.py)
    cfg = load_config(config_path, overrides or [])
    validate_inputs(cfg, str(config_path))
    ws = Workspace.at(workspace)
    record.check(ws)  # before anything is written: refuse if mlflow.db / data/ lost what the ledgers recorded
    store = ArtifactStore(ws.store)
    tracker = Tracker(ws.tracking_uri, ws.artifact_root, cfg.name)
    i, chash, git_sha = ws.next_iteration(), config_hash(cfg), _git_sha()
    ledger = ws.read_ledger(i) or {"iteration": i, "status": "running", "config_hash": chash, "timings": {}}
    if ledger["config_hash"] != chash:
        raise ValueError(f"iteration {i} was started with config {ledger['config_hash']}, now {chash}: "
                         "resume it with the same config (or remove ledger/iter-*.json to start it afresh)")
    parent = tracker.iteration_run(i, cfg.name, {"config_hash": chash, "git_sha": git_sha},
                                   {"config": cfg.model_dump_json()})
    ctx = t.RunContext(workspace=str(ws.root), workspace_id=ws.instance_id, loop=cfg.name, iteration=i,
                       seed=cfg.seed, parent_run_id=parent, config_hash=chash, git_sha=git_sha)
    try:
        outputs, decision, data_rev = _pipeline(cfg, ctx, _start_state(cfg, ws, store, tracker, i, parent, ledger),
                                                _recorder(ws, i, ledger), progress)
    except BaseException as err:
        # An Exception is a permanent failure (retries spent), not a crash (a crash resumes). An interrupt, or any
        # error after one (e.g. the ephemeral Prefect server, gone with the Ctrl-C, refusing the crash report),
        # leaves the iteration resumable like a crash.
        killed = interrupts.caused_by_interrupt(err)
        if not killed:
            _restore_champion(tracker, ledger)
            ws.write_ledger(i, {**ledger, "status": "failed", "error": repr(err)[-4000:]})
        tracker.end_run(parent, "KILLED" if killed else "FAILED", error=repr(err))
        if killed and isinstance(err, Exception):
            raise interrupts.Interrupted(interrupts.requested() or 2) from err
        raise
    ledger.update(status="finished", outputs={k: v.model_dump() for k, v in outputs.items()}, decision=decision,
                  data_rev=data_rev, report=store.read_json(outputs["eval_report"]),
                  record=record.what_must_exist(ws, tracker, i, parent, data_rev))
    ws.write_ledger(i, ledger)
    tracker.finish_iteration(parent, {f"timing/{k}_s": v for k, v in ledger["timings"].items()},
                             {"alignloop.gate": decision["outcome"]})
    if cfg.report:
        from components.report import write_report  # matplotlib: only once the iteration is done

        tracker.client.log_artifact(parent, str(write_report(ws, i, cfg.name)), "report")
    tracker.end_run(parent)
    return ledger


def _recorder(ws: Workspace, i: int, ledger: dict) -> Callable[[str, float, bool], None]:
    timings = ledger["timings"]

    def record(stage: str, seconds: float, cached: bool) -> None:
        # A stage served from the cache keeps the time it took when it ran, so a resumed iteration's report and
        # timing metrics show compute, not cache lookups; the ledger keeps them across a crash.
        if not (cached and stage in timings):
            timings[stage] = seconds
            ws.write_ledger(i, ledger)

    return record


def _pipeline(cfg: LoopConfig, ctx: t.RunContext, s: dict, record, progress) -> tuple[dict, dict, str]:
    """sample → generate → label → train_reward → train_policy → evaluate → gate → version."""
    ws, i, ref = Workspace.at(ctx.workspace), ctx.iteration, lambda d: ArtifactRef(**d) if d else None
    pool, champion, initial, rm_in_use = ref(s["pool"]), ref(s["champion"]), ref(s["initial"]), ref(s["reward_model"])
    head = ref(s.get("head") or s["champion"])  # what this iteration samples from and trains; the gate compares
    reference = initial if cfg.train_policy.reference == "initial" else head  # the candidate with the champion
    history = [ref(d["outputs"]["preferences"]) for d in ws.ledgers() if d["iteration"] < i
               and d.get("status") == "finished"]
    human = [ref(h) for h in s.get("human_labels", [])]
    ensemble = t.Setup(ensemble=cfg.ensemble, models=cfg.models)
    scoring = t.Setup(ensemble=cfg.ensemble, generate=cfg.generate, models=cfg.models)

    def stage(name, stage_cfg, setup=t.Setup(), **inputs):
        return _stage(name, t.stage_task_run, record, progress, ctx=ctx, stage=name, cfg=stage_cfg,
                      inputs=inputs, setup=setup)

    prompts = stage("sample_prompts", cfg.sample, pool=pool)["prompts"]
    rollouts = stage("generate", cfg.generate, t.Setup(generate=cfg.generate, fanout=cfg.fanout, models=cfg.models),
                     prompts=prompts, policy=head)["rollouts"]
    prefs = stage("label", cfg.label, t.Setup(ensemble=cfg.ensemble, gold=cfg.gold, judge=cfg.label.judge,
                                            models=cfg.models),
                  rollouts=rollouts, reward_model=rm_in_use, human=human,
                  seed_preferences=ref(s.get("seed_preferences")))["preferences"]
    rm = stage("train_reward", cfg.train_reward, ensemble.model_copy(update={"fanout": cfg.fanout,
                                                                             "launch": cfg.train_launch}),
               preferences=[*history, prefs], init=_backbone(cfg, initial), previous=rm_in_use)["reward_model"]
    candidate = stage("train_policy", cfg.train_policy, scoring.model_copy(update={"launch": cfg.train_launch}),
                      preferences=prefs, policy=head, reference=reference, prompts=prompts, pool=pool,
                      reward_model=rm)["candidate"]
    evaluated = stage("evaluate", cfg.evaluate, evaluate_setup(cfg), pool=pool, candidate=candidate,
                      champion=champion, reference=initial, reward_model=rm)
    decision = _stage("gate", t.gate_task, record, progress, ctx=ctx, cfg=cfg.gate,
                      report=evaluated["eval_report"], candidate=candidate)
    outputs = {"prompts": prompts, "rollouts": rollouts, "preferences": prefs, "reward_model": rm,
               "candidate": candidate, "eval_report": evaluated["eval_report"]}
    data_rev = _stage("version", t.version_task, record, progress, ctx=ctx, outputs=outputs)
    return outputs, decision, data_rev


def evaluate_setup(cfg: LoopConfig) -> t.Setup:
    """The evaluate stage's backends: generators and the ensemble (proxy), the gold oracle, and the held-out judge
    of `evaluate.heldout` (its own `evaluate.judge`, or the toy judge for noisy_gold; never `label.judge`)."""
    judge = cfg.evaluate.heldout_judge()
    return t.Setup(ensemble=cfg.ensemble, generate=cfg.generate, gold=cfg.gold, judge=judge, models=cfg.models,
                   **({"judge_metrics": "evaluate/heldout_judge", "judge_seed": "fixed"} if judge else {}))


def _backbone(cfg: LoopConfig, initial: ArtifactRef) -> ArtifactRef:
    """What reward-model members start from: `train_reward.init` (a from_pretrained path or hub id), else the
    initial policy."""
    if cfg.train_reward.init is None:
        return initial
    return _hub_ref(cfg.train_reward.init)


@flow(name="alignloop-continual")
def continual_flow(config_path: str | list[str], overrides: list[str] | None = None, workspace: str = "workspace",
                   iterations: int = 3, progress: Listener | None = None) -> list[dict]:
    """Run `iterations` iterations (an unfinished one, resumed, counts as the first)."""
    interrupts.rearm()
    ws = Workspace.at(workspace)
    target, done = ws.next_iteration() + iterations, []
    while ws.next_iteration() < target:
        done.append(iteration_flow(config_path, overrides, workspace, progress))
    return done
