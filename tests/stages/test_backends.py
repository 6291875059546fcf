"""HF backends on tiny models built from config: generation, log-probs, reward ensemble, RM and DPO training."""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import numpy as np
import pytest

from components.config import DPOConfig, PolicyConfig, RewardConfig

PROMPTS = ["review pizza crust :", "review hotel room today again :", "review movie :"]
TOPICS = [
    ("pizza", "crust"),
    ("pizza", "sauce"),
    ("burger", "patty"),
    ("coffee", "espresso"),
    ("hotel", "room"),
    ("hotel", "staff"),
    ("movie", "plot"),
    ("movie", "ending"),
]
FILLER = "the a it was is were and but very really not quite fine tasty cold fresh okay".split()  # noqa: SIM905


def make_pairs(n: int, seed: int) -> list[dict]:
    """prompt `review <topic> <aspect> :`; chosen contains "great", rejected "bad", otherwise random filler."""
    rng = random.Random(seed)

    def completion(aspect, word):
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), word)
        return " " + " ".join(["the", aspect, *words, "."])

    pairs = []
    for _ in range(n):
        topic, aspect = rng.choice(TOPICS)
        pairs.append(
            {
                "prompt": f"review {topic} {aspect} :",
                "chosen": completion(aspect, "great"),
                "rejected": completion(aspect, "bad"),
            }
        )
    return pairs


def _sha(path: Path) -> str:
    return hashlib.sha256((Path(path) / "model.safetensors").read_bytes()).hexdigest()


def _state(path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(Path(path) / "model.safetensors"))


@pytest.fixture(scope="module")
def policy(tiny_policy):
    from components.backends.hf import load_causal_lm

    return load_causal_lm(tiny_policy)


# --------------------------------------------------------------------------------------------- generate


def _gen(policy, seed, n=4, max_new_tokens=8):
    from components.backends.hf import generate

    model, tok = policy
    return generate(
        model,
        tok,
        PROMPTS,
        n,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        batch_size=5,
        seed=seed,
    )


def test_generate_n_per_prompt_reproducible_and_consistent(policy):
    _, tok = policy
    gens, stats = _gen(policy, seed=0)
    assert [(g.prompt_index, g.sample_index) for g in gens] == [(i, j) for i in range(3) for j in range(4)]
    assert stats["tokens"] == sum(g.num_tokens for g in gens) and stats["tokens_per_s"] > 0
    again, _ = _gen(policy, seed=0)
    other, _ = _gen(policy, seed=1)
    assert again == gens
    assert [g.completion for g in other] != [g.completion for g in gens]
    for g in gens:
        assert 1 <= g.num_tokens <= 8
        assert g.completion == "" or g.completion.startswith(" ")
        prompt = PROMPTS[g.prompt_index]
        full, head = tok(prompt + g.completion)["input_ids"], tok(prompt)["input_ids"]
        assert full[: len(head)] == head  # the prompt's tokens are a prefix of prompt + completion
        words = len(full) - len(head)  # completion tokens re-tokenized = sampled tokens (eos excluded)
        assert words == g.num_tokens - 1 or (g.num_tokens == 8 and words == 8)
        assert tok.unk_token_id not in full and tok.pad_token_id not in full


def test_generate_max_new_tokens_bound(policy):
    gens, _ = _gen(policy, seed=3, n=2, max_new_tokens=3)
    assert all(1 <= g.num_tokens <= 3 for g in gens)


# ------------------------------------------------------------------------------------ sequence_logprobs


def _hand_logprob(model, tok, prompt: str, completion: str) -> float:
    """Token by token: feed the prompt, then each completion token (+ eos), summing log π(next | prefix)."""
    import torch

    ids = tok(prompt)["input_ids"]
    targets = [*tok(prompt + completion)["input_ids"][len(ids):], tok.eos_token_id]
    total = 0.0
    for t in targets:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        total += torch.log_softmax(logits.double(), -1)[t].item()
        ids = [*ids, t]
    return total


@pytest.mark.parametrize("add_bos", [False, True], ids=["plain", "bos-prepending-tokenizer"])
def test_sequence_logprobs_matches_hand_loop(tmp_path, tiny_factory, add_bos):
    from components.backends.hf import load_causal_lm, sequence_logprobs

    tok = tiny_factory.make_tokenizer(tmp_path / "tok", add_bos=add_bos)
    model, tok = load_causal_lm(tiny_factory.make_policy(tmp_path / "pol", tok, seed=1))
    prompt, completion = "review pizza crust :", " the crust was really great ."
    got = sequence_logprobs(model, tok, [prompt], [completion])
    assert got.shape == (1,) and got.dtype == np.float64
    assert got[0] == pytest.approx(_hand_logprob(model, tok, prompt, completion), abs=1e-4)


