"""Cold start without gold and pretrained reward models, on tiny Llama-3- and Qwen2-style models (random weights,
BPE tokenizers trained here): label with a frozen pretrained RM, with imported TRL preferences only, with a judge
only; the config error when gold is null and nothing else can label; reward models score with their own chat
template; the ensemble holds one model at a time; a frozen RM is never trained."""

import hashlib
import json
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from components.config import ConfigError, EnsembleConfig, LabelConfig, LoopConfig, RewardConfig, load_config
from components.contract import Backends, Seeds

CHATS = [[{"role": "user", "content": "Write a short poem about the sea."}],
         [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "What is the capital of France?"}]]
ANSWERS = ["Paris is the capital.", "The sea is blue.", "Thank you!", "no no no", "Use sorted(items)."]


@pytest.fixture(scope="module")
def rms(tmp_path_factory):
    """{style: (reward model dir, chat LM dir)} for both styles."""
    from components.toy.chat_models import build_chat_lm, build_reward_model

    root = tmp_path_factory.mktemp("cold")
    return {s: (build_reward_model(s, root / f"rm-{s}"), build_chat_lm(s, root / f"lm-{s}"))
            for s in ("qwen2", "llama3")}


def _chat_rollouts(n_per: int = 4, truncate: int = 0) -> pa.Table:
    from components.chat import prompt_columns

    prompts = [c for c in CHATS for _ in range(n_per)]
    completions = [ANSWERS[k % len(ANSWERS)] + ("" if k < n_per else " again") for k in range(len(prompts))]
    cols = prompt_columns(prompts)
    return pa.table({"rollout_id": [f"r{k}" for k in range(len(prompts))],
                     "prompt_id": [f"p{k // n_per}" for k in range(len(prompts))], **cols,
                     "completion": completions,
                     "completion_ids": pa.array([[7, k, 2] for k in range(len(prompts))], pa.list_(pa.int32())),
                     "finish_reason": ["length" if k < truncate else "stop" for k in range(len(prompts))]})


def _models(inputs, **ensemble):
    from components.backends.models import Models

    return Models(inputs, ensemble=EnsembleConfig(**ensemble))


def _run_label(cfg, inputs, models=None, judge=None):
    from components.stages import label

    out = label.run(cfg, inputs, backends=Backends(models=models, judge=judge), seed=Seeds(0, 0, "label"))
    return out.outputs["preferences"].table, out.metrics


@pytest.mark.parametrize("style", ["qwen2", "llama3"])
def test_label_with_a_frozen_pretrained_rm_and_no_gold(rms, style, stage_inputs):
    inputs = stage_inputs(rollouts=_chat_rollouts(truncate=2))
    models = _models(inputs, pretrained=[{"path": str(rms[style][0])}], members=0)
    table, m = _run_label(LabelConfig(min_margin_over_std=0, truncated="drop"), inputs, models)
    assert m["label/kept/rm_ensemble"] == table.num_rows == 2 and m["label/truncated"] == 2
    rows = table.to_pylist()
    assert all(r["messages"] in CHATS and r["chosen_ids"] and r["chosen_ids"][0] == 7 for r in rows)
    assert all(r["chosen_ids"][1] >= 2 and r["rejected_ids"][1] >= 2 for r in rows[:1])  # truncated r0, r1 dropped
    assert rows[0]["prompt"].startswith("User: ") or rows[0]["prompt"].startswith("System: ")


