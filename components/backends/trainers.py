"""Trainers: a Bradley-Terry reward-model member (trl.RewardTrainer) and DPO (trl.DPOTrainer), CPU or GPU.

Both read a starting checkpoint with `from_pretrained`, train, and `save_pretrained` the result (safetensors +
tokenizer) into `out_dir`, nothing else: no checkpoints, no `training_args.bin`, no files outside `out_dir`
(TRL's output_dir is a temporary directory next to `out_dir`, removed afterwards). They return a flat dict of
metrics for the caller to log. torch/transformers/trl/datasets are imported inside the functions.

TRL 1.16 specifics handled here (see shared/STACK-NOTES.md): configs default to bf16 and gradient checkpointing
(both off here), `warmup_ratio` is gone (a fraction goes to `warmup_steps`), `processing_class=tokenizer`, the DPO
reference model is passed explicitly, DPOTrainer patches `model.forward` in place (so the trained model is saved
and must be reloaded from disk before any other use), and DPO's `rpo_alpha` is gone: the SFT term on chosen is
the loss list `["sigmoid", "sft"]` weighted `[1, dpo.sft_coef]`.

Optional LoRA (`cfg.lora.r > 0`, peft): TRL wraps the model; the adapter is merged into the weights before saving,
so every checkpoint stays a plain `from_pretrained` directory. `cfg.trainer_args` reach the TRL config unchanged
(accelerate/DeepSpeed/FSDP settings on real hardware).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from components.config import DPOConfig, LoraSettings, PolicyConfig, RewardConfig

logger = logging.getLogger(__name__)

WARMUP_FRACTION = 0.1  # of the optimizer steps; transformers reads warmup_steps < 1 as a fraction
ROBUST_LABEL_SMOOTHING = 0.1  # robust DPO's assumed label-flip rate (TRL's and the paper's suggested value)
REWARD_CENTERING = 0.01  # TRL center_rewards_coefficient: keeps members' reward offsets near 0 and comparable
LOG_WINDOWS = 10  # the trainer logs averages over ~1/LOG_WINDOWS of the run; "last" metrics = the last window


def trl_config(config_cls, section: str, trainer_args: dict, **kwargs):
    """`config_cls(**kwargs, **trainer_args)`; a bad pass-through name is an error naming the config field."""
    try:
        return config_cls(**{**kwargs, **trainer_args})
    except TypeError as err:
        raise ValueError(f"{section}.trainer_args: {err}") from None


def peft_config(lora: LoraSettings, task_type: str):
    """A peft LoraConfig, or None when LoRA is off (r = 0)."""
    if lora.r == 0:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, task_type=task_type)


def common_args(tmp_dir: str, *, lr: float, epochs: int, batch_size: int, seed: int, steps: int) -> dict:
    import torch

    return {
        "output_dir": tmp_dir,
        "learning_rate": lr,
        "num_train_epochs": epochs,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "warmup_steps": WARMUP_FRACTION,
        "logging_steps": max(1, math.ceil(steps / LOG_WINDOWS)),
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "bf16": False,
        "fp16": False,
        "activation_checkpointing": False,  # transformers 5.23's name; overrides TRL's gradient_checkpointing=True
        "use_cpu": not torch.cuda.is_available(),
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
    }


def quiet(trainer) -> None:
    """disable_tqdm swaps the progress bar for a callback that prints every log dict; we return metrics instead."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def logged_history(log_history: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """The trainer's per-logging-window values of `keys` (the trajectories), each with its optimizer `step`."""
    return [{"step": e["step"], **{k: float(e[k]) for k in keys if k in e}} for e in log_history
            if any(k in e for k in keys)]


def last_logged(log_history: list[dict], keys: tuple[str, ...]) -> dict:
    out = {}
    for key in keys:
        vals = [entry[key] for entry in log_history if key in entry]
        out[key] = float(vals[-1]) if vals else float("nan")
    return out


def save(model, tokenizer, out_dir: Path, accelerator=None) -> None:
    """save_pretrained (safetensors) + tokenizer; a LoRA-wrapped model is merged first (plain checkpoint).

    With the trainer's `accelerator` (a run under `accelerate launch`, several processes): every rank takes part
    in gathering the weights (DeepSpeed ZeRO-3 shards them), only the main process writes, one writer per file,
    and no rank returns before the checkpoint is complete."""
    state = None
    if accelerator is not None:
        from accelerate.utils import DistributedType

        if accelerator.distributed_type == DistributedType.DEEPSPEED and not hasattr(model, "merge_and_unload"):
            state = accelerator.get_state_dict(model)  # a collective: all ranks call it
        model = accelerator.unwrap_model(model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if accelerator is None or accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir), **({"state_dict": state} if state is not None else {}))
        tokenizer.save_pretrained(str(out_dir))
    if accelerator is not None:
        accelerator.wait_for_everyone()


