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
    active. Both the plain loop and the Prefect tasks call those functions through their module attribute (the
    training tasks via `launch.run_stage` → `importlib`), so wrapping the attribute times exactly the shared
    computation, in-process, on either side; the rest of a flow run is what orchestration adds."""

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


def plain_iteration(cfg, work: Path, iteration: int = 0) -> dict[str, float]:
    """The first iteration's stage functions called in a plain loop: tables in memory, models in `work`,
    no Prefect, MLflow, DVC, store or ledger. Returns seconds per stage (same keys as the flow's timings)."""
    import pyarrow.parquet as pq

    from components.schemas import conform
    from components.stages import evaluate, generate, label, sample_prompts, train_policy, train_reward
    from components.toy.gold import gold_reward

    t: dict[str, float] = {}
    clock = time.perf_counter
    s = clock()
    pool = conform(pq.read_table(cfg.prompt_pool), "prompts", cfg.prompt_pool)
    prompts = sample_prompts.run(cfg.sample, pool, iteration=iteration, seed=cfg.seed)
    t["sample_prompts"], s = clock() - s, clock()
    rollouts, _ = generate.run(cfg.generate, prompts, cfg.policy_init, policy_sha="plain",
                               seed=cfg.seed * 100_003 + iteration)
    t["generate"], s = clock() - s, clock()
    prefs = label.run(cfg.label, rollouts, reward_models=None, gold=gold_reward, iteration=iteration,
                      seed=cfg.seed).preferences
    t["label"], s = clock() - s, clock()
    train_reward.run(cfg.train_reward, prefs, init_path=cfg.policy_init, out_dir=work / "rm", seed=cfg.seed)
    members = [str(p) for p in sorted((work / "rm").glob("member-*"))]
    t["train_reward"], s = clock() - s, clock()
    heldout = evaluate.heldout_prompts(pool, cfg.train_policy.probe_prompts, cfg.seed)["prompt"].to_pylist()
    train_policy.run(cfg.train_policy, prefs, prompts=prompts["prompt"].to_pylist(), heldout_prompts=heldout,
                     policy_path=cfg.policy_init, ref_path=cfg.policy_init, reward_models=members,
                     aggregation=cfg.label.aggregation, uw_lambda=cfg.label.uw_lambda, out_dir=work / "policy",
                     seed=cfg.seed + iteration)
    t["train_policy"], s = clock() - s, clock()
    evaluate.run(cfg.evaluate, cfg.generate, evaluate.heldout_prompts(pool, cfg.evaluate.n_prompts, cfg.seed),
                 candidate_path=str(work / "policy"), champion_path=cfg.policy_init, ref_path=cfg.policy_init,
                 reward_models=members, gold=gold_reward, aggregation=cfg.label.aggregation,
                 uw_lambda=cfg.label.uw_lambda, seed=cfg.seed)
    t["evaluate"] = clock() - s
    return t
