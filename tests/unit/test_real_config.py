"""configs/real/qwen2.5-1.5b.yaml, the real-model example: it validates with its hub ids and paths replaced by tiny
local chat models (components/toy/chat_models.py), every key it tells the user to edit exists, and it is not the
embedded default, so the CLI leaves HF_HUB_OFFLINE / OMP_NUM_THREADS alone for it (issue 13, item 7)."""

import os
import re
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from components.config import load_config
from components.env import TOY_DEFAULTS, offline_for

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "configs/real/qwen2.5-1.5b.yaml"
# the keys the file marks `# EDIT n` (what a user changes for their own model, data and judges)
USER_KEYS = ["policy_init", "prompt_pool", "ensemble.pretrained", "label.seed_preferences", "label.judge",
             "evaluate.judge"]


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        assert isinstance(tree, dict) and part in tree, f"{REAL.name}: no key {dotted}"
        tree = tree[part]
    return tree


def test_every_key_a_user_is_told_to_edit_exists_and_is_marked():
    text = REAL.read_text()
    tree = yaml.safe_load(text)
    for key in USER_KEYS:
        _get(tree, key)
    marks = re.findall(r"# EDIT (\d)", text)
    assert sorted(map(int, marks)) == list(range(1, len(USER_KEYS) + 1)), marks
    cfg = load_config(REAL)  # as shipped: hub ids are names, nothing is downloaded to validate
    assert cfg.gold is None and cfg.generate.backend == "vllm" and cfg.models.dtype == "bfloat16"
    assert cfg.label.judge.backend == "openai" and cfg.evaluate.heldout == "judge"
    assert (REPO / cfg.label.judge.rubric).exists() and (REPO / cfg.evaluate.judge.rubric).exists()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from components.toy.chat_models import build_chat_lm, build_reward_model

    root = tmp_path_factory.mktemp("real")
    return {"policy": Path(build_chat_lm("qwen2", root / "policy")),
            "rm": Path(build_reward_model("qwen2", root / "rm")), "root": root}


def _pool(path: Path) -> Path:
    import pyarrow.parquet as pq

    from components.chat import prompt_columns
    from components.schemas import conform

    prompts = [[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}] for i in range(12)]
    table = pa.table({"prompt_id": [f"p{i}" for i in range(12)], "split": ["train"] * 8 + ["eval"] * 4,
                      "source": ["test"] * 12,
                      **prompt_columns(prompts)})
    pq.write_table(conform(table, "prompts", source="test pool"), path)
    return path


def test_the_real_config_validates_on_tiny_local_models(tiny_models):
    from flows.iteration import validate_inputs

    pool = _pool(tiny_models["root"] / "chat.parquet")
    overrides = [f"policy_init={tiny_models['policy']}", f"prompt_pool={pool}",
                 f"ensemble.pretrained=[{{path: {tiny_models['rm']}, frozen: true}}, "
                 f"{{path: {tiny_models['rm']}, frozen: false}}]",
                 "sample.n_prompts=4", "evaluate.n_prompts=2", "evaluate.judge.budget=8"]
    cfg = load_config(REAL, overrides)
    assert cfg.policy_init == str(tiny_models["policy"])
    assert [p.path for p in cfg.ensemble.pretrained] == [str(tiny_models["rm"])] * 2
    validate_inputs(cfg, str(REAL))  # pool, policy_init's config.json, settings: what `alignloop run` checks first
    assert not offline_for(cfg)


def test_only_the_embedded_default_gets_the_toy_environment(monkeypatch, tmp_path):
    from flows.common import quiet_env
    from flows.deploy import run_env

    for k in TOY_DEFAULTS:
        monkeypatch.delenv(k, raising=False)
    real, toy = load_config(REAL), load_config(REPO / "configs/tiny.yaml")
    assert offline_for(toy) and not offline_for(real)
    assert not set(TOY_DEFAULTS) & set(run_env(tmp_path, offline_for(real)))
    assert run_env(tmp_path, offline_for(toy))["HF_HUB_OFFLINE"] == "1"
    saved = dict(os.environ)
    try:
        quiet_env(tmp_path, offline=offline_for(real))
        assert not set(TOY_DEFAULTS) & set(os.environ)
        os.environ["OMP_NUM_THREADS"] = "8"  # what the user exported wins, even for the toy
        quiet_env(tmp_path, offline=offline_for(toy))
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["OMP_NUM_THREADS"] == "8"
    finally:  # quiet_env also points Prefect's results at tmp_path: the session's setting comes back
        os.environ.clear()
        os.environ.update(saved)
