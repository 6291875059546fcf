"""Online RL against a reward function: TRL's RLOOTrainer (default) or GRPOTrainer, CPU or GPU.

Why these and not PPO: TRL 1.16 has no PPOTrainer (only GRPO/RLOO in core, PPO-style online DPO in
`trl.experimental`). RLOO is the PPO family without a critic: advantages are the reward minus the leave-one-out
mean of the other completions of the same prompt, the policy loss is PPO's clipped importance ratio, and the KL
penalty β·Σ_t log π/π_ref is subtracted from the *sequence reward*, exactly the RLHF objective E[r] − β·KL(π‖π_ref)
(Ziegler et al., Stiennon et al.; "Back to Basics: REINFORCE-style optimisation", Ahmadian et al.). No value model
means half the memory and nothing to pre-train, which is what makes it run on the toy's CPU models and scale by
config. GRPO (group-normalised advantages, KL as a per-token loss term) is offered as the alternative.

Prompts are plain strings or chat messages (TRL's conversational format: TRL renders them with the policy's chat
template, and its completions come back as assistant messages, which the reward function gets as text); a
prompt longer than `train_policy.max_prompt_length` tokens is skipped and counted. The reward function is ours
(the ensemble aggregate, optionally shaped); KL control is either a fixed β or
Ziegler et al.'s adaptive controller (`components.shaping.adaptive_beta`) applied from a trainer callback
after every logging window, using the sequence KL = TRL's per-token KL × mean completion length.

TRL builds its reference model from `model.config.name_or_path`; we point that at the reference checkpoint
(the loop's initial policy or the previous champion), so the reference goes through TRL's own loading and
DeepSpeed/FSDP preparation. The trained model is saved (LoRA merged) to `out_dir`; TRL's output_dir is a
temporary directory removed afterwards.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from components.backends.trainers import (
    checkpoint_dtype,
    common_args,
    compute_dtype,
    fit_and_save,
    last_logged,
    load_tokenizer,
    logged_history,
    mixed_bf16,
    peft_config,
    scratch_dir,
    trl_config,
)
from components.shaping import adaptive_beta

if TYPE_CHECKING:
    from components.config import PolicyConfig

# (prompts: str or chat messages, completion texts) -> reward; a plain prompt's completion starts with a space
RewardFn = Callable[[list, list[str]], list[float]]
logger = logging.getLogger(__name__)
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


def _policy_pointing_at_reference(policy_path: str, ref_path: str, dtype):
    """The policy to train, in `dtype`, whose `name_or_path` names the reference TRL loads (module docstring;
    TRL loads the reference in the policy's dtype)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype)
    model.config.name_or_path = ref_path
    return model


def _rl_args(config_cls, tmp_dir: str, cfg: PolicyConfig, tokenizer, *, seed: int, n_completions: int,
             bf16: bool = False, stop_ids: list[int] = ()):
    """TRL's RLOO/GRPO config: sampling as `hf.generate` samples (pure temperature, pad/bos/unk forbidden, except
    the checkpoint's stop ids: TRL stops on all of them, and Qwen's pad is one) and the KL coefficient
    β = train_policy.beta (the adaptive controller's starting value)."""
    from components.backends.hf import forbidden_token_ids

    steps = max(1, math.ceil(n_completions / cfg.batch_size)) * cfg.epochs
    return trl_config(
        config_cls, "train_policy", cfg.trainer_args,
        **common_args(tmp_dir, lr=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed,
                      steps=steps, bf16=bf16, gradient_checkpointing=cfg.gradient_checkpointing),
        num_generations=cfg.rl.num_generations,
        max_completion_length=cfg.rl.max_new_tokens,
        temperature=cfg.rl.temperature,
        top_p=1.0,
        beta=cfg.beta,
        generation_kwargs={"suppress_tokens": forbidden_token_ids(tokenizer, stop_ids) or None},
    )


def _stop_ids(policy_path: str, tokenizer) -> list[int]:
    """`hf.stop_token_ids` of the checkpoint, read from its generation_config before the model is loaded."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from components.backends.hf import stop_token_ids

    try:
        gen = GenerationConfig.from_pretrained(policy_path)
    except OSError:  # a checkpoint without generation_config.json
        gen = None
    return stop_token_ids(tokenizer, SimpleNamespace(generation_config=gen))


def fitting_prompts(tokenizer, prompts: list, cfg: PolicyConfig) -> list:
    """The prompts whose `hf.prompt_ids` fit `train_policy.max_prompt_length` (TRL 1.16's RL trainers do not
    truncate prompts); the others are skipped with a warning, and none left is an error naming the setting."""
    from components.backends.hf import prompt_ids

    if len({isinstance(p, str) for p in prompts}) > 1:
        raise ValueError("train_rl: the prompts mix plain text and chat messages; TRL needs one format per run")
    kept = [p for p in prompts if len(prompt_ids(tokenizer, p)) <= cfg.max_prompt_length]
    if len(kept) < len(prompts):
        logger.warning("train_policy: %d of %d RL prompts skipped: longer than train_policy.max_prompt_length=%d"
                       " tokens", len(prompts) - len(kept), len(prompts), cfg.max_prompt_length)
    if not kept:
        raise ValueError(f"train_policy: none of the {len(prompts)} RL prompts fits train_policy.max_prompt_length="
                         f"{cfg.max_prompt_length} tokens (raise it)")
    return kept


def _completion_text(prompt, completion) -> str:
    """TRL's completion as our reward function takes it: a chat completion ([assistant message]) as its text; a
    plain one starting with a space (`prompt + completion` is the full text)."""
    if not isinstance(completion, str):
        return completion[-1]["content"]
    return completion if completion[:1].isspace() else " " + completion


def train_rl(policy_path: str, ref_path: str, prompts: list, reward_fn: RewardFn, out_dir: Path,
             cfg: PolicyConfig, *, seed: int, dtype: str | None = "auto") -> dict:
    """`cfg.epochs` passes over `prompts` (strings, or chat messages TRL renders with the policy's chat template;
    × rl.prompt_repeats), rl.num_generations completions each, batch_size completions per optimizer step. Models
    load and train in `dtype` (`models.dtype`); the candidate is saved in the policy checkpoint's dtype. Returns
    the last logged window of RL_LOGGED (reward = the shaped reward the policy optimised; kl = TRL's per-token
    mean), train_loss, seconds, steps, n_prompts, prompts_too_long, beta_final, and `history` (the per-window
    trajectories)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    _check_rl_config(policy_path, ref_path, prompts, cfg)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(policy_path, padding_side="left")
    kept = fitting_prompts(tokenizer, prompts, cfg)
    data = Dataset.from_list([{"prompt": p} for p in kept * cfg.rl.prompt_repeats])
    config_cls, trainer_cls = (RLOOConfig, RLOOTrainer) if cfg.algo == "rloo" else (GRPOConfig, GRPOTrainer)
    torch_dtype = compute_dtype(dtype)

    def ensemble_reward(prompts: list, completions: list, **_) -> list[float]:
        return reward_fn(prompts, [_completion_text(p, c) for p, c in zip(prompts, completions)])

    with scratch_dir(out_dir) as tmp:
        # the TRL config first: under DeepSpeed ZeRO-3 it must exist before from_pretrained to shard at load
        args = _rl_args(config_cls, tmp, cfg, tokenizer, seed=seed, n_completions=len(data) * cfg.rl.num_generations,
                        bf16=mixed_bf16(torch_dtype), stop_ids=_stop_ids(policy_path, tokenizer))
        model = _policy_pointing_at_reference(policy_path, ref_path, torch_dtype)
        trainer = trainer_cls(model=model, reward_funcs=ensemble_reward, args=args, train_dataset=data,
                              processing_class=tokenizer, peft_config=peft_config(cfg.lora, "CAUSAL_LM"))
        if cfg.rl.kl_control == "adaptive":
            trainer.add_callback(_kl_callback(trainer, cfg))
        result = fit_and_save(trainer, tokenizer, out_dir, dtype=checkpoint_dtype(policy_path))

    metrics = last_logged(trainer.state.log_history, RL_LOGGED)
    metrics.update(train_loss=float(result.training_loss), seconds=time.perf_counter() - t0,
                   steps=int(trainer.state.global_step), n_prompts=len(data), prompts_too_long=len(prompts) - len(kept),
                   beta_final=float(trainer.beta), history=logged_history(trainer.state.log_history, RL_LOGGED))
    return metrics