def test_seed_preferences_only(tmp_path, stage_inputs):
    from components.seed_preferences import read_seed_preferences

    path = tmp_path / "seed.jsonl"
    rows = [{"prompt": CHATS[0], "chosen": [{"role": "assistant", "content": "Waves."}],
             "rejected": [{"role": "assistant", "content": "no"}]},
            {"chosen": [*CHATS[1], {"role": "assistant", "content": "Paris."}],  # implicit prompt
             "rejected": [*CHATS[1], {"role": "assistant", "content": "Rome."}]},
            {"prompt": "review pizza :", "chosen": " great .", "rejected": " bad ."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seed = read_seed_preferences(path)
    assert seed["messages"].to_pylist()[:2] == CHATS and seed["chosen"].to_pylist() == ["Waves.", "Paris.", " great ."]
    inputs = stage_inputs(rollouts=_chat_rollouts(), seed_preferences=seed)
    table, m = _run_label(LabelConfig(), inputs, _models(inputs, members=1))
    assert m["label/kept/imported"] == table.num_rows == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": CHATS[0], "chosen": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'rejected'"):
        read_seed_preferences(bad)
    bad.write_text(json.dumps({"prompt": CHATS[0], "chosen": [{"role": "user", "content": "x"}],
                               "rejected": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: chosen must be a string or \[one assistant message\]"):
        read_seed_preferences(bad)


class FakeJudge:
    """The judge protocol the label stage uses: prefers the shorter response, records every call."""

    def __init__(self):
        self.calls, self.transcript = [], []

    def judge_pairs(self, pair_ids, prompts, a, b):
        self.calls += list(zip(prompts, a, b))
        return ["a" if len(x) < len(y) else "b" if len(y) < len(x) else "tie" for x, y in zip(a, b)]

    def stats(self):
        return {"label/judge_calls": 2 * len(self.calls)}

    def health_warning(self):
        return None


def test_judge_only_cold_start(stage_inputs):
    inputs = stage_inputs(rollouts=_chat_rollouts())
    judge = FakeJudge()
    table, m = _run_label(LabelConfig(judge={"backend": "none", "budget": 8}), inputs, _models(inputs, members=1),
                          judge)
    assert len(judge.calls) == 4 and all(p.startswith(("User:", "System:")) for p, _, _ in judge.calls)  # text
    assert m["label/kept/judge"] == table.num_rows > 0
    assert all(len(c) < len(r) for c, r in zip(table["chosen"].to_pylist(), table["rejected"].to_pylist()))


def test_nothing_to_label_is_an_error(stage_inputs):
    inputs = stage_inputs(rollouts=_chat_rollouts())
    with pytest.raises(ValueError, match=r"ensemble\.pretrained, label\.seed_preferences"):
        _run_label(LabelConfig(), inputs, _models(inputs, members=1))


def test_gold_null_without_cold_start_is_a_config_error(tmp_path):
    base = "gold: null\nevaluate: {heldout: none, regression_set: none}\n"
    (tmp_path / "c.yaml").write_text(base)
    with pytest.raises(ConfigError, match=r"gold: null needs a cold start: set ensemble.pretrained.*"
                                          r"label.seed_preferences.*label.judge"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "ok.yaml").write_text(base + "label: {seed_preferences: s.jsonl}\n")
    assert load_config(tmp_path / "ok.yaml").label.seed_preferences == "s.jsonl"
    with pytest.raises(ValueError, match="at least one frozen"):
        LoopConfig(ensemble={"members": 0})


def test_reward_scores_use_the_rms_own_template(rms):
    from transformers import AutoTokenizer

    from components.backends import hf

    rm_path, lm_path = rms["qwen2"][0], rms["llama3"][1]
    model, rm_tok = hf.load_reward_model(str(rm_path))
    lm_tok = AutoTokenizer.from_pretrained(str(lm_path))
    [ids] = hf.scored_ids(rm_tok, [CHATS[0]], [ANSWERS[0]])
    text = rm_tok.decode(ids)
    assert "<|im_start|>assistant\nParis is the capital.<|im_end|>" in text and "<|start_header_id|>" not in text
    assert ids != hf.scored_ids(lm_tok, [CHATS[0]], [ANSWERS[0]])[0]
    import torch

    with torch.no_grad():
        direct = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert hf.reward_scores(model, rm_tok, [CHATS[0]], [ANSWERS[0]])[0, 0] == pytest.approx(direct, abs=1e-5)


def test_ensemble_holds_one_model_at_a_time(rms, monkeypatch):
    from components.backends import hf

    live: list = []
    peak = [0]
    real = hf.load_reward_model

    def counting(path, **kw):
        model, tok = real(path, **kw)
        live.append(weakref.ref(model))
        peak[0] = max(peak[0], sum(r() is not None for r in live))
        return model, tok

    monkeypatch.setattr(hf, "load_reward_model", counting)
    paths = [str(rms["qwen2"][0]), str(rms["llama3"][0]), str(rms["qwen2"][0])]
    ens = hf.RewardEnsemble(paths, batch_size=2)
    r = ens.score([CHATS[0], CHATS[1]], ANSWERS[:2])
    assert r.shape == (3, 2) and np.allclose(r[0], r[2]) and ens.loads == 3 and peak[0] == 1
    kept = hf.RewardEnsemble(paths, keep_loaded=True)
    kept.score([CHATS[0]], ANSWERS[:1])
    kept.score([CHATS[0]], ANSWERS[:1])
    assert kept.loads == 2  # two distinct paths, each loaded once and held


def _digest(d: Path) -> str:
    return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(d.glob("*.safetensors")))).hexdigest()


def test_train_reward_trains_only_the_non_frozen_member(rms, tmp_path, stage_inputs):
    from components.backends.models import member_dirs
    from components.stages import train_reward

    frozen, start = rms["qwen2"][0], tmp_path / "start"
    import shutil

    shutil.copytree(rms["qwen2"][0], start)
    before = _digest(frozen), _digest(start)
    prefs = pa.table({"pair_id": [f"p{k}" for k in range(8)], "prompt": ["Q: sea?"] * 8,
                      "messages": [CHATS[k % 2] for k in range(8)],
                      "chosen": ["The sea is blue."] * 8, "rejected": ["no no no"] * 8,
                      "label_source": ["imported"] * 8, "iteration": [0] * 8})
    inputs = stage_inputs(preferences=prefs, init=str(rms["qwen2"][1]))
    ens = {"pretrained": [{"path": str(frozen)}, {"path": str(start), "frozen": False}], "members": 1}
    cfg = RewardConfig(epochs=2, batch_size=2, heldout_frac=0.3, learning_rate=1e-3)
    out = train_reward.run(cfg, inputs, backends=Backends(models=_models(inputs, **ens)),
                           seed=Seeds(0, 0, "train_reward"))
    root = out.outputs["reward_model"].dir
    assert [Path(p).name for p in member_dirs(str(root))] == ["member-0"]
    assert (_digest(frozen), _digest(start)) == before  # neither pretrained RM was written
    assert _digest(root / "member-0") != before[1]  # the member trained, from the starting point
    assert out.metrics["train_reward/member_0/steps"] >= 1 and "train_reward/frozen_0/heldout_accuracy" in out.metrics


def test_gold_null_without_cold_start_exits_2_through_the_cli(tmp_path):
    import shutil
    import subprocess
    import sys

    exe = shutil.which("alignloop", path=str(Path(sys.executable).parent))
    (tmp_path / "c.yaml").write_text("gold: null\nevaluate: {heldout: none, regression_set: none}\n")
    r = subprocess.run([exe, "run", "-c", "c.yaml", "-w", "ws"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert "gold: null needs a cold start" in r.stdout and "label.seed_preferences" in r.stdout
    assert not (tmp_path / "ws").exists()  # before any stage, nothing written