def steps_for(n: int, batch_size: int, epochs: int) -> int:
    return max(1, math.ceil(n / batch_size)) * epochs


def load_tokenizer(path: str, *, padding_side: str | None = None):
    """The checkpoint's tokenizer; pad falls back to eos only when it has none (the collators need a pad id)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def scratch_dir(out_dir: Path, tag: str = "trl") -> tempfile.TemporaryDirectory:
    """The trainer's output_dir: a hidden temporary directory next to `out_dir`, removed on exit, so a training
    leaves nothing behind but the checkpoint it saves."""
    return tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-{tag}-", dir=parent_dir(out_dir))


def fit_and_save(trainer, tokenizer, out_dir: Path):
    """Train, then save the (LoRA-merged) model to `out_dir`; returns the TrainOutput. TRL patches the trained
    model's forward in place, so callers reload from `out_dir` rather than reuse `trainer.model`."""
    quiet(trainer)
    result = trainer.train()
    save(trainer.model, tokenizer, out_dir, trainer.accelerator)
    return result


def scored_pair_ids(tokenizer, pair: dict) -> tuple[list[int], list[int]]:
    """(chosen, rejected) token ids of a preference pair, each side exactly as `hf.RewardEnsemble` scores it."""
    from components.backends.hf import encode_scored

    return (encode_scored(tokenizer, pair["prompt"], pair["chosen"])[0],
            encode_scored(tokenizer, pair["prompt"], pair["rejected"])[0])


