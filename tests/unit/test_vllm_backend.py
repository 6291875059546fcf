"""What the vLLM backend asks of vLLM, from hand-built inputs: the engine and sampling arguments as plain dicts, and
how a returned sample's tokens become a completion. No vllm import, no GPU; the engine itself runs in benchmarks/."""

from __future__ import annotations

import importlib.util

import pytest

from components.backends import vllm_backend
from components.backends.vllm_backend import (
    FORBIDDEN_LOGIT_BIAS,
    completion_tokens,
    engine_args,
    sampling_args,
)

EOS, PAD, BOS = 3, 0, 2


def _args(**kw) -> list[dict]:
    base = {"max_new_tokens": 12, "temperature": 0.7, "top_p": 0.9, "seed": 5, "eos_id": EOS, "forbidden": [PAD, BOS]}
    return sampling_args(3, 4, **{**base, **kw})


def test_engine_is_built_from_the_checkpoint_path_given():
    assert engine_args("/ckpt/v7", seed=11, gpu_memory_utilization=0.4) == {
        "model": "/ckpt/v7", "tokenizer": "/ckpt/v7", "seed": 11, "gpu_memory_utilization": 0.4, "dtype": "bfloat16"}


def test_sampling_args_are_pure_temperature_top_p_one_request_per_prompt():
    reqs = _args()
    assert len(reqs) == 3
    for r in reqs:
        assert (r["n"], r["temperature"], r["top_p"], r["max_tokens"]) == (4, 0.7, 0.9, 12)
        # every other knob neutral: the distribution hf.generate samples and sequence_logprobs scores
        assert (r["top_k"], r["min_p"], r["repetition_penalty"], r["presence_penalty"], r["frequency_penalty"]) == (
            -1, 0.0, 1.0, 0.0, 0.0)
        assert r["stop_token_ids"] == [EOS]
        assert r["logit_bias"] == {PAD: FORBIDDEN_LOGIT_BIAS, BOS: FORBIDDEN_LOGIT_BIAS}
    assert FORBIDDEN_LOGIT_BIAS == -100.0  # the most negative bias vLLM accepts


def test_sampling_seeds_per_prompt_reproducible_and_seed_dependent():
    seeds = [r["seed"] for r in _args()]
    assert len(set(seeds)) == 3 and all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
    assert seeds == [r["seed"] for r in _args()]
    assert seeds[:2] == [r["seed"] for r in sampling_args(2, 1, max_new_tokens=1, temperature=1.0, top_p=1.0,
                                                          seed=5, eos_id=EOS, forbidden=[])]  # (seed, prompt index)
    assert set(seeds).isdisjoint(r["seed"] for r in _args(seed=6))


def test_nothing_forbidden_means_no_logit_bias():
    assert all(r["logit_bias"] is None for r in _args(forbidden=[]))


@pytest.mark.parametrize("ids,reason,expected", [
    ([7, 8, EOS], "stop", ([7, 8], 3)),  # ended on eos: eos stripped from the text, counted as hf counts it
    ([7, 8, 9], "length", ([7, 8, 9], 3)),  # ran to max_tokens: no eos, nothing stripped
    ([EOS], "stop", ([], 1)),  # an immediate eos: empty completion, one token
    ([], "length", ([], 0)),
])
def test_completion_tokens_strip_and_count_eos(ids, reason, expected):
    assert completion_tokens(ids, reason, EOS) == expected


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_unavailable_reason_names_the_missing_package():
    reason = vllm_backend.unavailable_reason()
    assert reason is not None and "not installed" in reason and "alignloop[vllm]" in reason


def test_forbidden_token_ids_are_pad_bos_unk_but_never_eos():
    from types import SimpleNamespace

    from components.backends.hf import forbidden_token_ids

    tok = SimpleNamespace(pad_token_id=PAD, bos_token_id=BOS, unk_token_id=1, eos_token_id=EOS)
    assert forbidden_token_ids(tok) == [PAD, 1, BOS]
    gpt2_like = SimpleNamespace(pad_token_id=EOS, bos_token_id=EOS, unk_token_id=None, eos_token_id=EOS)
    assert forbidden_token_ids(gpt2_like) == []  # pad = bos = eos: eos must stay sampleable
