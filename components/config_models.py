"""Model-side configuration: `models:` (precision, log-prob batching, residency) and `generate:` (sampling).

Re-exported by components/config.py (`from components.config import GenerateConfig, ModelsConfig`), which
aggregates them into `LoopConfig`; kept apart only so that module stays readable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelsConfig(_Frozen):
    """How every stage loads and runs its models (policies, reference, reward models)."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Precision every policy and reward model is loaded in, for inference and training:"
        " auto = bfloat16 on CUDA, float32 on CPU. A saved checkpoint keeps the dtype of the checkpoint it was"
        " trained from (a bf16 initial policy gives bf16 candidates even where training computed in fp32)."
    )
    logprob_batch_size: int = Field(16, ge=1, description="Sequences per forward pass when scoring log-probs.")
    logprob_chunk: int = Field(
        128, ge=1, description="Positions per chunk of the log-prob gather: logits are computed (in fp32) for"
        " `logprob_chunk` positions at a time, so peak memory is batch × chunk × vocab, not batch × length × vocab."
    )
    keep_loaded: bool = Field(
        False, description="Let a stage that needs several models (evaluate: candidate, champion, reference, K"
        " reward models) keep them all resident; false = free each before loading the next (about one model's"
        " memory)."
    )


class GenerateConfig(_Frozen):
    """Stage 2, generate: on-policy completions from the current champion."""

    samples_per_prompt: int = Field(8, ge=2, description="K completions per prompt (pairs need at least 2).")
    max_new_tokens: int = Field(
        512, ge=1, description="Length limit of a completion (tokens); a completion that hits it is recorded with"
        " finish_reason 'length' (label.truncated decides what happens to it) and counted in generate/truncated."
    )
    max_prompt_length: int = Field(
        1024, ge=1, description="Longest prompt (tokens, as the policy's chat template renders it); longer prompts"
        " are skipped with a warning and counted in generate/prompts_too_long."
    )
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(32, ge=1, description="Prompts×samples decoded together in one `generate` call.")
    shards: int = Field(
        1, ge=1, description="Contiguous prompt shards, each sampled with a seed derived from (seed, shard) (at most"
        " one per prompt; 1 = no sharding). With fanout.task_runner: ray, one Ray task per shard (fanout.num_cpus/"
        "num_gpus as for members); otherwise the shards run one after another in the generate task, with the same"
        " rollouts."
    )
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="hf: transformers generate (CPU or GPU); vllm: vLLM's offline engine (needs the `vllm` extra"
        " and a CUDA device, else it falls back to hf with a warning).",
    )
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="vllm only: share of GPU memory vLLM may take (weights + KV cache)."
    )
