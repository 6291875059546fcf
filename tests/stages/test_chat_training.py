"""Policy training on chat models (issue 13): DPO trains on exactly the tokens the policy sampled (no double BOS,
no decode/re-encode drift), long chat prompts fit the default lengths (left-truncated, counted when they cannot),
a bf16 checkpoint gives a bf16 candidate, and RLOO takes conversational prompts. Tiny Llama-3 / Qwen2 style
models from `components.toy.chat_models`, random weights."""

from __future__ import annotations

import pytest

from components.config import PolicyConfig, RLConfig

STYLES = ("llama3", "qwen2")
CFG = PolicyConfig(learning_rate=1e-2, batch_size=1, epochs=1)  # 2 pairs: 2 steps (the 1st is warmup, lr 0)


@pytest.fixture(scope="module", params=STYLES)
def chat_lm(request, tmp_path_factory):
    """(style, path) of a tiny random chat LM."""
    from components.toy.chat_models import build_chat_lm

    return request.param, str(build_chat_lm(request.param, tmp_path_factory.mktemp(request.param) / "lm"))


@pytest.fixture
def dpo_trainers(monkeypatch) -> list:
    """Every DPOTrainer built during the test (its train_dataset and data_collator are what it trains on)."""
    import trl

    real_init, built = trl.DPOTrainer.__init__, []

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(trl.DPOTrainer, "__init__", recording_init)
    return built


def _conversation(n_words: int = 6) -> list[dict]:
    words = ("why", "is", "the", "sky", "blue", "and", "the", "sea", "so", "deep")
    text = " ".join(words[k % len(words)] for k in range(n_words))
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text + "?"}]


