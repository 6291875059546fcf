"""Online RL against a reward function: TRL's RLOOTrainer (default) or GRPOTrainer, CPU or GPU.

Why these and not PPO: TRL 1.16 has no PPOTrainer (only GRPO/RLOO in core, PPO-style online DPO in
`trl.experimental`). RLOO is the PPO family without a critic: advantages are the reward minus the leave-one-out
mean of the other completions of the same prompt, the policy loss is PPO's clipped importance ratio, and the KL
penalty β·Σ_t log π/π_ref is subtracted from the *sequence reward*, exactly the RLHF objective E[r] − β·KL(π‖π_ref)
(Ziegler et al., Stiennon et al.; "Back to Basics: REINFORCE-style optimisation", Ahmadian et al.). No value model
means half the memory and nothing to pre-train, which is what makes it run on the toy's CPU models and scale by
config. GRPO (group-normalised advantages, KL as a per-token loss term) is offered as the alternative.

The reward function is ours (the ensemble aggregate, optionally shaped); KL control is either a fixed β or
Ziegler et al.'s adaptive controller (`components.shaping.adaptive_beta`) applied from a trainer callback
after every logging window, using the sequence KL = TRL's per-token KL × mean completion length.

TRL builds its reference model from `model.config.name_or_path`; we point that at the reference checkpoint
(the loop's initial policy or the previous champion), so the reference goes through TRL's own loading and
DeepSpeed/FSDP preparation. The trained model is saved (LoRA merged) to `out_dir`; TRL's output_dir is a
temporary directory removed afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from components.backends.trainers import (
    common_args,
    fit_and_save,
    last_logged,
    load_tokenizer,
    logged_history,
    peft_config,
    scratch_dir,
    trl_config,
)
from components.shaping import adaptive_beta

if TYPE_CHECKING:
    from components.config import PolicyConfig

RewardFn = Callable[[list[str], list[str]], list[float]]  # (prompts, completions starting with a space) -> reward
RL_LOGGED = ("loss", "reward", "reward_std", "kl", "entropy", "completions/mean_length", "beta")


def _kl_callback(trainer, cfg: PolicyConfig):
    """Adaptive KL control: after each logging window, move trainer.beta toward the target sequence KL."""
    from transformers import TrainerCallback

    class AdaptiveKL(TrainerCallback):
        last_step = 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "kl" not in logs or "completions/mean_length" not in logs:
                return
            kl_seq = logs["kl"] * logs["completions/mean_length"]
            trainer.beta = adaptive_beta(trainer.beta, kl_seq, cfg.rl.kl_target,
                                         state.global_step - self.last_step, cfg.rl.kl_horizon)
            self.last_step = state.global_step
            state.log_history[-1]["beta"] = trainer.beta  # the β in force from here on, for the trajectory

    return AdaptiveKL()


def _check_rl_config(policy_path: str, ref_path: str, prompts: list[str], cfg: PolicyConfig) -> None:
    if cfg.algo not in ("rloo", "grpo"):
        raise ValueError(f"train_rl: algo must be rloo or grpo, got {cfg.algo!r}")
    if not prompts:
        raise ValueError("train_rl needs at least one prompt")
    if cfg.lora.r and ref_path != policy_path:
        raise ValueError("train_policy.lora with an RL algo uses the adapter-free starting policy as the reference;"
                         " set train_policy.reference: previous (or lora.r: 0)")
    if cfg.rl.kl_control == "adaptive" and cfg.beta == 0:
        raise ValueError("train_policy.rl.kl_control=adaptive needs train_policy.beta > 0 (the controller scales β)")


def _policy_pointing_at_reference(policy_path: str, ref_path: str):
    """The policy to train, float32, whose `name_or_path` names the reference TRL loads (module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    model.config.name_or_path = ref_path
    return model


def _rl_args(config_cls, tmp_dir: str, cfg: PolicyConfig, tokenizer, *, seed: int, n_completions: int):
    """TRL's RLOO/GRPO config: sampling as `hf.generate` samples (pure temperature, pad/bos/unk forbidden) and the
    KL coefficient β = train_policy.beta (the adaptive controller's starting value)."""
    from components.backends.hf import forbidden_token_ids

    steps = max(1, math.ceil(n_completions / cfg.batch_size)) * cfg.epochs
    return trl_config(
        config_cls, "train_policy", cfg.trainer_args,
        **common_args(tmp_dir, lr=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed,
                      steps=steps),
        num_generations=cfg.rl.num_generations,
        max_completion_length=cfg.rl.max_new_tokens,
        temperature=cfg.rl.temperature,
        top_p=1.0,
        beta=cfg.beta,
        generation_kwargs={"suppress_tokens": forbidden_token_ids(tokenizer) or None},
    )


def train_rl(policy_path: str, ref_path: str, prompts: list[str], reward_fn: RewardFn, out_dir: Path,
             cfg: PolicyConfig, *, seed: int) -> dict:
    """`cfg.epochs` passes over `prompts` (× rl.prompt_repeats), rl.num_generations completions each, batch_size
    completions per optimizer step. Returns the last logged window of RL_LOGGED (reward = the shaped reward the
    policy optimised; kl = TRL's per-token mean), train_loss, seconds, steps, beta_final, and `history` (the
    per-window trajectories)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    _check_rl_config(policy_path, ref_path, prompts, cfg)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(policy_path, padding_side="left")
    model = _policy_pointing_at_reference(policy_path, ref_path)
    data = Dataset.from_list([{"prompt": p} for p in prompts * cfg.rl.prompt_repeats])
    config_cls, trainer_cls = (RLOOConfig, RLOOTrainer) if cfg.algo == "rloo" else (GRPOConfig, GRPOTrainer)

    def ensemble_reward(prompts: list[str], completions: list[str], **_) -> list[float]:
        return reward_fn(prompts, [c if c[:1].isspace() else " " + c for c in completions])

    with scratch_dir(out_dir) as tmp:
        args = _rl_args(config_cls, tmp, cfg, tokenizer, seed=seed,
                        n_completions=len(data) * cfg.rl.num_generations)
        trainer = trainer_cls(model=model, reward_funcs=ensemble_reward, args=args, train_dataset=data,
                              processing_class=tokenizer, peft_config=peft_config(cfg.lora, "CAUSAL_LM"))
        if cfg.rl.kl_control == "adaptive":
            trainer.add_callback(_kl_callback(trainer, cfg))
        result = fit_and_save(trainer, tokenizer, out_dir)

    metrics = last_logged(trainer.state.log_history, RL_LOGGED)
    metrics.update(train_loss=float(result.training_loss), seconds=time.perf_counter() - t0,
                   steps=int(trainer.state.global_step), n_prompts=len(data), beta_final=float(trainer.beta),
                   history=logged_history(trainer.state.log_history, RL_LOGGED))
    return metrics
