"""Trainers: a Bradley-Terry reward-model member (trl.RewardTrainer) and DPO (trl.DPOTrainer), CPU or GPU.

Both read a starting checkpoint with `from_pretrained`, train, and `save_pretrained` the result (safetensors +
tokenizer) into `out_dir`, nothing else: no checkpoints, no `training_args.bin`, no files outside `out_dir`
(TRL's output_dir is a temporary directory next to `out_dir`, removed afterwards). They return a flat dict of
metrics for the caller to log. torch/transformers/trl/datasets are imported inside the functions.

Precision: models load and train in `models.dtype` (`compute_dtype`: auto = bf16 on CUDA, fp32 on CPU; bf16
autocast only on CUDA) and a checkpoint is saved in the dtype of the one it started from (`checkpoint_dtype`).
The TRL config is built before any model, so DeepSpeed ZeRO-3 can shard at load.

DPO trains on token ids we compute (`dpo_rows`): a policy-sampled side exactly as sampled (`chosen_ids` /
`rejected_ids`), a text side by TRL's own rule (`hf.encode_scored`), prompts left-truncated to
`max_prompt_length`, completions cut to `max_length`; `PreTokenizedDPOTrainer` skips TRL's re-tokenization.

TRL 1.16 specifics handled here (see shared/STACK-NOTES.md): configs default to bf16 and gradient checkpointing
(both off here unless asked: `gradient_checkpointing`), `warmup_ratio` is gone (a fraction goes to
`warmup_steps`), `processing_class=tokenizer`, the DPO reference model is passed explicitly, DPOTrainer
patches `model.forward` in place (so the trained model is saved and must be reloaded from disk before any other
use), and DPO's `rpo_alpha` is gone: the SFT term on chosen is the loss list `["sigmoid", "sft"]` weighted
`[1, dpo.sft_coef]`.

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
    """`config_cls(**kwargs, **trainer_args)`; a bad pass-through name is an error naming the config field. A
    `gradient_checkpointing` in trainer_args wins over our `activation_checkpointing` (its transformers 5 name)."""
    merged = {**kwargs, **trainer_args}
    if "gradient_checkpointing" in trainer_args and "activation_checkpointing" not in trainer_args:
        merged["activation_checkpointing"] = trainer_args["gradient_checkpointing"]
    try:
        return config_cls(**merged)
    except TypeError as err:
        raise ValueError(f"{section}.trainer_args: {err}") from None


def peft_config(lora: LoraSettings, task_type: str):
    """A peft LoraConfig, or None when LoRA is off (r = 0)."""
    if lora.r == 0:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, task_type=task_type)


def common_args(tmp_dir: str, *, lr: float, epochs: int, batch_size: int, seed: int, steps: int,
                bf16: bool = False, gradient_checkpointing: bool = False) -> dict:
    """TrainingArguments shared by every trainer; `bf16` = bf16 mixed precision (a bf16 model on CUDA),
    `gradient_checkpointing` = recompute activations in the backward pass (under both of its names)."""
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
        "bf16": bf16,
        "fp16": False,
        "gradient_checkpointing": gradient_checkpointing,  # TRL defaults it to True; ours is off unless asked
        "activation_checkpointing": gradient_checkpointing,  # transformers 5.23's name (the one it reads)
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


def save(model, tokenizer, out_dir: Path, accelerator=None, dtype=None) -> None:
    """save_pretrained (safetensors) + tokenizer; a LoRA-wrapped model is merged first (plain checkpoint).
    `dtype` (a torch dtype, e.g. `checkpoint_dtype` of the starting checkpoint): the weights are written in it,
    so a bf16 policy gives a bf16 candidate even when it was trained in fp32.

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
    if dtype is not None:
        model = model.to(dtype)
        state = None if state is None else {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
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


def fit_and_save(trainer, tokenizer, out_dir: Path, dtype=None):
    """Train, then save the (LoRA-merged) model to `out_dir` (in `dtype`, see `save`); returns the TrainOutput.
    TRL patches the trained model's forward in place, so callers reload from `out_dir` rather than reuse
    `trainer.model`."""
    quiet(trainer)
    result = trainer.train()
    save(trainer.model, tokenizer, out_dir, trainer.accelerator, dtype=dtype)
    return result


def compute_dtype(setting: str | None = "auto"):
    """`models.dtype` as the torch dtype to load and train in: `hf.torch_dtype` where it exists; else "auto" (or
    None) = bfloat16 on CUDA, float32 on CPU, and a name = that torch dtype."""
    import torch

    from components.backends import hf

    if hasattr(hf, "torch_dtype"):
        return hf.torch_dtype(setting or "auto", None)
    if setting in (None, "auto"):
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, setting)