def _fresh_reward_member(init_path: str, tokenizer, seed: int):
    """A one-head sequence-classification model on `init_path`'s trunk; a new score head is drawn from `seed`."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    set_seed(seed)  # the fresh score head's initialisation
    with suppress_seqcls_warning():  # causal LM -> seq-cls: lm_head unused, score head new (expected)
        model = AutoModelForSequenceClassification.from_pretrained(init_path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _heldout_ranking(model_dir: Path, eval_pairs: list[dict]) -> tuple[float, float]:
    """(share of pairs with r(chosen) > r(rejected), mean r(chosen) − r(rejected)) of the saved reward model,
    loaded exactly as later stages load it; NaN for both without pairs."""
    from components.backends.hf import load_reward_model, reward_scores

    if not eval_pairs:
        return float("nan"), float("nan")
    model, tokenizer = load_reward_model(str(model_dir))
    prompts = [p["prompt"] for p in eval_pairs]
    r_chosen = reward_scores(model, tokenizer, prompts, [p["chosen"] for p in eval_pairs])[0]
    r_rejected = reward_scores(model, tokenizer, prompts, [p["rejected"] for p in eval_pairs])[0]
    return float(np.mean(r_chosen > r_rejected)), float(np.mean(r_chosen - r_rejected))


def train_reward_member(
    init_path: str,
    train_pairs: list[dict],
    eval_pairs: list[dict],
    out_dir: Path,
    cfg: RewardConfig,
    *,
    seed: int,
) -> dict:
    """Bradley-Terry reward model, loss -log σ(r(x, y_w) - r(x, y_l)), trained with trl.RewardTrainer.

    `init_path` is a causal LM (a fresh score head is initialised from `seed`) or a reward model (warm start).
    Pairs are dicts with prompt/chosen/rejected (completions start with a space). Each side is scored on
    `prompt + completion + eos` tokenized exactly as `hf.RewardEnsemble` scores it (we pre-tokenize with
    `hf.encode_scored`, so TRL's own text processing is bypassed); pairs longer than `cfg.max_length` tokens are
    dropped (TRL's rule) and counted. Returns train_loss, heldout_accuracy (share of eval pairs with
    r(chosen) > r(rejected); NaN without eval pairs), heldout_margin, seconds, steps, n_train, dropped_too_long.
    """
    from datasets import Dataset
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(init_path)
    model = _fresh_reward_member(init_path, tokenizer, seed)
    rows = [dict(zip(("chosen_ids", "rejected_ids"), scored_pair_ids(tokenizer, p))) for p in train_pairs]
    kept = sum(max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= cfg.max_length for r in rows)  # TRL drops the rest
    if kept == 0:
        raise ValueError(f"no training pair fits max_length={cfg.max_length} tokens ({len(rows)} pairs given)")

    with scratch_dir(out_dir) as tmp:
        args = trl_config(
            TRLRewardConfig, "train_reward", cfg.trainer_args,
            **common_args(tmp, lr=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed,
                          steps=steps_for(kept, cfg.batch_size, cfg.epochs)),
            max_length=cfg.max_length,
            center_rewards_coefficient=REWARD_CENTERING,
        )
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
            peft_config=peft_config(cfg.lora, "SEQ_CLS"),
        )
        result = fit_and_save(trainer, tokenizer, out_dir)
    heldout_accuracy, heldout_margin = _heldout_ranking(out_dir, eval_pairs)
    return {
        "train_loss": float(result.training_loss),
        "heldout_accuracy": heldout_accuracy,
        "heldout_margin": heldout_margin,
        "seconds": time.perf_counter() - t0,
        "steps": int(trainer.state.global_step),
        "n_train": kept,
        "dropped_too_long": len(rows) - kept,
    }


def parent_dir(out_dir: Path) -> str:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return str(out_dir.parent)


def _dpo_losses(dpo: DPOConfig) -> dict:
    """TRL's loss list for `train_policy.dpo`: the DPO variant, plus the weighted "sft" term (RPO) when on."""
    losses = {"loss_type": [dpo.loss_type], "loss_weights": [1.0]}
    if dpo.loss_type == "robust":
        losses["label_smoothing"] = ROBUST_LABEL_SMOOTHING
    if dpo.sft_coef > 0:
        losses["loss_type"].append("sft")
        losses["loss_weights"].append(dpo.sft_coef)
    return losses


def _check_dpo_tokens(example: dict, tokenizer, pair: dict) -> None:
    """Warn if TRL tokenized a pair differently from `hf.encode_scored` (then the KL/log-prob estimates of
    `hf.sequence_logprobs` would score other tokens than DPO trained on)."""
    from components.backends.hf import encode_scored

    ids, prompt_len = encode_scored(tokenizer, pair["prompt"], pair["chosen"])
    if example["prompt_ids"] != ids[:prompt_len] or example["chosen_ids"] != ids[prompt_len:]:
        logger.warning(
            "DPOTrainer tokenized %r differently from hf.encode_scored: TRL %s + %s, ours %s + %s",
            pair["prompt"] + pair["chosen"],
            example["prompt_ids"],
            example["chosen_ids"],
            ids[:prompt_len],
            ids[prompt_len:],
        )


DPO_LOGGED = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


def _policy_and_reference(policy_path: str, ref_path: str):
    """The policy to train and the frozen reference DPO measures it against, both float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(ref_path, dtype=torch.float32)
    ref_model.eval().requires_grad_(False)
    return model, ref_model


def dpo_args(tmp_dir: str, cfg: PolicyConfig, *, seed: int, steps: int):
    """TRL's DPOConfig for `train_policy`: β, the loss variant of `train_policy.dpo`, then `trainer_args`."""
    from trl import DPOConfig as TRLDPOConfig

    return trl_config(
        TRLDPOConfig, "train_policy", cfg.trainer_args,
        **common_args(tmp_dir, lr=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed,
                      steps=steps),
        beta=cfg.beta,
        max_length=cfg.max_length,
        **_dpo_losses(cfg.dpo),
    )


def train_dpo(
    policy_path: str,
    ref_path: str,
    pairs: list[dict],
    out_dir: Path,
    cfg: PolicyConfig,
    *,
    seed: int,
) -> dict:
    """DPO from `policy_path` against the reference loaded from `ref_path`, saved to `out_dir`.

    dpo.loss_type sigmoid/ipo/robust are TRL's (robust with label_smoothing = ROBUST_LABEL_SMOOTHING);
    dpo.sft_coef > 0 adds TRL's "sft" loss (mean NLL of chosen tokens) with that weight, i.e. RPO. TRL tokenizes
    `prompt + completion + eos` as one string, the same text `hf.sequence_logprobs` scores. Returns the last
    logged window of loss, rewards/{chosen,rejected,margins,accuracies}, logps/{chosen,rejected}, plus
    train_loss (mean over the run), seconds, steps, n_train.
    """
    from datasets import Dataset
    from trl import DPOTrainer

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if not pairs:
        raise ValueError("train_dpo needs at least one preference pair")
    tokenizer = load_tokenizer(policy_path, padding_side="left")
    model, ref_model = _policy_and_reference(policy_path, ref_path)
    data = Dataset.from_list(
        [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    )

    with scratch_dir(out_dir) as tmp:
        args = dpo_args(tmp, cfg, seed=seed, steps=steps_for(len(pairs), cfg.batch_size, cfg.epochs))
        trainer = DPOTrainer(
            model=model, ref_model=ref_model, args=args, train_dataset=data, processing_class=tokenizer,
            peft_config=peft_config(cfg.lora, "CAUSAL_LM"),
        )
        _check_dpo_tokens(trainer.train_dataset[0], tokenizer, pairs[0])
        result = fit_and_save(trainer, tokenizer, out_dir)
        n_train = len(trainer.train_dataset)

    metrics = last_logged(trainer.state.log_history, DPO_LOGGED)
    metrics["history"] = logged_history(trainer.state.log_history, DPO_LOGGED)
    metrics.update(
        train_loss=float(result.training_loss),
        seconds=time.perf_counter() - t0,
        steps=int(trainer.state.global_step),
        n_train=n_train,
    )
    return metrics
