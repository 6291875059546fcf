"""The bootstrap pipeline built small (the session's `tiny_bootstrap`): pool, tokenizer, pre-trained policy."""

import json
from statistics import fmean

import pyarrow.parquet as pq

from components.toy.language import TOPICS, sample_corpus, vocabulary


def _lm_loss(model, tokenizer, pairs) -> float:
    """Mean per-review next-token loss of `prompt + completion + <eos>`."""
    import torch

    with torch.no_grad():
        losses = []
        for prompt, completion in pairs:
            ids = torch.tensor([[*tokenizer(prompt + completion)["input_ids"], tokenizer.eos_token_id]])
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    return fmean(losses)


def test_prompt_pool_and_tokenizer_are_written(tiny_bootstrap):
    pool = pq.read_table(tiny_bootstrap["prompts"])
    assert pool.column_names == ["prompt_id", "prompt", "source", "split"]
    assert pool.num_rows == len(TOPICS) * (6 + 2)
    assert (tiny_bootstrap["tokenizer"] / "tokenizer.json").is_file()


def test_policy_loads_generates_and_learned_the_corpus(tiny_bootstrap):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    policy_dir = tiny_bootstrap["policy"]
    assert (policy_dir / "model.safetensors").is_file() and not list(policy_dir.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    gen = model.generation_config
    assert (gen.pad_token_id, gen.eos_token_id, gen.bos_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
    )
    assert tokenizer.pad_token_id != tokenizer.eos_token_id

    torch.manual_seed(0)
    batch = tokenizer(["review pizza crust today :", "review hotel staff again :"], return_tensors="pt", padding=True)
    out = model.generate(**batch, do_sample=True, max_new_tokens=16)
    completions = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert all(completions) and set(" ".join(completions).split()) <= set(vocabulary())

    heldout = sample_corpus(seed=12345, n=48)
    torch.manual_seed(0)
    untrained = GPT2LMHeadModel(model.config).eval()
    assert _lm_loss(model, tokenizer, heldout) < _lm_loss(untrained, tokenizer, heldout) - 2.0

    metrics = json.loads(tiny_bootstrap["metrics"].read_text())
    assert metrics["sft/heldout_loss"] < metrics["sft/heldout_loss_init"] - 2.0
    assert {"sft/gold_corpus", "sft/gold_policy", "sft/completion_tokens"} <= set(metrics)