def checkpoint_dtype(path: str):
    """The torch dtype a checkpoint's weights are stored in (its config's `dtype`; float32 when unrecorded)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def mixed_bf16(dtype) -> bool:
    """TrainingArguments.bf16: autocast in bf16 when the model trains in bf16 on CUDA (never on CPU)."""
    import torch

    return dtype == torch.bfloat16 and torch.cuda.is_available()


def scored_pair_ids(tokenizer, pair: dict) -> tuple[list[int], list[int]]:
    """(chosen, rejected) token ids of a preference pair, each side exactly as `hf.RewardEnsemble` scores it: the
    text (not the policy's sampled ids: the reward model scores with its own tokenizer and chat template)."""
    from components.backends.hf import scored_ids

    chosen, rejected = scored_ids(tokenizer, [pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]])
    return chosen, rejected


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

    `init_path` is a causal LM (a fresh score head is initialised from `seed`) or a reward model (warm start, or
    a pretrained RM as starting point); the result is saved in `init_path`'s dtype (a bf16 RM stays bf16).
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
    rows = [dict(zip(("chosen_ids", "rejected_ids"), scored_pair_ids(tokenizer, p))) for p in train_pairs]
    kept = sum(max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= cfg.max_length for r in rows)  # TRL drops the rest
    if kept == 0:
        raise ValueError(f"no training pair fits max_length={cfg.max_length} tokens ({len(rows)} pairs given)")

    with scratch_dir(out_dir) as tmp:
        args = trl_config(  # before the model: under DeepSpeed ZeRO-3 the config must exist when it is built
            TRLRewardConfig, "train_reward", cfg.trainer_args,
            **common_args(tmp, lr=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed,
                          steps=steps_for(kept, cfg.batch_size, cfg.epochs),
                          gradient_checkpointing=cfg.gradient_checkpointing),
            max_length=cfg.max_length,
            center_rewards_coefficient=REWARD_CENTERING,
        )
        model = _fresh_reward_member(init_path, tokenizer, seed)
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
            peft_config=peft_config(cfg.lora, "SEQ_CLS"),
        )
        result = fit_and_save(trainer, tokenizer, out_dir, dtype=checkpoint_dtype(init_path))
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


def _pair_ids(tokenizer, pair: dict) -> dict:
    """prompt_ids/chosen_ids/rejected_ids of a pair: a side with sampled ids (`chosen_ids`/`rejected_ids`, incl.
    eos) is `hf.prompt_ids(prompt) + those ids` exactly; a text side follows TRL's rule (`hf.encode_scored`: the
    plain `prompt + completion + eos` string, or the chat template of prompt + [assistant: completion]). As in
    TRL, the shared prompt part ends where either side stops extending the prompt's own ids."""
    from components.backends.hf import encode_scored

    sides = [encode_scored(tokenizer, pair["prompt"], pair[side], completion_ids=pair.get(f"{side}_ids"))
             for side in ("chosen", "rejected")]
    n = min(k for _, k in sides)
    return {"prompt_ids": sides[0][0][:n], "chosen_ids": sides[0][0][n:], "rejected_ids": sides[1][0][n:]}


def dpo_rows(tokenizer, pairs: list[dict], cfg: PolicyConfig) -> tuple[list[dict], int]:
    """(the token rows DPO trains on, the number of pairs skipped as too long). Truncation: the prompt keeps its
    last `max_prompt_length` ids (the latest turns and the generation prompt), then each completion its first
    `max_length - len(prompt)` ids; a pair whose prompt leaves no room for a completion is skipped."""
    rows, too_long = [], 0
    for pair in pairs:
        row = _pair_ids(tokenizer, pair)
        prompt = row["prompt_ids"][-cfg.max_prompt_length:]
        room = cfg.max_length - len(prompt)
        if room <= 0:
            too_long += 1
            continue
        rows.append({"prompt_ids": prompt, "chosen_ids": row["chosen_ids"][:room],
                     "rejected_ids": row["rejected_ids"][:room]})
    if too_long:
        logger.warning("train_policy: %d of %d preference pairs skipped: the prompt leaves no room for a completion"
                       " (train_policy.max_length=%d, max_prompt_length=%d)", too_long, len(pairs), cfg.max_length,
                       cfg.max_prompt_length)
    if not rows:
        raise ValueError(f"train_policy: none of the {len(pairs)} preference pairs fits: every prompt fills "
                         f"train_policy.max_length={cfg.max_length} tokens (raise train_policy.max_length or lower "
                         f"train_policy.max_prompt_length={cfg.max_prompt_length})")
    return rows, too_long


