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

from components.backends.hf import Generation, decode_completion, fitting_prompts, forbidden_token_ids, stop_token_ids
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


def engine_args(policy_path: str, *, seed: int, gpu_memory_utilization: float, dtype: str = "auto") -> dict:
    """`vllm.LLM` keyword arguments: weights and tokenizer both from the checkpoint path given, now; `dtype` is
    `models.dtype` (auto = bfloat16: vLLM runs on CUDA only)."""
    return {"model": policy_path, "tokenizer": policy_path, "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization, "dtype": "bfloat16" if dtype == "auto" else dtype}


def sampling_args(n_prompts: int, n: int, *, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                  eos_id: int | list[int], forbidden: list[int]) -> list[dict]:
    """`vllm.SamplingParams` keyword arguments, one request per prompt (seeded from (seed, prompt index)), each
    asking for `n` samples from `hf.generate`'s distribution: pure temperature/top-p (top_k, min_p and every
    penalty neutral), stop at eos (every id of `eos_id` when a list: `hf.stop_token_ids`), and the `forbidden`
    ids (`hf.forbidden_token_ids`) biased to ~zero probability (vLLM has no suppress_tokens)."""
    return [
        {"n": n, "temperature": temperature, "top_p": top_p, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
         "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": max_new_tokens,
         # one seeded request per prompt: the same call gives the same samples whatever vLLM's batching does
         "seed": derive_seed(seed, i),
         "stop_token_ids": list(eos_id) if isinstance(eos_id, (list, tuple)) else [eos_id],
         "logit_bias": {t: FORBIDDEN_LOGIT_BIAS for t in forbidden} or None}
        for i in range(n_prompts)
    ]


def completion_tokens(token_ids: list[int], finish_reason: str | None, eos_id: int | list[int]
                      ) -> tuple[list[int], int]:
    """(the completion's tokens without eos, num_tokens as `hf.generate` counts it): vLLM keeps the stop token in
    `token_ids`; finish_reason "stop" means it ended on eos (no stop strings are set), which counts as a token."""
    stops = set(eos_id) if isinstance(eos_id, (list, tuple, set)) else {eos_id}
    kept = token_ids[:-1] if token_ids and token_ids[-1] in stops else token_ids
    return kept, len(kept) + (1 if finish_reason == "stop" else 0)


def as_generation(i: int, j: int, tokenizer, prompt, prompt_ids: list[int], token_ids: list[int],
                  finish_reason: str | None, stop_ids: list[int]) -> Generation:
    """A vLLM `CompletionOutput` (its `token_ids`, `finish_reason`) as `hf.generate`'s `Generation`: completion_ids
    = the sampled ids incl. the stopping eos, finish_reason "stop" | "length"."""
    kept, num = completion_tokens(token_ids, finish_reason, stop_ids)
    reason = "stop" if finish_reason == "stop" else "length"
    ids = list(token_ids[:num]) if reason == "stop" else list(kept)
    return Generation(i, j, decode_completion(tokenizer, prompt, prompt_ids, kept), num, completion_ids=ids,
                      finish_reason=reason)


def _generation_stops(policy_path: str, tokenizer) -> list[int]:
    """`hf.stop_token_ids` of the checkpoint: its tokenizer's eos and its generation_config's eos ids."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(policy_path)
    except OSError:  # no generation_config.json: the tokenizer's eos only
        gen = None
    return stop_token_ids(tokenizer, SimpleNamespace(generation_config=gen))


def generate(
    policy_path: str,
    prompts: list,
    n: int,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    gpu_memory_utilization: float,
    max_prompt_length: int | None = None,
    dtype: str = "auto",
) -> tuple[list[Generation], dict]:
    """`n` sampled completions per prompt (a string or chat messages) from the checkpoint at `policy_path`, loaded
    now. Prompts go to vLLM as token ids (`hf.prompt_ids`: the policy tokenizer's chat template, exactly one BOS);
    prompts over `max_prompt_length` tokens get no samples.

    Returns (generations, stats) like `hf.generate`; stats["seconds"] covers sampling only, and
    stats["load_seconds"] the engine start (weights + CUDA graphs + KV cache).
    """
    import torch
    from vllm import LLM, SamplingParams

    t_load = time.perf_counter()
    llm = LLM(**engine_args(policy_path, seed=seed, gpu_memory_utilization=gpu_memory_utilization, dtype=dtype))
    try:
        tokenizer = llm.get_tokenizer()
        stops = _generation_stops(policy_path, tokenizer)
        rows, keep = fitting_prompts(tokenizer, prompts, max_prompt_length)
        kwargs = sampling_args(len(prompts), n, max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, seed=seed, eos_id=stops, forbidden=forbidden_token_ids(tokenizer, stops))
        load_seconds = time.perf_counter() - t_load
        t0 = time.perf_counter()
        results = llm.generate([{"prompt_token_ids": rows[i]} for i in keep],
                               [SamplingParams(**kwargs[i]) for i in keep], use_tqdm=False)
        seconds = time.perf_counter() - t0
        out = [as_generation(i, j, tokenizer, prompts[i], rows[i], list(sample.token_ids), sample.finish_reason,
                             stops)
               for i, res in zip(keep, results) for j, sample in enumerate(res.outputs)]
    finally:
        del llm  # shuts the engine down and frees its GPU memory before the next stage loads a model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    tokens = sum(g.num_tokens for g in out)
    return out, {"tokens": tokens, "seconds": seconds, "load_seconds": load_seconds,
                 "tokens_per_s": tokens / seconds if seconds > 0 else 0.0, "prompts_too_long": len(prompts) - len(keep)}
