"""Shared by the benchmarks: environment, the embedded-default data, a small layered config, the plain loop.

Every benchmark measures the things it compares side by side in one process run (interleaved where it
repeats), prints a human-readable table, and ends with one JSON line (`{"benchmark": ..., ...}`) for machines.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "benchmarks" / "small.yaml"
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/ first, not the repo root
    sys.path.insert(0, str(REPO))


def setup_env(root: Path) -> None:
    """Offline, telemetry off, one thread; an isolated Prefect home (ephemeral server DB) under `root`.
    Must run before prefect is imported."""
    from components.env import apply_defaults

    apply_defaults(offline=True, quiet=True, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    os.environ["PREFECT_HOME"] = str(root / "prefect-home")
    os.environ["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] = "true"
    os.environ.pop("PREFECT_API_URL", None)  # ephemeral server: its start-up is what we separate out


def use_workspace(ws: Path) -> None:
    """Persisted task results in the workspace (as `alignloop run` does): what lets a re-run skip stages."""
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(ws / "prefect")


def run_from_snapshot(argv: list[str]) -> None:
    """Re-execute this benchmark from a frozen copy of the code, unless already doing so.

    Cache keys include a hash of components/ (a code change must recompute stages), so a benchmark that spans
    several processes would see spurious recomputation if the checkout changed under it meanwhile (it does on a
    shared development machine); the copy keeps every process of one run on the same code."""
    import shutil

    if os.environ.get("BENCH_SNAPSHOT"):
        return
    snap = scratch("code")
    for name in ("components", "tasks", "flows", "infra", "benchmarks", "configs"):
        shutil.copytree(REPO / name, snap / name, ignore=shutil.ignore_patterns("__pycache__"))
    os.environ["BENCH_SNAPSHOT"] = str(snap)
    os.environ.setdefault("BENCH_DATA", str(REPO / "data"))
    script = snap / "benchmarks" / Path(argv[0]).name
    os.execv(sys.executable, [sys.executable, str(script), *argv[1:]])


def scratch(name: str) -> Path:
    root = Path(os.environ.get("BENCH_TMP", "/tmp/benchmarks"))
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))


def bootstrap() -> dict[str, Path]:
    """The embedded default's prompt pool and SFT policy: the repo's `dvc repro` outputs (read only) if built,
    else a small build under the scratch directory."""
    data = Path(os.environ.get("BENCH_DATA", REPO / "data"))
    policy, pool = data / "bootstrap/policy", data / "prompts/pool.parquet"
    if (policy / "config.json").exists() and pool.exists():
        return {"policy": policy, "prompts": pool}
    from components.toy.bootstrap import build_all

    return build_all(scratch("bootstrap"), {"train": {"steps": 300}, "corpus": {"n_reviews": 4000}})


def config_files(out_dir: Path, small: bool = True, name: str = "bench", **overrides) -> list[str]:
    """configs/tiny.yaml (+ benchmarks/small.yaml if `small`) + a file `<name>.yaml` with the data paths and
    `overrides` (nested dicts)."""
    boot = bootstrap()
    extra = {"policy_init": str(boot["policy"]), "prompt_pool": str(boot["prompts"]), **overrides}
    path = out_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(extra))
    return [str(REPO / "configs/tiny.yaml"), *([str(SMALL)] if small else []), str(path)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(name: str, result: dict) -> None:
    print(json.dumps({"benchmark": name, "machine": machine(), **result}, sort_keys=True, default=float))


def machine() -> str:
    import platform

    load = os.getloadavg()[0]
    return f"{platform.machine()} {os.cpu_count()} cpu, py{platform.python_version()}, load1={load:.1f}"


def warm_imports() -> float:
    """Import the ML stack once before timing anything, so neither side of a comparison pays for it."""
    s = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import components.backends.trainers  # noqa: F401

    return time.perf_counter() - s


class StageClock:
    """Seconds spent inside the pure stage functions (`components.stages.<stage>.run`), summed per stage while
    active. The plain loop (`PlainStages`) and the generic Prefect stage task (`tasks.stages.stage_task_run`,
    through `STAGES[stage].run`) both look a stage's `run` up on its module at call time, so wrapping the module
    attribute times exactly the shared computation, in-process, on either side; the rest of a flow run is what
    orchestration adds. (`train_launch.mode: accelerate` runs the training stages in subprocesses, which this
    clock cannot see: the benchmarks use the default, in_process.)"""

    STAGES = ("sample_prompts", "generate", "label", "train_reward", "train_policy", "evaluate")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __enter__(self) -> StageClock:
        import importlib

        self._saved = []
        for name in self.STAGES:
            module = importlib.import_module(f"components.stages.{name}")
            self._saved.append((module, module.run))
            module.run = self._timed(name, module.run)
        return self

    def _timed(self, name, fn):
        def timed(*args, **kwargs):
            s = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - s
        return timed

    def __exit__(self, *exc) -> None:
        for module, fn in self._saved:
            module.run = fn


def prepare_workspace(ws: Path, loop: str) -> None:
    """One-time per-loop set-up (MLflow database + experiment, DVC repo): paid once per workspace, not per
    iteration, so the overhead benchmarks do it outside the timed iteration."""
    from components.lineage import Tracker
    from components.versioning import DataRepo
    from components.workspace import Workspace

    w = Workspace.at(ws)
    Tracker(w.tracking_uri, w.artifact_root, loop)
    DataRepo(w.data_repo, str(w.dvc_remote)).init()


def checkpoint_ref(path: str | Path):
    """A checkpoint the loop starts from, named by its path and not copied into the store (what the flow does
    for a hub id): `Inputs.path` hands the path to the stage as it is."""
    import hashlib

    from components.artifacts import ArtifactRef

    path = str(path)
    return ArtifactRef(kind="policy", sha256=hashlib.sha256(path.encode()).hexdigest(), uri=path,
                       meta={"hub_id": path})


class PlainStages:
    """The pure stage functions called directly, as `tasks.stages.stage_task_run` calls them, without Prefect,
    MLflow, DVC or a ledger: inputs resolved through an `ArtifactStore` rooted at `work` (the stage contract
    reads every input through one), backends built as `tasks.stages.backends_for` builds them, seeds
    `Seeds(loop seed, iteration, stage)`.

    Outputs are written where the stage's next reader finds them, by name (`<work>/runs/<n>-<stage>/`), neither
    content-hashed nor copied into the content-addressed layout, and the initial policy is not copied either
    (`checkpoint_ref`): publishing, hashing and registering stay on the flow's side of bench_orchestration's
    comparison, as when the plain loop kept its tables in memory."""

    def __init__(self, cfg, work: Path, *, seed: int | None = None, judge_cache: bool = True):
        from components.artifacts import ArtifactStore

        self.cfg, self.work = cfg, Path(work)
        self.seed = cfg.seed if seed is None else seed
        self.store = ArtifactStore(self.work)
        self.judge_cache = self.work / "judge-cache" if judge_cache else None
        self._n = 0

    def put_table(self, kind: str, table, name: str | None = None, meta: dict | None = None):
        """A table into the store under a readable name (no hash): an input of a later stage."""

        import pyarrow.parquet as pq

        from components.artifacts import ArtifactRef, digest

        self._n += 1
        rel = Path("tables") / f"{self._n:03d}-{name or kind}.parquet"
        (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, self.work / rel)
        # the content hash the store verifies on every read (a readable name, not the content-addressed layout)
        return ArtifactRef(kind=kind, sha256=digest(self.work / rel)[0], uri=str(rel),
                           meta={"rows": table.num_rows, **(meta or {})})

    def backends(self, stage: str, inputs, iteration: int, *, gold: bool, judge):
        """What `backends_for` builds for `stage`: its models (aggregated by `ensemble:`, sampling by
        `generate:`), the toy gold oracle where `gold`, the judge of `judge` (a JudgeConfig; None or backend none:
        no judge) with its cache under `work`; fan-out maps run here, one job after another."""
        from components.backends.models import Models
        from components.contract import Backends, Seeds
        from components.toy.gold import GoldOracle

        oracle = GoldOracle() if gold else None
        runner = None
        if judge is not None and judge.backend != "none":
            from components.judge import make_runner

            runner = make_runner(judge, gold=oracle, seed=Seeds(self.seed, iteration, stage).sub("judge"),
                                 cache_dir=self.judge_cache)
        return Backends(models=Models(inputs, ensemble=self.cfg.ensemble, generate=self.cfg.generate,
                                         models=self.cfg.models), gold=oracle,
                        judge=runner)

    def call(self, stage: str, stage_cfg=None, *, iteration: int, gold: bool = False, judge=None, **refs):
        """One stage function on the named input refs (a list = a tuple input, None = absent) -> its StageResult,
        outputs not yet written. `stage_cfg` defaults to the stage's section of the loop config."""
        import importlib

        from components.contract import Inputs, Seeds

        self._n += 1
        scratch = self.work / "runs" / f"{self._n:03d}-{stage}"
        scratch.mkdir(parents=True)
        present = {k: (tuple(v) if isinstance(v, list) else v) for k, v in refs.items() if v}
        inputs = Inputs(str(self.work), present, iteration, scratch=str(scratch))
        if stage_cfg is None:
            stage_cfg = getattr(self.cfg, {"sample_prompts": "sample"}.get(stage, stage))
        run = importlib.import_module(f"components.stages.{stage}").run  # looked up per call: StageClock wraps it
        return run(stage_cfg, inputs, backends=self.backends(stage, inputs, iteration, gold=gold, judge=judge),
                   seed=Seeds(self.seed, iteration, stage))

    def run(self, stage: str, stage_cfg=None, *, iteration: int, gold: bool = False, judge=None, **refs):
        """`call`, then its outputs written where a later stage reads them -> (output refs, result)."""
        import json

        result = self.call(stage, stage_cfg, iteration=iteration, gold=gold, judge=judge, **refs)
        out = {}
        for name, o in result.outputs.items():
            if o.table is not None:
                out[name] = self.put_table(o.kind, o.table, name, o.meta)
            elif o.dir is not None:
                out[name] = self._ref(o.kind, o.dir, o.meta)
            else:
                path = self.work / "docs" / f"{self._n:03d}-{name}.json"
                path.parent.mkdir(exist_ok=True)
                path.write_text(json.dumps(o.doc, default=str))
                out[name] = self._ref(o.kind, path, o.meta)
        return out, result

    def path(self, ref) -> str:
        """Where a model output (or `checkpoint_ref`) is, as `Inputs.path` resolves it."""
        return ref.meta["hub_id"] if "hub_id" in ref.meta else str(self.store.path(ref))

    def _ref(self, kind: str, path: Path, meta: dict):

        from components.artifacts import ArtifactRef, digest

        rel = str(Path(path).relative_to(self.work))
        return ArtifactRef(kind=kind, sha256=digest(Path(path))[0], uri=rel, meta=meta)