def _pretokenized_dpo_trainer():
    """trl.DPOTrainer that trains on the dataset's prompt_ids/chosen_ids/rejected_ids as given: TRL 1.16 always
    re-tokenizes text in `_prepare_dataset` (and drops over-long rows there); `dpo_rows` did both already."""
    from trl import DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return PreTokenizedDPOTrainer


DPO_LOGGED = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


def _policy_and_reference(policy_path: str, ref_path: str, dtype):
    """The policy to train and the frozen reference DPO measures it against, both in `dtype`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype)
    ref_model = AutoModelForCausalLM.from_pretrained(ref_path, dtype=dtype)
    ref_model.eval().requires_grad_(False)
    return model, ref_model


def dpo_args(tmp_dir: str, cfg: PolicyConfig, *, seed: int, steps: int, bf16: bool = False):
    """TRL's DPOConfig for `train_policy`: β, the loss variant of `train_policy.dpo`, then `trainer_args`."""
    from trl import DPOConfig as TRLDPOConfig

    return trl_config(
        TRLDPOConfig, "train_policy", cfg.trainer_args,
        **common_args(tmp_dir, lr=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed,
                      steps=steps, bf16=bf16, gradient_checkpointing=cfg.gradient_checkpointing),
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
    dtype: str | None = "auto",
) -> dict:
    """DPO from `policy_path` against the reference loaded from `ref_path`, saved to `out_dir`.

    Pairs: prompt (a string or chat messages), chosen, rejected, optional chosen_ids/rejected_ids (the sampled
    tokens). DPO trains on exactly the tokens of `dpo_rows` (the sampled ids where given; else TRL's text rule,
    which `hf.sequence_logprobs` scores too). dpo.loss_type sigmoid/ipo/robust are TRL's (robust with
    label_smoothing = ROBUST_LABEL_SMOOTHING); dpo.sft_coef > 0 adds TRL's "sft" loss (mean NLL of chosen
    tokens) with that weight, i.e. RPO. Models load and train in `dtype` (`models.dtype`); the candidate is
    saved in the dtype of the `policy_path` checkpoint. Returns the last logged window of loss,
    rewards/{chosen,rejected,margins,accuracies}, logps/{chosen,rejected}, plus train_loss (mean over the run),
    seconds, steps, n_train, pairs_too_long.
    """
    from datasets import Dataset

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if not pairs:
        raise ValueError("train_dpo needs at least one preference pair")
    tokenizer = load_tokenizer(policy_path, padding_side="left")
    rows, too_long = dpo_rows(tokenizer, pairs, cfg)
    torch_dtype = compute_dtype(dtype)

    with scratch_dir(out_dir) as tmp:
        # the TRL config first: under DeepSpeed ZeRO-3 it must exist before from_pretrained to shard at load
        args = dpo_args(tmp, cfg, seed=seed, steps=steps_for(len(rows), cfg.batch_size, cfg.epochs),
                        bf16=mixed_bf16(torch_dtype))
        model, ref_model = _policy_and_reference(policy_path, ref_path, torch_dtype)
        trainer = _pretokenized_dpo_trainer()(
            model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer, peft_config=peft_config(cfg.lora, "CAUSAL_LM"),
        )
        result = fit_and_save(trainer, tokenizer, out_dir, dtype=checkpoint_dtype(policy_path))

    metrics = last_logged(trainer.state.log_history, DPO_LOGGED)
    metrics["history"] = logged_history(trainer.state.log_history, DPO_LOGGED)
    metrics.update(
        train_loss=float(result.training_loss),
        seconds=time.perf_counter() - t0,
        steps=int(trainer.state.global_step),
        n_train=len(rows),
        pairs_too_long=too_long,
    )
    return metrics
