"""Helpers for the service tests: a loop config small enough to run whole iterations in subprocesses."""

import os
import shutil
import sys
from pathlib import Path

import yaml

EXE = shutil.which("alignloop", path=str(Path(sys.executable).parent))


def service_config(tmp_path: Path, boot: dict, name: str, **extra) -> Path:
    """The smallest loop that still exercises every stage (and a gate that can promote)."""
    cfg = {
        "name": name, "seed": 5, "policy_init": str(boot["policy"]), "prompt_pool": str(boot["prompts"]),
        "sample": {"n_prompts": 12},
        "generate": {"samples_per_prompt": 2, "max_new_tokens": 12, "batch_size": 64},
        "label": {"seed_gold_pairs": 24, "min_margin_over_std": 0.5},
        "ensemble": {"members": 2},
        "train_reward": {"epochs": 1, "learning_rate": 1e-4},
        "train_policy": {"batch_size": 4},  # ≥ 2 optimizer steps: the first is warm-up (lr 0)
        "evaluate": {"n_prompts": 4, "samples_per_prompt": 2, "bootstrap_resamples": 100, "heldout": "none"},
        "gate": {"min_win_rate_lower": 0.0, "max_kl": 1e6, "max_length_ratio": 100},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def service_env(prefect_url: str, **extra) -> dict[str, str]:
    """A subprocess environment: this session's Prefect server, nothing inherited from a harness."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGNLOOP_")}
    return {**env, "PREFECT_API_URL": prefect_url, **extra}