def plain_iteration(cfg, work: Path, iteration: int = 0) -> dict[str, float]:
    """The first iteration's stage functions called in a plain loop (`PlainStages`): no Prefect, MLflow, DVC,
    content-addressed publishing or ledger. Returns seconds per stage (same keys as the flow's timings)."""
    import pyarrow.parquet as pq

    from components.schemas import conform

    t: dict[str, float] = {}
    clock = time.perf_counter
    s = clock()
    plain = PlainStages(cfg, work)
    pool = plain.put_table("prompts", conform(pq.read_table(cfg.prompt_pool), "prompts", cfg.prompt_pool), "pool")
    policy = checkpoint_ref(cfg.policy_init)
    i = iteration
    prompts = plain.run("sample_prompts", iteration=i, pool=pool)[0]["prompts"]
    t["sample_prompts"], s = clock() - s, clock()
    rollouts = plain.run("generate", iteration=i, prompts=prompts, policy=policy)[0]["rollouts"]
    t["generate"], s = clock() - s, clock()
    prefs = plain.run("label", iteration=i, gold=cfg.gold == "toy", judge=cfg.label.judge,
                      rollouts=rollouts)[0]["preferences"]
    t["label"], s = clock() - s, clock()
    init = checkpoint_ref(cfg.train_reward.init) if cfg.train_reward.init else policy
    rm = plain.run("train_reward", iteration=i, preferences=[prefs], init=init)[0]["reward_model"]
    t["train_reward"], s = clock() - s, clock()
    candidate = plain.run("train_policy", iteration=i, preferences=prefs, policy=policy, reference=policy,
                          prompts=prompts, pool=pool, reward_model=rm)[0]["candidate"]
    t["train_policy"], s = clock() - s, clock()
    plain.run("evaluate", iteration=i, gold=cfg.gold == "toy", pool=pool, candidate=candidate, champion=policy,
              reference=policy, reward_model=rm)
    t["evaluate"] = clock() - s
    return t
