"""Stage 2, generate: K sampled completions per prompt from the current champion policy.

    alignloop run --config configs/tiny.yaml --set generate.samples_per_prompt=8

Pure over artifacts: (prompts table, policy) -> rollouts table + throughput stats. The engine is
`generate.backend`: transformers `generate` (batched, seeded), or vLLM on a GPU machine, where the checkpoint is
loaded afresh each call; vLLM falls back to transformers, with a warning, where it cannot run.

Sharding (`generate.shards`): the prompts split into contiguous shards, each a self-contained `ShardJob`
sampled with its own seed, derived from (seed, shard); `backends.map_shards` decides where they run, one after another
here by default, or as Ray tasks (tasks/fanout.py). The rollouts depend on the shard count, not on the map.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from components import chat
from components.config import GenerateConfig, ModelsConfig
from components.contract import Backends, Inputs, Output, Seeds, StageResult, derive_seed


def rollout_id(policy_sha: str, prompt_id: str, sample_index: int, seed: int) -> str:
    return hashlib.sha256(f"{policy_sha}|{prompt_id}|{sample_index}|{seed}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ShardJob:
    """One prompt shard's sampling, self-contained and picklable so another process (a Ray worker) can run it: the
    policy is opened through the store there (`inputs`), not through a path of this machine."""

    index: int  # shard number, for logs
    texts: list  # the shard's prompts: strings or chat messages (components.chat.Prompt)
    inputs: Inputs
    cfg: GenerateConfig
    seed: int
    models: ModelsConfig = dataclasses.field(default_factory=ModelsConfig)  # the loop's `models:` (dtype)


def shard_seed(seed: int, shard: int) -> int:
    # shard 0 keeps the stage seed, so one shard is exactly the unsharded generation
    return seed if shard == 0 else derive_seed(seed, shard)


def sample_shard(job: ShardJob) -> tuple[list, dict]:
    from components.backends.models import Models

    generator = Models(job.inputs, generate=job.cfg, models=job.models).generator("policy")
    return generator.sample(job.texts, job.cfg.samples_per_prompt, job.seed)


def run(cfg: GenerateConfig, inputs: Inputs, *, backends: Backends, seed: Seeds) -> StageResult:
    """Inputs `prompts`, `policy` -> output `rollouts` (chat prompts keep their `messages`; each rollout records its
    sampled `completion_ids` and `finish_reason`). `generate.shards` (at most one per prompt) contiguous shards are
    sampled by `backends.map_shards`. Prompts over `generate.max_prompt_length` tokens are skipped and counted."""
    prompts, policy_sha, stage_seed = inputs.table("prompts"), inputs.ref("policy").sha256, seed.value
    texts = chat.prompts_of(prompts)
    bounds = np.linspace(0, len(texts), min(cfg.shards, max(len(texts), 1)) + 1).astype(int).tolist()
    models_cfg = getattr(backends.models, "models_cfg", None) or ModelsConfig()
    jobs = [ShardJob(s, texts[a:b], inputs, cfg, shard_seed(stage_seed, s), models_cfg)
            for s, (a, b) in enumerate(itertools.pairwise(bounds))]
    results = list(backends.map_shards(sample_shard, jobs))
    # a shard's prompt_index counts from its own first prompt
    gens = [dataclasses.replace(g, prompt_index=g.prompt_index + a) for a, (shard, _) in zip(bounds, results)
            for g in shard]
    stats = [s for _, s in results]
    too_long = sum(s.get("prompts_too_long", 0) for s in stats)
    if not gens and too_long:
        raise ValueError(f"generate: all {too_long} prompts are longer than generate.max_prompt_length="
                         f"{cfg.max_prompt_length} tokens (raise generate.max_prompt_length, or shorten the prompts)")
    ids = prompts["prompt_id"].to_pylist()
    table = pa.table({
        "rollout_id": [rollout_id(policy_sha, ids[g.prompt_index], g.sample_index, stage_seed) for g in gens],
        "prompt_id": [ids[g.prompt_index] for g in gens],
        **chat.prompt_columns([texts[g.prompt_index] for g in gens]),
        "completion": [g.completion for g in gens],
        "completion_ids": [g.completion_ids for g in gens],
        "finish_reason": [g.finish_reason for g in gens],
        "num_tokens": [g.num_tokens for g in gens],
        "policy_version": [policy_sha] * len(gens),
        "seed": [stage_seed] * len(gens),
        "temperature": [cfg.temperature] * len(gens),
        "top_p": [cfg.top_p] * len(gens),
    })
    tokens = sum(g.num_tokens for g in gens)
    # sampling seconds summed over shards: per-worker throughput, not the wall time of a parallel fan-out
    seconds = sum(s["seconds"] for s in stats)
    return StageResult(outputs={"rollouts": Output("rollouts", table)}, metrics={
        "generate/completions": len(gens), "generate/tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "generate/truncated": sum(g.finish_reason == "length" for g in gens), "generate/prompts_too_long": too_long,
        "generate/seconds": seconds, "generate/mean_tokens": tokens / max(len(gens), 1), "generate/shards": len(jobs),
        "generate/vllm_used": float(min(s.get("vllm_used", 0.0) for s in stats))})
