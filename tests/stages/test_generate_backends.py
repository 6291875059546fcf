"""generate.backend = vllm where vLLM cannot run (no vllm package here, or no CUDA device): the real
`unavailable_reason()` says why, and sampling falls back to transformers with a warning, giving exactly what
backend = hf gives. The arguments the backend builds for vLLM are unit-tested in tests/unit/test_vllm_backend.py;
the real engine is exercised by benchmarks/ on a GPU."""

from __future__ import annotations

import logging

import pytest

from components.backends import vllm_backend
from components.config import GenerateConfig

PROMPTS = ["review pizza crust :", "review hotel room :", "review movie :"]


def _cfg(backend: str) -> GenerateConfig:
    return GenerateConfig(samples_per_prompt=3, max_new_tokens=6, batch_size=4, backend=backend)


def test_vllm_unavailable_falls_back_to_hf_with_a_warning(tiny_policy, caplog):
    from components.backends.models import sample

    reason = vllm_backend.unavailable_reason()
    if reason is None:
        pytest.skip("vLLM can run here: no fallback to test")
    with caplog.at_level(logging.WARNING):
        gens, stats = sample(_cfg("vllm"), PROMPTS, tiny_policy, 7)
    assert reason in caplog.text and "transformers" in caplog.text
    hf_gens, _ = sample(_cfg("hf"), PROMPTS, tiny_policy, 7)
    assert gens == hf_gens and "vllm_used" not in stats
