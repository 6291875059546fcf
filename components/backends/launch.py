"""Run a training stage under `accelerate launch`, as a subprocess of the stage's Prefect task.

    python -m components.backends.launch JOB.json      (what `accelerate launch` starts on every process)

With `train_launch.mode: accelerate` the generic stage task calls `accelerate(...)`: it writes a job file (stage
name, stage config, the stage's `Inputs` — the store and its input refs, the scratch directory —, the ensemble
and generate settings its backends are built from, its seeds) and runs `accelerate launch [settings] -m
components.backends.launch JOB.json`: accelerate starts `num_processes` workers with the mixed-precision and
DeepSpeed settings in its environment, where transformers' Trainer (under TRL) picks them up. Each worker reads
the job, builds the same backends and calls the same stage function as an in-process run (`STAGES`); rank 0
writes the StageResult's metrics, history and output directories, which the task publishes. The subprocess
boundary is what lets a Prefect worker on a GPU pool own the GPUs for the duration of one stage and release them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from components.config import EnsembleConfig, GenerateConfig, LaunchConfig, ModelsConfig, PolicyConfig, RewardConfig
from components.contract import Backends, Inputs, Output, Seeds, StageResult
from components.stages import train_policy, train_reward

logger = logging.getLogger(__name__)

# the training stages: name -> (run, its config class)
STAGES: dict[str, tuple[Callable[..., StageResult], type[BaseModel]]] = {
    "train_reward": (train_reward.run, RewardConfig),
    "train_policy": (train_policy.run, PolicyConfig),
}
REPO_ROOT = Path(__file__).resolve().parents[2]
STDERR_TAIL = 4000  # characters of a failed subprocess's stderr quoted in the error


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


def accelerate(stage: str, cfg: BaseModel, inputs: Inputs, ensemble: EnsembleConfig, generate: GenerateConfig | None,
               seeds: Seeds, launch: LaunchConfig, models: ModelsConfig = ModelsConfig()) -> StageResult:
    """`stage` on `inputs` in `accelerate launch` workers; its result as rank 0 wrote it."""
    with tempfile.TemporaryDirectory(prefix=f"alignloop-{stage}-") as tmp:
        job, result = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job.write_text(json.dumps({
            "stage": stage, "config": cfg.model_dump(mode="json"), "result": str(result),
            "inputs": {"store_root": str(Path(inputs.store_root).resolve()), "iteration": inputs.iteration,
                       "scratch": inputs.scratch, "store_remote": inputs.store_remote,
                       "refs": {k: [r.model_dump(mode="json") for r in v] if isinstance(v, tuple) else
                                v.model_dump(mode="json") for k, v in inputs.refs.items() if v}},
            "ensemble": ensemble.model_dump(mode="json"),
            "generate": generate.model_dump(mode="json") if generate else None,
            "models": models.model_dump(mode="json"),
            "seeds": [seeds.loop, seeds.iteration, seeds.stage]}))
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        cmd = accelerate_command(launch, job)
        logger.info("launching %s: %s", stage, " ".join(cmd))
        proc = _run_child(cmd, {**os.environ, "PYTHONPATH": path})
        if proc.returncode != 0 or not result.exists():
            raise RuntimeError(f"{stage} under accelerate failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-STDERR_TAIL:]}")
        doc = json.loads(result.read_text())
    outputs = {k: Output(o["kind"], dir=Path(o["dir"]), meta=o["meta"]) for k, o in doc["outputs"].items()}
    return StageResult(outputs=outputs, metrics=doc["metrics"], history=doc["history"])


def _run_child(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """subprocess.run, except that an interrupt (Ctrl-C, SIGTERM: components.interrupts) or any other exception
    while waiting ends accelerate's workers too, not only `accelerate launch` (which would orphan them)."""
    from components.interrupts import kill_tree

    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            out, err = proc.communicate()
        except BaseException:
            kill_tree(proc.pid, include_self=True)
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _run_job(job: dict) -> StageResult:
    from components.artifacts import ArtifactRef
    from components.backends.models import Models

    run, cfg_class = STAGES[job["stage"]]
    i = job["inputs"]
    refs = {k: tuple(ArtifactRef(**r) for r in v) if isinstance(v, list) else ArtifactRef(**v)
            for k, v in i["refs"].items()}
    inputs = Inputs(i["store_root"], refs, i["iteration"], scratch=i["scratch"], store_remote=i["store_remote"])
    models = Models(inputs, ensemble=EnsembleConfig(**job["ensemble"]),
                    generate=GenerateConfig(**job["generate"]) if job["generate"] else GenerateConfig(),
                    models=ModelsConfig(**job.get("models", {})))
    return run(cfg_class.model_validate(job["config"]), inputs, backends=Backends(models=models),
               seed=Seeds(*job["seeds"]))


def main(argv: list[str] | None = None) -> None:
    job_path = Path((argv if argv is not None else sys.argv[1:])[0])
    job = json.loads(job_path.read_text())
    if job["stage"] not in STAGES:
        raise ValueError(f"{job_path}: unknown training stage {job['stage']!r} (known: {', '.join(STAGES)})")
    result = _run_job(job)
    if int(os.environ.get("RANK", "0")) == 0:  # one writer; every rank computed the same result
        Path(job["result"]).write_text(json.dumps({
            "metrics": result.metrics, "history": result.history,
            "outputs": {k: {"kind": o.kind, "dir": str(o.dir), "meta": o.meta} for k, o in result.outputs.items()}}))


if __name__ == "__main__":
    main()
