"""Stage 2, generate: K sampled completions per prompt from the current champion policy.

    alignloop run --config configs/tiny.yaml --set generate.samples_per_prompt=8

Pure over artifacts: (prompts table, policy directory) -> rollouts table + throughput stats. The engine is
`generate.backend`: transformers `generate` (batched, seeded), or vLLM on a GPU machine, where the checkpoint is
loaded afresh each call; vLLM falls back to transformers, with a warning, where it cannot run.
"""

from __future__ import annotations

import hashlib
import logging

import pyarrow as pa

from components.config import GenerateConfig

logger = logging.getLogger(__name__)


def rollout_id(policy_sha: str, prompt_id: str, sample_index: int, seed: int) -> str:
    return hashlib.sha256(f"{policy_sha}|{prompt_id}|{sample_index}|{seed}".encode()).hexdigest()[:32]


def run(cfg: GenerateConfig, prompts: pa.Table, policy_path: str, *, policy_sha: str, seed: int
        ) -> tuple[pa.Table, dict[str, float]]:
    texts = prompts["prompt"].to_pylist()
    gens, stats = sample(cfg, texts, policy_path, seed)
    ids = prompts["prompt_id"].to_pylist()
    table = pa.table({
        "rollout_id": [rollout_id(policy_sha, ids[g.prompt_index], g.sample_index, seed) for g in gens],
        "prompt_id": [ids[g.prompt_index] for g in gens],
        "prompt": [texts[g.prompt_index] for g in gens],
        "completion": [g.completion for g in gens],
        "num_tokens": [g.num_tokens for g in gens],
        "policy_version": [policy_sha] * len(gens),
        "seed": [seed] * len(gens),
        "temperature": [cfg.temperature] * len(gens),
        "top_p": [cfg.top_p] * len(gens),
    })
    n = max(len(gens), 1)
    return table, {"completions": len(gens), "tokens_per_s": stats["tokens_per_s"], "seconds": stats["seconds"],
                   "mean_tokens": sum(g.num_tokens for g in gens) / n,
                   "vllm_used": float(stats.get("vllm_used", 0.0))}


def sample(cfg: GenerateConfig, texts: list[str], policy_path: str, seed: int, loaded: tuple | None = None
           ) -> tuple[list, dict]:
    """`cfg.samples_per_prompt` completions per text from the checkpoint at `policy_path`, on `cfg.backend`.
    `loaded`: the (model, tokenizer) of that checkpoint if the caller holds it already (used by transformers)."""
    if cfg.backend == "vllm":
        from components.backends import vllm_backend

        reason = vllm_backend.unavailable_reason()
        if reason is None:
            gens, stats = vllm_backend.generate(
                policy_path, texts, cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature, top_p=cfg.top_p, seed=seed,
                gpu_memory_utilization=cfg.gpu_memory_utilization)
            return gens, {**stats, "vllm_used": 1.0}
        logger.warning("generate.backend=vllm cannot run here (%s): using transformers generate instead", reason)
    from components.backends import hf

    model, tokenizer = loaded or hf.load_causal_lm(policy_path)
    return hf.generate(model, tokenizer, texts, cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=seed)
