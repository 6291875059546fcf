"""vLLM generation backend: vLLM's offline engine (`vllm.LLM`) over a `save_pretrained` checkpoint, for GPUs.

A fresh engine is built from the checkpoint path it is given on every call and torn down afterwards, so an
iteration always samples from the champion it names, never from weights an earlier iteration loaded. Building
the engine costs seconds; sampling thousands of completions is where vLLM's continuous batching and paged KV
cache pay for it. vllm and torch are imported inside `generate` (extra `vllm`); `unavailable_reason()` tells the
caller whether vLLM can run here at all. What we ask of vLLM is built by pure functions returning plain dicts
(`engine_args`, `sampling_args`) and read back by `completion_tokens`, so it is tested without vLLM or a GPU.

The output contract is `components.backends.hf.generate`'s: `Generation` records in prompt-major order, the same
completion-text rule (decode(prompt + new) minus decode(prompt), starting with a space), `num_tokens` counting the
eos, and the same sampling distribution: pure temperature/top-p, top_k off, no penalties, pad/bos/unk forbidden.
Samples are not token-identical to hf's (a different RNG), but come from the same distribution, which is what
`sequence_logprobs` and DPO assume.
"""

from __future__ import annotations

import gc
import time

from components.backends.hf import Generation, _decode_completion, forbidden_token_ids
from components.seeds import derive_seed

FORBIDDEN_LOGIT_BIAS = -100.0  # vLLM clamps logit_bias to [-100, 100]: -100 takes a token's probability to ~0


def unavailable_reason() -> str | None:
    """None when vLLM can run here, else why not (the caller falls back to hf and logs it)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'alignloop[vllm]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def engine_args(policy_path: str, *, seed: int, gpu_memory_utilization: float) -> dict:
    """`vllm.LLM` keyword arguments: weights and tokenizer both from the checkpoint path given, now."""
    return {"model": policy_path, "tokenizer": policy_path, "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization}


def sampling_args(n_prompts: int, n: int, *, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                  eos_id: int, forbidden: list[int]) -> list[dict]:
    """`vllm.SamplingParams` keyword arguments, one request per prompt (seeded from (seed, prompt index)), each
    asking for `n` samples from `hf.generate`'s distribution: pure temperature/top-p (top_k, min_p and every
    penalty neutral), stop at eos, and the `forbidden` ids (`hf.forbidden_token_ids`) biased to ~zero
    probability (vLLM has no suppress_tokens)."""
    return [
        {"n": n, "temperature": temperature, "top_p": top_p, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
         "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": max_new_tokens,
         # one seeded request per prompt: the same call gives the same samples whatever vLLM's batching does
         "seed": derive_seed(seed, i), "stop_token_ids": [eos_id],
         "logit_bias": {t: FORBIDDEN_LOGIT_BIAS for t in forbidden} or None}
        for i in range(n_prompts)
    ]


def completion_tokens(token_ids: list[int], finish_reason: str | None, eos_id: int) -> tuple[list[int], int]:
    """(the completion's tokens without eos, num_tokens as `hf.generate` counts it): vLLM keeps the stop token in
    `token_ids`; finish_reason "stop" means it ended on eos (no stop strings are set), which counts as a token."""
    kept = token_ids[:-1] if token_ids and token_ids[-1] == eos_id else token_ids
    return kept, len(kept) + (1 if finish_reason == "stop" else 0)


def generate(
    policy_path: str,
    prompts: list[str],
    n: int,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    gpu_memory_utilization: float,
) -> tuple[list[Generation], dict]:
    """`n` sampled completions per prompt from the checkpoint at `policy_path`, loaded now.

    Returns (generations, stats) like `hf.generate`; stats["seconds"] covers sampling only, and
    stats["load_seconds"] the engine start (weights + CUDA graphs + KV cache).
    """
    import torch
    from vllm import LLM, SamplingParams

    t_load = time.perf_counter()
    llm = LLM(**engine_args(policy_path, seed=seed, gpu_memory_utilization=gpu_memory_utilization))
    try:
        tokenizer = llm.get_tokenizer()
        eos_id = tokenizer.eos_token_id
        params = [SamplingParams(**kw) for kw in sampling_args(
            len(prompts), n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
            eos_id=eos_id, forbidden=forbidden_token_ids(tokenizer))]
        load_seconds = time.perf_counter() - t_load
        t0 = time.perf_counter()
        results = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        out: list[Generation] = []
        for i, res in enumerate(results):
            prompt_ids = list(res.prompt_token_ids)
            for j, sample in enumerate(res.outputs):
                kept, num = completion_tokens(list(sample.token_ids), sample.finish_reason, eos_id)
                out.append(Generation(i, j, _decode_completion(tokenizer, prompt_ids, kept), num))
    finally:
        del llm  # shuts the engine down and frees its GPU memory before the next stage loads a model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    tokens = sum(g.num_tokens for g in out)
    return out, {"tokens": tokens, "seconds": seconds, "load_seconds": load_seconds,
                 "tokens_per_s": tokens / seconds if seconds > 0 else 0.0}
