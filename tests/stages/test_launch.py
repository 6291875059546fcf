"""Training stages under `accelerate launch` (a real subprocess; 1 CPU process, and 2 CPU processes with gloo
data parallelism): the command line carries the config's settings, and a DPO stage launched this way trains and
saves a changed policy where it was asked to, written once (by the main process) and loadable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pytest

from components.backends.launch import accelerate, accelerate_command
from components.config import EnsembleConfig, LaunchConfig, PolicyConfig
from components.contract import Seeds


def _sha(path: Path) -> str:
    return hashlib.sha256((Path(path) / "model.safetensors").read_bytes()).hexdigest()


def test_command_passes_settings_through(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text("{}")
    cfg = LaunchConfig(mode="accelerate", num_processes=2, mixed_precision="bf16", deepspeed_config=str(ds),
                       extra_args=("--main_process_port", "29555"))
    cmd = accelerate_command(cfg, tmp_path / "job.json")
    line = " ".join(cmd)
    assert "--num_processes 2" in line and "--mixed_precision bf16" in line
    assert f"--use_deepspeed --deepspeed_config_file {ds.resolve()}" in line and "--main_process_port 29555" in line
    assert cmd[-3:] == ["-m", "components.backends.launch", str(tmp_path / "job.json")]
    with pytest.raises(FileNotFoundError, match=r"train_launch\.deepspeed_config"):
        accelerate_command(cfg.model_copy(update={"deepspeed_config": str(tmp_path / "missing.json")}), tmp_path)


@pytest.mark.parametrize("processes", [1, 2])
def test_dpo_stage_runs_under_accelerate_launch(tiny_policy, stage_inputs, processes):
    n = 16
    prefs = pa.table({
        "pair_id": [f"pair{i}" for i in range(n)], "prompt": ["review pizza crust :"] * n,
        "chosen": [" the crust was great ."] * n, "rejected": [" the crust was bad bad bad ."] * n,
        "margin": [1.0] * n, "uncertainty": [0.0] * n, "agreement": [1.0] * n, "label_source": ["gold"] * n,
        "iteration": [0] * n})
    inputs = stage_inputs(preferences=prefs, policy=tiny_policy, reference=tiny_policy)
    launch = LaunchConfig(mode="accelerate", num_processes=processes)
    result = accelerate("train_policy", PolicyConfig(batch_size=8, learning_rate=1e-3), inputs, EnsembleConfig(),
                        None, Seeds(0, 0, "train_policy"), launch)
    assert result.metrics["train_policy/pairs"] == n  # metrics came back from the subprocess's rank 0
    out = result.outputs["candidate"].dir
    assert out == inputs.out_dir("candidate")  # where the stage was asked to save it
    assert (out / "model.safetensors").exists() and _sha(out) != _sha(tiny_policy)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # a complete checkpoint, not two ranks' interleaved writes