def _sampled(path: str, prompt: list[dict], n: int, seed: int) -> list[list[int]]:
    """`n` sampled completions' token ids (up to and including the first stop token), as generate records them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.backends.hf import prompt_ids

    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    stops = set(model.generation_config.eos_token_id)
    head = torch.tensor([prompt_ids(tok, prompt)])
    torch.manual_seed(seed)
    out = model.generate(head, attention_mask=torch.ones_like(head), do_sample=True, max_new_tokens=12,
                         num_return_sequences=n, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    rows = []
    for seq in out[:, head.shape[1]:].tolist():
        end = next((k + 1 for k, t in enumerate(seq) if t in stops), len(seq))
        rows.append(seq[:end])
    return rows


def _weights(path):
    from safetensors.torch import load_file

    return load_file(f"{path}/model.safetensors")


def test_dpo_batch_holds_exactly_the_sampled_tokens(chat_lm, tmp_path, dpo_trainers):
    from transformers import AutoTokenizer

    from components.backends.hf import prompt_ids
    from components.backends.trainers import train_dpo

    style, path = chat_lm
    tok = AutoTokenizer.from_pretrained(path)
    pairs = []
    for k in range(2):
        prompt = _conversation(4 + k)
        chosen, rejected = _sampled(path, prompt, 2, seed=k)
        pairs.append({"prompt": prompt, "chosen": tok.decode(chosen, skip_special_tokens=True),
                      "rejected": tok.decode(rejected, skip_special_tokens=True),
                      "chosen_ids": chosen, "rejected_ids": rejected})
    metrics = train_dpo(path, path, pairs, tmp_path / "cand", CFG, seed=0)

    trainer = dpo_trainers[-1]
    rows = [trainer.train_dataset[k] for k in range(len(pairs))]
    for row, pair in zip(rows, pairs):
        assert row["prompt_ids"] == prompt_ids(tok, pair["prompt"])
        assert (row["chosen_ids"], row["rejected_ids"]) == (pair["chosen_ids"], pair["rejected_ids"])
        if style == "llama3":  # the template's BOS only, though the tokenizer adds BOS itself
            assert row["prompt_ids"].count(tok.bos_token_id) == 1 and row["prompt_ids"][0] == tok.bos_token_id
    batch = trainer.data_collator(rows)
    n = len(rows)
    for k, (row, pair) in enumerate(zip(rows, pairs)):
        for side, seq, mask in (("chosen", batch["input_ids"][k], batch["completion_mask"][k]),
                                ("rejected", batch["input_ids"][n + k], batch["completion_mask"][n + k])):
            ids = seq[batch["attention_mask"][k if side == "chosen" else n + k].bool()].tolist()
            assert ids == row["prompt_ids"] + pair[f"{side}_ids"]
            assert seq[mask.bool()].tolist() == pair[f"{side}_ids"]  # the completion tokens trained = sampled
    assert metrics["n_train"] == 2 and metrics["pairs_too_long"] == 0
    before, after = _weights(path), _weights(tmp_path / "cand")
    assert any(not before[name].equal(after[name]) for name in before)  # DPO moved the weights


@pytest.mark.parametrize("n_words", [90, 600])
def test_long_chat_prompts_train_with_the_default_lengths(chat_lm, tmp_path, n_words):
    from transformers import AutoTokenizer

    from components.backends.hf import prompt_ids
    from components.backends.trainers import train_dpo

    _, path = chat_lm
    prompt = _conversation(n_words)
    assert len(prompt_ids(AutoTokenizer.from_pretrained(path), prompt)) > n_words  # text pairs: TRL's rule
    pairs = [{"prompt": prompt, "chosen": "Because of Rayleigh scattering.", "rejected": "No idea."}] * 2
    metrics = train_dpo(path, path, pairs, tmp_path / "cand", CFG, seed=0)
    assert metrics["n_train"] == 2 and metrics["pairs_too_long"] == 0 and metrics["steps"] == 2


def test_truncation_keeps_the_prompt_end_and_counts_what_cannot_fit(chat_lm, tmp_path, dpo_trainers, caplog):
    from transformers import AutoTokenizer

    from components.backends.hf import prompt_ids
    from components.backends.trainers import dpo_rows

    _, path = chat_lm
    tok = AutoTokenizer.from_pretrained(path)
    long, short = _conversation(200), _conversation(3)
    pairs = [{"prompt": p, "chosen": "Blue light scatters more.", "rejected": "It just is."} for p in (long, short)]
    rows, skipped = dpo_rows(tok, pairs, CFG.model_copy(update={"max_prompt_length": 40, "max_length": 44}))
    assert skipped == 0 and rows[0]["prompt_ids"] == prompt_ids(tok, long)[-40:]  # ends on the generation prompt
    assert all(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= 44 for r in rows)

    too_small = CFG.model_copy(update={"max_prompt_length": 1024, "max_length": len(prompt_ids(tok, short)) + 4})
    rows, skipped = dpo_rows(tok, pairs, too_small)
    assert skipped == 1 and len(rows) == 1 and "pairs skipped" in caplog.text
    with pytest.raises(ValueError, match=r"train_policy\.max_length=8 .*train_policy\.max_prompt_length"):
        dpo_rows(tok, pairs, CFG.model_copy(update={"max_length": 8}))


def test_bf16_policy_gives_a_bf16_candidate(tmp_path):
    from safetensors import safe_open

    from components.backends.trainers import train_dpo
    from components.toy.chat_models import build_chat_lm

    path = str(build_chat_lm("qwen2", tmp_path / "lm", dtype="bfloat16"))
    pairs = [{"prompt": _conversation(5), "chosen": "Scattering.", "rejected": "Magic."}] * 2
    train_dpo(path, path, pairs, tmp_path / "cand", CFG, seed=0)  # CPU: computed in fp32 (models.dtype auto)
    with safe_open(str(tmp_path / "cand" / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        dtypes = {str(f.get_slice(name).get_dtype()) for name in names}
    assert dtypes == {"BF16"}


def test_rloo_takes_chat_prompts_and_rewards_text(tmp_path):
    from components.backends.rl import train_rl
    from components.toy.chat_models import build_chat_lm

    path = str(build_chat_lm("qwen2", tmp_path / "lm"))
    seen = []

    def reward_fn(prompts, completions):
        seen.append((prompts, completions))
        return [float(len(c)) for c in completions]

    cfg = PolicyConfig(algo="rloo", batch_size=4, rl=RLConfig(num_generations=2, max_new_tokens=8, shaping="none"))
    prompts = [_conversation(3), _conversation(5)]
    metrics = train_rl(path, path, prompts, reward_fn, tmp_path / "cand", cfg, seed=0)
    assert metrics["steps"] == 1 and metrics["prompts_too_long"] == 0
    assert all(isinstance(c, str) for _, cs in seen for c in cs) and seen
    assert all(p in prompts for ps, _ in seen for p in ps)  # the conversations themselves, for the ensemble
