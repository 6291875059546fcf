"""Where a stage's models come from: the one place that loads policies and reward models, decides their device,
and frees them.

A stage asks `Models` for what it needs by input name (`models.policy("champion")`, `models.ensemble()`,
`models.generator("policy")`); each is loaded once per stage and kept until `release(name)` or the end of the
stage. Reward ensembles come back aggregated by the loop's `ensemble:` section, generators configured by its
`generate:` section, so stages never see either config, and a threshold change in one stage cannot widen
another stage's cache key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from components.config import EnsembleConfig, GenerateConfig, ModelsConfig
from components.contract import Inputs
from components.uncertainty import aggregate

logger = logging.getLogger(__name__)
ENSEMBLE_INPUT = "reward_model"


def member_dirs(root: str) -> list[str]:
    """The members of an ensemble directory: `member-0..K-1`, or `shared` (one K-head model)."""
    from pathlib import Path

    p = Path(root)
    return [str(d) for d in sorted([*p.glob("member-*"), *p.glob("shared")])]


class HFEnsemble:
    """Reward-model ensemble (components.backends.hf.RewardEnsemble) + the loop's aggregation.

    Its rows: the frozen `ensemble.pretrained` reward models first, then the trained members at `paths`; with no
    trained members yet (`paths` None), every pretrained reward model, frozen or not (the cold start). Models are
    loaded one at a time per `score` call unless `keep_loaded`."""

    def __init__(self, paths: list[str] | None, cfg: EnsembleConfig, device: str | None = None, *,
                 keep_loaded: bool = False, dtype=None):
        from components.backends.hf import RewardEnsemble

        scorers = [p.path for p in cfg.pretrained] if paths is None else [*cfg.frozen_paths, *paths]
        self._rm = RewardEnsemble(scorers, device=device, batch_size=cfg.score_batch_size, keep_loaded=keep_loaded,
                                  dtype=dtype)
        self.paths = scorers
        self.size, self.cfg, self.aggregation = self._rm.size, cfg, cfg.aggregation

    def score(self, prompts: list, completions: list[str]) -> np.ndarray:
        return self._rm.score(prompts, completions)

    def reward(self, member_rewards: np.ndarray) -> np.ndarray:
        return aggregate(member_rewards, self.cfg.aggregation, self.cfg.uw_lambda)


@dataclass
class HFGenerator:
    """transformers `generate` (or vLLM where `generate.backend: vllm` can run) over one checkpoint."""

    path: str
    cfg: GenerateConfig
    loaded: tuple | None = None  # (model, tokenizer) when transformers generates: shared with log-prob scoring
    dtype: str = "auto"  # models.dtype

    def sample(self, prompts: list, n: int, seed: int, **overrides) -> tuple[list, dict]:
        cfg = self.cfg.model_copy(update={"samples_per_prompt": n, **overrides})
        return sample(cfg, prompts, self.path, seed, loaded=self.loaded, dtype=self.dtype)


def sample(cfg: GenerateConfig, texts: list, policy_path: str, seed: int, loaded: tuple | None = None,
           dtype: str = "auto") -> tuple[list, dict]:
    """`cfg.samples_per_prompt` completions per prompt (a string or chat messages) from the checkpoint at
    `policy_path`, on `cfg.backend`; prompts over `cfg.max_prompt_length` tokens get none (stats
    "prompts_too_long"). `loaded`: the (model, tokenizer) of that checkpoint if the caller holds it already."""
    if cfg.backend == "vllm":
        from components.backends import vllm_backend

        reason = vllm_backend.unavailable_reason()
        if reason is None:
            gens, stats = vllm_backend.generate(
                policy_path, texts, cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature, top_p=cfg.top_p, seed=seed,
                gpu_memory_utilization=cfg.gpu_memory_utilization, max_prompt_length=cfg.max_prompt_length,
                dtype=dtype)
            return gens, {**stats, "vllm_used": 1.0}
        logger.warning("generate.backend=vllm cannot run here (%s): using transformers generate instead", reason)
    from components.backends import hf

    model, tokenizer = loaded or hf.load_causal_lm(policy_path, dtype=dtype)
    return hf.generate(model, tokenizer, texts, cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=seed,
                       max_prompt_length=cfg.max_prompt_length)


class Models:
    """The models of one stage run, by input name. `device` None = cuda when available, else cpu. `models`: the
    loop's `models:` section (dtype of every load, log-prob batching, whether several models may stay resident)."""

    def __init__(self, inputs: Inputs, *, ensemble: EnsembleConfig = EnsembleConfig(),
                 generate: GenerateConfig = GenerateConfig(), device: str | None = None,
                 models: ModelsConfig = ModelsConfig()):
        self.inputs, self.ensemble_cfg, self.generate_cfg, self.device = inputs, ensemble, generate, device
        self.models_cfg = models
        self._loaded: dict[str, object] = {}

    def path(self, name: str) -> str:
        return self.inputs.path(name)

    def members(self, name: str = ENSEMBLE_INPUT) -> list[str]:
        return member_dirs(self.inputs.path(name)) if self.inputs.has(name) else []

    def _once(self, key: str, load):
        if key not in self._loaded:
            self._loaded[key] = load()
        return self._loaded[key]

    def _hf_ensemble(self, paths: list[str] | None) -> HFEnsemble:
        mc = self.models_cfg  # models.dtype, models.keep_loaded
        return HFEnsemble(paths, self.ensemble_cfg, self.device, keep_loaded=mc.keep_loaded, dtype=mc.dtype)

    def ensemble(self, name: str = ENSEMBLE_INPUT, *, cold_start: bool = True) -> HFEnsemble | None:
        """The reward-model ensemble of input `name` (+ the frozen pretrained RMs). Where the input does not exist
        (before the first trained one): the `ensemble.pretrained` RMs when there are any and `cold_start`, else
        None."""
        if not self.inputs.has(name):
            if not (cold_start and self.ensemble_cfg.pretrained):
                return None
            return self._once(f"ensemble:{name}", lambda: self._hf_ensemble(None))
        return self._once(f"ensemble:{name}", lambda: self._hf_ensemble(self.members(name)))

    def ensemble_at(self, root: str) -> HFEnsemble:
        """An ensemble this stage has just written (train_reward scores its new members on held-out pairs)."""
        return self._once(f"ensemble@{root}", lambda: self._hf_ensemble(member_dirs(root)))

    def causal_lm(self, name: str, path: str | None = None):
        """(model, tokenizer) of policy input `name` (or of `path`, a directory this stage wrote), eval mode."""
        from components.backends import hf

        return self._once(f"lm:{path or name}", lambda: hf.load_causal_lm(path or self.path(name), device=self.device,
                                                                          dtype=self.models_cfg.dtype))

    def logprobs(self, name: str, prompts: list, completions: list[str], *, path: str | None = None,
                 completion_ids: list | None = None) -> np.ndarray:
        """log π(completion | prompt) under policy input `name` (or `path`), batched and chunked as `models:` says
        (`hf.sequence_logprobs`); `completion_ids`: the sampled ids, scored as they are."""
        from components.backends import hf

        model, tok = self.causal_lm(name, path)
        return hf.sequence_logprobs(model, tok, prompts, completions, batch_size=self.models_cfg.logprob_batch_size,
                                    chunk=self.models_cfg.logprob_chunk, completion_ids=completion_ids)

    def generator(self, name: str, path: str | None = None) -> HFGenerator:
        """Sampling from policy input `name` (or `path`), on `generate.backend`. With transformers the loaded model
        is shared with log-prob scoring; vLLM builds its engine from the checkpoint and loads nothing here."""
        p = path or self.path(name)
        if self.generate_cfg.backend == "vllm":
            return HFGenerator(p, self.generate_cfg, dtype=self.models_cfg.dtype)
        return HFGenerator(p, self.generate_cfg, loaded=self.causal_lm(name, path), dtype=self.models_cfg.dtype)

    def release(self, *names: str) -> None:
        """Free what was loaded for `names` (input names or paths), so the next model fits."""
        for key in [k for k in self._loaded if k.split(":", 1)[-1] in names or k.split("@", 1)[-1] in names]:
            del self._loaded[key]
        import gc
        import sys

        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
