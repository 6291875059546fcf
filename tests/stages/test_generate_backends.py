"""The generate stage's backends on CPU: the vLLM backend's fallback to transformers, and its wiring (engine built
from the checkpoint it is given, every call; output schema identical to the hf backend's) against a stand-in
`vllm` module, since no GPU or vLLM is available in CI. The real engine is exercised by benchmarks/ on a GPU."""

from __future__ import annotations

import hashlib
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa

from components.backends import vllm_backend
from components.config import GenerateConfig
from components.stages import generate

PROMPTS = pa.table({"prompt_id": ["p0", "p1", "p2"],
                    "prompt": ["review pizza crust :", "review hotel room :", "review movie :"]})


def _cfg(backend: str) -> GenerateConfig:
    return GenerateConfig(samples_per_prompt=3, max_new_tokens=6, batch_size=4, backend=backend)


def _weights_sha(path: str) -> str:
    return hashlib.sha256((Path(path) / "model.safetensors").read_bytes()).hexdigest()


def fake_vllm(constructed: list[str]) -> types.ModuleType:
    """A stand-in for the `vllm` package: `LLM(model=path)` records `path` and samples token ids from an RNG
    seeded by the weights file it finds there at construction, so its output depends on the checkpoint loaded."""
    from transformers import AutoTokenizer

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, model: str, tokenizer: str, seed: int, gpu_memory_utilization: float):
            constructed.append(model)
            self.tok = AutoTokenizer.from_pretrained(tokenizer)
            self.weights = _weights_sha(model)

        def get_tokenizer(self):
            return self.tok

        def generate(self, prompts, params, use_tqdm=False):
            words = sorted(i for t, i in self.tok.get_vocab().items() if t not in self.tok.all_special_tokens)
            results = []
            for prompt, p in zip(prompts, params):
                assert p.top_k == -1 and p.stop_token_ids == [self.tok.eos_token_id]
                assert self.tok.pad_token_id in p.logit_bias and self.tok.eos_token_id not in p.logit_bias
                rng = np.random.default_rng([int(self.weights[:8], 16), p.seed])
                outs = []
                for _ in range(p.n):
                    length = int(rng.integers(1, p.max_tokens + 1))
                    ids = [int(t) for t in rng.choice(words, length)]
                    stop = length < p.max_tokens  # ended on eos, which vLLM keeps in token_ids
                    outs.append(types.SimpleNamespace(token_ids=ids + [self.tok.eos_token_id] * stop,
                                                      finish_reason="stop" if stop else "length"))
                results.append(types.SimpleNamespace(prompt_token_ids=self.tok(prompt)["input_ids"], outputs=outs))
            return results

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)


def test_vllm_unavailable_falls_back_to_hf_with_a_warning(tiny_policy, monkeypatch, caplog):
    monkeypatch.setattr(vllm_backend, "unavailable_reason", lambda: "no CUDA device")
    with caplog.at_level(logging.WARNING, logger="components.stages.generate"):
        table, stats = generate.run(_cfg("vllm"), PROMPTS, tiny_policy, policy_sha="abc", seed=7)
    assert "no CUDA device" in caplog.text and "transformers" in caplog.text
    hf_table, _ = generate.run(_cfg("hf"), PROMPTS, tiny_policy, policy_sha="abc", seed=7)
    assert table.equals(hf_table) and stats["vllm_used"] == 0.0


def test_unavailable_reason_names_the_missing_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert "not installed" in vllm_backend.unavailable_reason()


def test_vllm_engine_is_built_from_the_checkpoint_it_is_given(tiny_factory, tmp_path, monkeypatch):
    tok = tiny_factory.make_tokenizer(tmp_path / "tok")
    a = tiny_factory.make_policy(tmp_path / "a", tok, seed=0)
    b = tiny_factory.make_policy(tmp_path / "b", tok, seed=1)
    constructed: list[str] = []
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(constructed))
    monkeypatch.setattr(vllm_backend, "unavailable_reason", lambda: None)

    runs = [generate.run(_cfg("vllm"), PROMPTS, path, policy_sha=_weights_sha(path), seed=7) for path in (a, b, a)]
    assert constructed == [a, b, a]  # a fresh engine per call, from the path given: never stale weights
    (ta, sa), (tb, _), (ta2, _) = runs
    assert ta.equals(ta2) and ta["completion"].to_pylist() != tb["completion"].to_pylist()
    assert sa["vllm_used"] == 1.0

    hf_table, _ = generate.run(_cfg("hf"), PROMPTS, a, policy_sha=_weights_sha(a), seed=7)
    assert ta.schema == hf_table.schema  # the rollouts contract does not depend on the engine
    for col in ("rollout_id", "prompt_id", "prompt", "policy_version", "seed"):
        assert ta[col].equals(hf_table[col]), col
    # text rule and token count as hf: completion starts with a space, num_tokens counts eos when it stopped
    for completion, n in zip(ta["completion"].to_pylist(), ta["num_tokens"].to_pylist()):
        assert completion.startswith(" ") and "<eos>" not in completion
        words = len(completion.split())
        assert n in (words, words + 1) and words <= 6


def test_evaluate_samples_both_sides_through_the_configured_engine(tiny_factory, tmp_path, monkeypatch):
    """evaluate generates with `generate.backend` too: with vLLM configured, one engine per side, each built from
    that side's checkpoint, and the completions it scores are the engine's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from components.config import EvalConfig
    from components.stages import evaluate

    tok = tiny_factory.make_tokenizer(tmp_path / "tok")
    cand = tiny_factory.make_policy(tmp_path / "cand", tok, seed=0)
    champ = tiny_factory.make_policy(tmp_path / "champ", tok, seed=1)
    rm = AutoModelForSequenceClassification.from_pretrained(cand, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(cand).save_pretrained(tmp_path / "rm")
    constructed: list[str] = []
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(constructed))
    monkeypatch.setattr(vllm_backend, "unavailable_reason", lambda: None)

    cfg = EvalConfig.model_validate({"n_prompts": 3, "samples_per_prompt": 2, "bootstrap_resamples": 100,
                                    "regression_set": "none", "gate": {"heldout_judge": "none"}})
    samples, report = evaluate.run(cfg, _cfg("vllm"), PROMPTS, candidate_path=cand, champion_path=champ,
                                   ref_path=champ, reward_models=[str(tmp_path / "rm")], gold=None,
                                   aggregation="mean", uw_lambda=1.0, seed=3)
    assert constructed == [cand, champ]
    engine, _ = generate.sample(_cfg("vllm").model_copy(update={"samples_per_prompt": 2}),
                                PROMPTS["prompt"].to_pylist(), cand, 3)
    got = samples.filter(pa.compute.equal(samples["model"], "candidate"))["completion"].to_pylist()
    assert got == [g.completion for g in engine]
    assert report["candidate"]["kl"] is not None  # log-probs still come from the transformers model