def test_sequence_logprobs_batched_equals_unbatched(policy):
    from components.backends.hf import sequence_logprobs

    model, tok = policy
    gens, _ = _gen(policy, seed=5, n=3, max_new_tokens=10)
    prompts = [PROMPTS[g.prompt_index] for g in gens]
    completions = [g.completion for g in gens]
    batched = sequence_logprobs(model, tok, prompts, completions, batch_size=64)
    single = sequence_logprobs(model, tok, prompts, completions, batch_size=1)
    np.testing.assert_allclose(batched, single, atol=1e-4)
    # the ones sampled with left padding score the same as a one-at-a-time hand loop
    for k in (0, 4, 8):
        assert batched[k] == pytest.approx(_hand_logprob(model, tok, prompts[k], completions[k]), abs=1e-4)


# ------------------------------------------------------------------------------------- reward models

RM_CFG = RewardConfig(learning_rate=1e-3, epochs=3, batch_size=32, max_length=64)


@pytest.fixture(scope="module")
def rm_dir(tiny_policy, tmp_path_factory):
    from components.backends.trainers import train_reward_member

    out = tmp_path_factory.mktemp("rms") / "member-0"
    metrics = train_reward_member(tiny_policy, make_pairs(256, 0), make_pairs(64, 1), out, RM_CFG, seed=0)
    return out, metrics


def test_train_reward_member_learns_and_changes_parameters(rm_dir, tiny_policy):
    out, metrics = rm_dir
    assert metrics["heldout_accuracy"] > 0.9, metrics
    assert metrics["steps"] == 3 * 8 and metrics["n_train"] == 256 and metrics["dropped_too_long"] == 0
    assert np.isfinite(metrics["train_loss"]) and metrics["seconds"] > 0
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert not list(out.glob("*.bin")) and [p.name for p in out.parent.iterdir()] == [out.name]
    before, after = _state(tiny_policy), _state(out)
    key = "transformer.h.0.attn.c_attn.weight"
    assert not np.allclose(before[key], after[key])
    assert after["score.weight"].shape == (1, 32)


def test_train_reward_member_warm_start_and_no_eval_pairs(rm_dir, tmp_path):
    from components.backends.trainers import train_reward_member

    out, _ = rm_dir
    # a handful of tiny steps: only a warm-started head (not a fresh one) can already rank held-out pairs
    cfg = RewardConfig(learning_rate=1e-6, epochs=1, batch_size=16)
    warm = train_reward_member(str(out), make_pairs(16, 2), make_pairs(64, 1), tmp_path / "warm", cfg, seed=1)
    assert warm["heldout_accuracy"] > 0.9, warm
    empty = train_reward_member(str(out), make_pairs(16, 2), [], tmp_path / "noeval", cfg, seed=1)
    assert np.isnan(empty["heldout_accuracy"]) and empty["steps"] == 1


def test_reward_ensemble_shape_and_members_differ(rm_dir, tiny_policy, tmp_path):
    from components.backends.hf import RewardEnsemble
    from components.backends.trainers import train_reward_member

    out, _ = rm_dir
    other = tmp_path / "member-1"
    train_reward_member(
        tiny_policy, make_pairs(64, 7), [], other, RewardConfig(learning_rate=1e-3, epochs=1), seed=1
    )
    pairs = make_pairs(10, 3)
    prompts = [p["prompt"] for p in pairs] * 2
    completions = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    ens = RewardEnsemble([str(out), str(other)], batch_size=4)
    r = ens.score(prompts, completions)
    assert r.shape == (2, 20) and r.dtype == np.float64
    assert not np.allclose(r[0], r[1])
    assert (r[0, :10] > r[0, 10:]).mean() > 0.8  # the trained member prefers "great" over "bad"
    np.testing.assert_allclose(
        RewardEnsemble([str(out)], batch_size=1).score(prompts, completions)[0], r[0], atol=1e-5
    )
    assert ens.score([], []).shape == (2, 0)


# ---------------------------------------------------------------------------------------------- DPO


