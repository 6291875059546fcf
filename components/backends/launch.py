"""Run a training stage in the calling process, or under `accelerate launch` as a subprocess.

    python -m components.backends.launch JOB.json      (what `accelerate launch` starts on every process)

`run_stage` is what the Prefect training tasks call. With `train_launch.mode: in_process` it calls the pure stage
function directly. With `mode: accelerate` it writes a job file (stage name, stage config, the store and the
input tables' refs, the stage's other arguments) and runs `accelerate launch [settings] -m
components.backends.launch JOB.json`: accelerate starts `num_processes` workers with the mixed-precision and
DeepSpeed settings in its environment, where transformers' Trainer (under TRL) picks them up. Each worker reads
the job and runs the same pure stage function; rank 0 writes the metrics the task logs. The subprocess boundary
is what lets a Prefect worker on a GPU pool own the GPUs for the duration of one stage and release them after.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

from components.artifacts import ArtifactRef, ArtifactStore
from components.config import LaunchConfig, PolicyConfig, RewardConfig

logger = logging.getLogger(__name__)

# stage name -> (module with `run(cfg, table, **kwargs)`, its config class)
STAGES: dict[str, tuple[str, type[BaseModel]]] = {
    "train_reward": ("components.stages.train_reward", RewardConfig),
    "train_policy": ("components.stages.train_policy", PolicyConfig),
}
REPO_ROOT = Path(__file__).resolve().parents[2]
PATH_ARGS = {"out_dir"}  # stage kwargs that are `Path`s (JSON carries them as strings)
STDERR_TAIL = 4000  # characters of a failed subprocess's stderr quoted in the error


def _call(stage: str, cfg: BaseModel, store: ArtifactStore, tables: list[ArtifactRef], kwargs: dict) -> dict:
    import importlib

    import pyarrow as pa

    if stage not in STAGES:
        raise ValueError(f"launch: unknown training stage {stage!r} (known: {', '.join(STAGES)})")
    module = importlib.import_module(STAGES[stage][0])
    table = pa.concat_tables([store.read_table(ref) for ref in tables])
    return module.run(cfg, table, **{k: Path(v) if k in PATH_ARGS else v for k, v in kwargs.items()})


def accelerate_command(launch: LaunchConfig, job: Path) -> list[str]:
    """The `accelerate launch` command line for `job` under the settings in `launch`."""
    import torch

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
           "--num_processes", str(launch.num_processes), "--mixed_precision", launch.mixed_precision,
           "--dynamo_backend", "no"]
    if not torch.cuda.is_available():
        cmd.append("--cpu")
    elif launch.num_processes > 1 and launch.deepspeed_config is None:
        cmd.append("--multi_gpu")
    if launch.deepspeed_config is not None:
        if not Path(launch.deepspeed_config).is_file():
            raise FileNotFoundError(f"train_launch.deepspeed_config: {launch.deepspeed_config} is not a file")
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(Path(launch.deepspeed_config).resolve())]
    return [*cmd, *launch.extra_args, "-m", "components.backends.launch", str(job)]


def run_stage(stage: str, cfg: BaseModel, launch: LaunchConfig, store: ArtifactStore, tables: list[ArtifactRef],
              **kwargs) -> dict[str, float]:
    """Run training stage `stage` on the concatenation of `tables`; returns its metrics."""
    if launch.mode == "in_process":
        return _call(stage, cfg, store, tables, kwargs)
    with tempfile.TemporaryDirectory(prefix=f"alignloop-{stage}-") as tmp:
        job, metrics = Path(tmp) / "job.json", Path(tmp) / "metrics.json"
        job.write_text(json.dumps({
            "stage": stage, "config": cfg.model_dump(mode="json"), "store": str(Path(store.root).resolve()),
            "tables": [ref.model_dump(mode="json") for ref in tables], "metrics": str(metrics),
            "kwargs": {k: str(v) if k in PATH_ARGS else v for k, v in kwargs.items()}}))
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        cmd = accelerate_command(launch, job)
        logger.info("launching %s: %s", stage, " ".join(cmd))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not metrics.exists():
            raise RuntimeError(f"{stage} under accelerate failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-STDERR_TAIL:]}")
        return json.loads(metrics.read_text())


def main(argv: list[str] | None = None) -> None:
    job_path = Path((argv if argv is not None else sys.argv[1:])[0])
    job = json.loads(job_path.read_text())
    stage = job["stage"]
    if stage not in STAGES:
        raise ValueError(f"{job_path}: unknown training stage {stage!r} (known: {', '.join(STAGES)})")
    cfg = STAGES[stage][1].model_validate(job["config"])
    tables = [ArtifactRef(**ref) for ref in job["tables"]]
    metrics = _call(stage, cfg, ArtifactStore(job["store"]), tables, job["kwargs"])
    if int(os.environ.get("RANK", "0")) == 0:  # one writer; every rank computed the same metrics
        Path(job["metrics"]).write_text(json.dumps(metrics))


if __name__ == "__main__":
    main()
