"""A real chat model end to end with no gold oracle: tiny Llama-3- and Qwen2-architecture models (random weights,
BPE tokenizers trained here, chat templates), chat prompts brought in with `alignloop prompts import`, iteration 0
cold-started from a pretrained reward model plus an imported TRL-format preference file; two iterations through
Prefect, checked with MLflow, DVC and `alignloop lineage`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXE = shutil.which("alignloop", path=str(Path(sys.executable).parent))
TOPICS = ["the sea", "a cat", "rain", "the moon", "coffee", "trains", "a garden", "winter", "music", "bread",
          "the city", "a river"]


def _chat_prompts(path: Path) -> Path:
    rows = []
    for k, topic in enumerate(TOPICS * 2):
        turns = [{"role": "user", "content": f"Write one short sentence about {topic}{'.' if k < 12 else '!'}"}]
        if k % 3 == 0:
            turns.insert(0, {"role": "system", "content": "You answer in one sentence."})
        rows.append({"messages": turns, "source": "chat" if k % 2 else "poems"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _seed_preferences(path: Path) -> Path:
    """TRL conversational preference rows (prompt = messages, chosen/rejected = one assistant turn)."""
    rows = [{"prompt": [{"role": "user", "content": f"Write one short sentence about {t}."}],
             "chosen": [{"role": "assistant", "content": f"{t.capitalize()} is calm and bright."}],
             "rejected": [{"role": "assistant", "content": f"{t} {t} {t} no no no"}]} for t in TOPICS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _loop_config(tmp: Path, policy: Path, rm: Path, pool: Path, prefs: Path) -> Path:
    import yaml

    cfg = {
        "name": "chatloop", "seed": 0, "policy_init": str(policy), "prompt_pool": str(pool), "gold": None,
        "sample": {"n_prompts": 8},
        "generate": {"samples_per_prompt": 4, "max_new_tokens": 12, "batch_size": 32},
        "label": {"seed_preferences": str(prefs), "min_margin_over_std": 0.0, "truncated": "penalise"},
        # iteration 0 scores with the pretrained RM; its two trained members start from it
        "ensemble": {"pretrained": [{"path": str(rm), "frozen": False}], "members": 2},
        "train_reward": {"epochs": 1, "learning_rate": 1e-4, "batch_size": 8},
        "train_policy": {"batch_size": 4, "learning_rate": 1e-4, "probe": {"prompts": 2, "samples": 2,
                                                                           "max_new_tokens": 8}},
        "evaluate": {"n_prompts": 4, "samples_per_prompt": 2, "bootstrap_resamples": 200, "heldout": "none",
                     "regression_set": "none"},
    }
    path = tmp / "chat.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module", params=["llama3", "qwen2"])
def chat_loop(request, tmp_path_factory, prefect_backend):
    from components.toy.chat_models import build_chat_lm, build_reward_model
    from flows.iteration import continual_flow

    tmp = tmp_path_factory.mktemp(f"chat-{request.param}")
    policy = build_chat_lm(request.param, tmp / "policy", dtype="bfloat16")
    rm = build_reward_model(request.param, tmp / "rm")
    pool = tmp / "pool.parquet"
    r = subprocess.run([EXE, "prompts", "import", str(_chat_prompts(tmp / "prompts.jsonl")), "--out", str(pool),
                        "--eval-fraction", "0.34"], capture_output=True, text=True, timeout=300, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = _loop_config(tmp, policy, rm, pool, _seed_preferences(tmp / "seed-prefs.jsonl"))
    ws = tmp / "ws"
    return request.param, cfg, ws, continual_flow(str(cfg), [], str(ws), 2)


def test_two_chat_iterations_finish_without_gold(chat_loop):
    from mlflow import MlflowClient

    from components.workspace import Workspace

    _, _, ws, ledgers = chat_loop
    assert [d["status"] for d in ledgers] == ["finished", "finished"]
    client = MlflowClient(Workspace.at(ws).tracking_uri)
    exp = client.get_experiment_by_name("chatloop")
    parents = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags["alignloop.stage"] == "iteration"]
    assert sorted(r.data.tags["alignloop.iteration"] for r in parents) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in parents)
    assert len(client.search_model_versions("name = 'policy'")) == 3  # initial + two candidates
    # iteration 0 labelled with the pretrained RM (no gold anywhere) and took the imported seed pairs
    label0 = next(r for r in client.search_runs([exp.experiment_id])
                  if r.data.tags["alignloop.stage"] == "label" and r.data.tags["alignloop.iteration"] == "0")
    assert label0.data.metrics["label/kept/rm_ensemble"] > 0 and label0.data.metrics["label/kept/imported"] == 12
    assert "label/oriented_correctly" not in label0.data.metrics


def test_candidates_stay_bf16(chat_loop):
    from safetensors import safe_open

    from components.artifacts import ArtifactRef, ArtifactStore
    from components.workspace import Workspace

    _, _, ws, ledgers = chat_loop
    store = ArtifactStore(Workspace.at(ws).store)
    for d in ledgers:
        ckpt = store.path(ArtifactRef(**d["outputs"]["candidate"]))
        with safe_open(str(next(Path(ckpt).glob("*.safetensors"))), "pt") as f:
            dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        assert dtypes == {"BF16"}, (d["iteration"], dtypes)


def test_lineage_names_the_imported_prompt_and_preference_files(chat_loop):
    import dvc.api

    from components.artifacts import ArtifactRef
    from components.workspace import Workspace

    _, cfg, ws, ledgers = chat_loop
    r = subprocess.run([EXE, "lineage", "policy@2", "--json", "--workspace", str(ws)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    text = r.stdout
    assert "pool.parquet" in text and "seed-prefs.jsonl" in text
    w = Workspace.at(ws)
    for d in ledgers:  # each iteration's preferences are a DVC version of the workspace's data repo
        ref = ArtifactRef(**d["outputs"]["preferences"])
        with dvc.api.open(f"iterations/iter-{d['iteration']:04d}/preferences.parquet", repo=str(w.data_repo),
                          rev=w.data_tag(d["iteration"]), mode="rb") as f:
            assert len(f.read()) > 0 and ref.sha256