def _margin(path, pairs) -> float:
    from components.backends.hf import load_causal_lm, sequence_logprobs

    model, tok = load_causal_lm(str(path))
    prompts = [p["prompt"] for p in pairs]
    chosen = sequence_logprobs(model, tok, prompts, [p["chosen"] for p in pairs])
    rejected = sequence_logprobs(model, tok, prompts, [p["rejected"] for p in pairs])
    return float(np.mean(chosen - rejected))


def test_train_dpo_raises_chosen_margin_and_keeps_reference(tiny_policy, tmp_path, caplog):
    from components.backends.trainers import train_dpo

    ref_hash = _sha(tiny_policy)
    heldout = make_pairs(64, 11)
    cfg = PolicyConfig(learning_rate=1e-3, batch_size=16, epochs=2, beta=0.1)
    with caplog.at_level(logging.WARNING, logger="components.backends.trainers"):
        metrics = train_dpo(tiny_policy, tiny_policy, make_pairs(96, 10), tmp_path / "cand", cfg, seed=0)
    assert not caplog.records  # TRL tokenized pairs exactly as hf.encode_scored does
    assert metrics["steps"] == 2 * 6 and metrics["n_train"] == 96
    for key in (
        "loss",
        "train_loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ):
        assert np.isfinite(metrics[key]), key
    assert metrics["rewards/margins"] > 0
    # log π(chosen) - log π(rejected) on held-out pairs: ~0 for the random policy, +0.7..1.5 after (4 seeds)
    assert _margin(tmp_path / "cand", heldout) > _margin(tiny_policy, heldout) + 0.3
    assert _sha(tiny_policy) == ref_hash
    key = "transformer.h.0.attn.c_attn.weight"
    assert not np.allclose(_state(tiny_policy)[key], _state(tmp_path / "cand")[key])
    assert [p.name for p in tmp_path.iterdir()] == ["cand"]
    assert not list((tmp_path / "cand").glob("*.bin"))


@pytest.mark.parametrize("loss_type,sft_coef", [("ipo", 0.0), ("robust", 0.5)])
def test_train_dpo_loss_variants_and_determinism(tiny_policy, tmp_path, loss_type, sft_coef):
    from components.backends.trainers import train_dpo

    cfg = PolicyConfig(learning_rate=1e-3, batch_size=8, dpo=DPOConfig(loss_type=loss_type, sft_coef=sft_coef))
    pairs = make_pairs(16, 12)
    a = train_dpo(tiny_policy, tiny_policy, pairs, tmp_path / "a", cfg, seed=3)
    train_dpo(tiny_policy, tiny_policy, pairs, tmp_path / "b", cfg, seed=3)
    assert a["steps"] == 2 and np.isfinite(a["loss"])
    assert _sha(tmp_path / "a") == _sha(tmp_path / "b")


def test_train_dpo_tokenizes_like_encode_scored_with_bos_tokenizer(tmp_path, tiny_factory, monkeypatch):
    """DPO trains on the tokens `hf.encode_scored` (so `hf.sequence_logprobs`) scores, one BOS included."""
    import trl

    from components.backends.hf import encode_scored
    from components.backends.trainers import load_tokenizer, train_dpo

    tok = tiny_factory.make_tokenizer(tmp_path / "tok", add_bos=True)
    path = tiny_factory.make_policy(tmp_path / "pol", tok)
    real_init, built = trl.DPOTrainer.__init__, []
    monkeypatch.setattr(trl.DPOTrainer, "__init__",
                        lambda self, *a, **k: (real_init(self, *a, **k), built.append(self))[0])
    pairs = make_pairs(8, 13)
    train_dpo(path, path, pairs, tmp_path / "cand", PolicyConfig(batch_size=8), seed=0)
    tokenizer = load_tokenizer(path)
    for k, pair in enumerate(pairs):
        row = built[0].train_dataset[k]
        for side in ("chosen", "rejected"):
            ids, n = encode_scored(tokenizer, pair["prompt"], pair[side])
            assert (row["prompt_ids"], row[f"{side}_ids"]) == (ids[:n], ids[n:])
        assert row["prompt_ids"].count(tokenizer.bos_token_id) == 1


def test_train_rl_adaptive_kl_needs_a_positive_beta(tmp_path):
    from components.backends.rl import train_rl
    from components.config import RLConfig

    cfg = PolicyConfig(algo="rloo", beta=0.0, batch_size=4, rl=RLConfig(kl_control="adaptive"))
    with pytest.raises(ValueError, match=r"train_policy\.beta > 0"):  # checked before anything is loaded
        train_rl("unused", "unused", ["review movie :"], lambda p, c: [0.0] * len(c), tmp_path / "out", cfg, seed=0)
