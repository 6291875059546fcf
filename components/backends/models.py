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

from components.config import EnsembleConfig, GenerateConfig
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
    """Reward-model ensemble (components.backends.hf.RewardEnsemble) + the loop's aggregation."""

    def __init__(self, paths: list[str], cfg: EnsembleConfig, device: str | None = None):
        from components.backends.hf import RewardEnsemble

        self._rm = RewardEnsemble(paths, device=device)
        self.size, self.cfg, self.aggregation = self._rm.size, cfg, cfg.aggregation

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        return self._rm.score(prompts, completions)

    def reward(self, member_rewards: np.ndarray) -> np.ndarray:
        return aggregate(member_rewards, self.cfg.aggregation, self.cfg.uw_lambda)


@dataclass
class HFGenerator:
    """transformers `generate` (or vLLM where `generate.backend: vllm` can run) over one checkpoint."""

    path: str
    cfg: GenerateConfig
    loaded: tuple | None = None  # (model, tokenizer) when transformers generates: shared with log-prob scoring

    def sample(self, prompts: list[str], n: int, seed: int, **overrides) -> tuple[list, dict]:
        cfg = self.cfg.model_copy(update={"samples_per_prompt": n, **overrides})
        return sample(cfg, prompts, self.path, seed, loaded=self.loaded)


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


class Models:
    """The models of one stage run, by input name. `device` None = cuda when available, else cpu."""

    def __init__(self, inputs: Inputs, *, ensemble: EnsembleConfig = EnsembleConfig(),
                 generate: GenerateConfig = GenerateConfig(), device: str | None = None):
        self.inputs, self.ensemble_cfg, self.generate_cfg, self.device = inputs, ensemble, generate, device
        self._loaded: dict[str, object] = {}

    def path(self, name: str) -> str:
        return self.inputs.path(name)

    def members(self, name: str = ENSEMBLE_INPUT) -> list[str]:
        return member_dirs(self.inputs.path(name)) if self.inputs.has(name) else []

    def _once(self, key: str, load):
        if key not in self._loaded:
            self._loaded[key] = load()
        return self._loaded[key]

    def ensemble(self, name: str = ENSEMBLE_INPUT) -> HFEnsemble | None:
        """The reward-model ensemble of input `name`, or None where it does not exist (before the first one)."""
        if not self.inputs.has(name):
            return None
        return self._once(f"ensemble:{name}", lambda: HFEnsemble(self.members(name), self.ensemble_cfg, self.device))

    def ensemble_at(self, root: str) -> HFEnsemble:
        """An ensemble this stage has just written (train_reward scores its new members on held-out pairs)."""
        return self._once(f"ensemble@{root}", lambda: HFEnsemble(member_dirs(root), self.ensemble_cfg, self.device))

    def causal_lm(self, name: str, path: str | None = None):
        """(model, tokenizer) of policy input `name` (or of `path`, a directory this stage wrote), eval mode."""
        from components.backends import hf

        return self._once(f"lm:{path or name}", lambda: hf.load_causal_lm(path or self.path(name), device=self.device))

    def generator(self, name: str, path: str | None = None) -> HFGenerator:
        """Sampling from policy input `name` (or `path`), on `generate.backend`. With transformers the loaded model
        is shared with log-prob scoring; vLLM builds its engine from the checkpoint and loads nothing here."""
        p = path or self.path(name)
        if self.generate_cfg.backend == "vllm":
            return HFGenerator(p, self.generate_cfg)
        return HFGenerator(p, self.generate_cfg, loaded=self.causal_lm(name, path))

    def release(self, *names: str) -> None:
        """Free what was loaded for `names` (input names or paths), so the next model fits."""
        for key in [k for k in self._loaded if k.split(":", 1)[-1] in names or k.split("@", 1)[-1] in names]:
            del self._loaded[key]
        import gc

        gc.collect()
