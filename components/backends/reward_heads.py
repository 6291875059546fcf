"""Shared-backbone reward-model ensemble: one transformer trunk with K linear Bradley-Terry heads.

An `AutoModelForSequenceClassification` with num_labels = K is exactly that model (the score layer is a
[K, hidden] matrix), so it saves and loads with `save_pretrained`/`from_pretrained` like any reward model and a
real checkpoint works by config; `hf.RewardEnsemble` reads its K heads as K ensemble rows from one forward pass,
so scoring costs about one member instead of K.

Diversity comes from the heads: each head starts from its own random row of the score layer and weights every
training pair by its own Poisson(1) count (the Poisson bootstrap: the large-n limit of a head training on its own
bootstrap resample, as separate members do, with one pass over the data for all heads). The trunk is shared, so
heads disagree less than separate models do: the label stage's uncertainty is narrower (benchmarks/README.md §3).

TRL 1.16's RewardTrainer refuses num_labels ≠ 1, so training runs in transformers' Trainer with the weighted loss
below, TRL's preference collator and our tokenization (`hf.encode_scored`, as for separate members).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from components.config import RewardConfig

SHARED_DIR = "shared"  # the ensemble directory's single multi-head model (separate members are `member-<k>`)


def poisson_weights(n: int, heads: int, seed: int, bootstrap: bool) -> np.ndarray:
    """w[i, k] = how many times head k counts pair i: Poisson(1), head k seeded from (seed, k); all ones without
    `bootstrap`. Drawn once per training (not per epoch), so each head keeps one resample, as a separate member
    does; redrawing each epoch would average the heads' data back towards the same set."""
    if not bootstrap:
        return np.ones((n, heads))
    return np.stack([np.random.default_rng([seed, k]).poisson(1.0, n) for k in range(heads)], axis=1).astype(float)


def bootstrap_bt_loss(r_chosen, r_rejected, weights, centering: float = 0.0):
    """(1/K) Σ_k Σ_b w_bk ℓ_bk / Σ_b w_bk, with ℓ_bk = −log σ(r_k(x, y_w) − r_k(x, y_l)) + centering·(r_k(x, y_w)
    + r_k(x, y_l))²; tensors [B, K]. Each head's term is its own weighted mean, so a head's gradient is the size a
    single reward model's would be (one global Σw would shrink every head's step by 1/K); a head whose pairs all
    have weight 0 in the batch contributes 0."""
    import torch.nn.functional as F

    nll = -F.logsigmoid(r_chosen - r_rejected) + centering * (r_chosen + r_rejected) ** 2
    return ((weights * nll).sum(0) / weights.sum(0).clamp_min(1e-12)).mean()


def _heads_model(init_path: str, tokenizer, cfg: RewardConfig, *, heads: int, seed: int):
    """A `heads`-label sequence-classification model on `init_path`'s trunk. Heads whose shape does not match the
    checkpoint's (a causal LM, or a reward model with another K) are drawn fresh from `seed`; with LoRA the trunk
    gets adapters and the score layer still trains in full; with `freeze_backbone` only the score layer trains."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    from components.backends.trainers import peft_config

    set_seed(seed)  # the fresh heads' initialisation
    with suppress_seqcls_warning():  # causal LM -> seq-cls, or a K'-head model -> K heads: new heads (expected)
        model = AutoModelForSequenceClassification.from_pretrained(
            init_path, id2label={k: f"member-{k}" for k in range(heads)}, ignore_mismatched_sizes=True,
            dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.freeze_backbone:  # K linear heads on a frozen base: only the score layer learns
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("score."))
    elif cfg.lora.r > 0:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(cfg.lora, "SEQ_CLS"))
    return model


def _weighted_rows(tokenizer, train_pairs: list[dict], weights: np.ndarray, max_length: int) -> list[dict]:
    """Tokenized pairs that fit `max_length` (TRL's rule), each with its row of per-head bootstrap weights."""
    from components.backends.trainers import scored_pair_ids

    rows = []
    for p, w in zip(train_pairs, weights):
        chosen, rejected = scored_pair_ids(tokenizer, p)
        if max(len(chosen), len(rejected)) <= max_length:
            rows.append({"chosen_ids": chosen, "rejected_ids": rejected, "weights": w.tolist()})
    return rows


def _weighted_collator(pad_token_id: int):
    """TRL's preference padding (chosen rows first, then rejected), plus the batch's weights as a [B, K] tensor."""
    import torch
    from trl.trainer.reward_trainer import DataCollatorForPreference

    pad = DataCollatorForPreference(pad_token_id=pad_token_id)

    def collate(examples: list[dict]) -> dict:
        batch = pad([{"chosen_ids": e["chosen_ids"], "rejected_ids": e["rejected_ids"]} for e in examples])
        batch["weights"] = torch.tensor([e["weights"] for e in examples], dtype=torch.float32)
        return batch

    return collate


def _heads_args(tmp_dir: str, cfg: RewardConfig, n_rows: int, *, seed: int):
    """TRL's reward config, so `trainer_args` mean what they mean for separate members; built before the model
    (under DeepSpeed ZeRO-3 the config must exist when the model is created)."""
    from trl import RewardConfig as TRLRewardConfig

    from components.backends.trainers import common_args, steps_for, trl_config

    return trl_config(
        TRLRewardConfig, "train_reward", cfg.trainer_args,
        **common_args(tmp_dir, lr=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed,
                      steps=steps_for(n_rows, cfg.batch_size, cfg.epochs),
                      gradient_checkpointing=cfg.gradient_checkpointing),
        max_length=cfg.max_length, remove_unused_columns=False,  # keep `weights` for the loss
    )


def _heads_trainer(model, tokenizer, rows: list[dict], args):
    """transformers' Trainer with the bootstrap-weighted loss (TRL's RewardTrainer refuses num_labels ≠ 1)."""
    from datasets import Dataset
    from transformers import Trainer

    from components.backends.trainers import REWARD_CENTERING

    class HeadsTrainer(Trainer):
        loss_is_scaled_for_ga = False  # a per-batch mean: Trainer divides by the accumulation steps

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            w = inputs.pop("weights")
            out = model(**inputs, use_cache=False)
            r_chosen, r_rejected = out.logits.chunk(2)  # [B, K] each
            loss = bootstrap_bt_loss(r_chosen, r_rejected, w, REWARD_CENTERING)
            return (loss, out) if return_outputs else loss

    return HeadsTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                        data_collator=_weighted_collator(tokenizer.pad_token_id), processing_class=tokenizer)


def train_reward_heads(init_path: str, train_pairs: list[dict], out_dir: Path, cfg: RewardConfig, *,
                       heads: int, seed: int) -> dict:
    """K = `heads` Bradley-Terry heads on one trunk, saved to `out_dir` (safetensors + tokenizer).

    `init_path` is a causal LM (fresh heads from `seed`) or a reward model (warm start: trunk and, when it has K
    heads, the heads; otherwise fresh heads on its trunk). Pairs longer than cfg.max_length tokens are dropped
    (TRL's rule) and counted. Returns train_loss, seconds, steps, n_train, dropped_too_long.
    """
    from components.backends.trainers import checkpoint_dtype, fit_and_save, load_tokenizer, scratch_dir

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(init_path)
    weights = poisson_weights(len(train_pairs), heads, seed, cfg.bootstrap)
    rows = _weighted_rows(tokenizer, train_pairs, weights, cfg.max_length)
    if not rows:
        raise ValueError(f"no training pair fits max_length={cfg.max_length} tokens ({len(train_pairs)} pairs given)")
    with scratch_dir(out_dir, "hf") as tmp:
        args = _heads_args(tmp, cfg, len(rows), seed=seed)
        model = _heads_model(init_path, tokenizer, cfg, heads=heads, seed=seed)
        trainer = _heads_trainer(model, tokenizer, rows, args)
        result = fit_and_save(trainer, tokenizer, out_dir, dtype=checkpoint_dtype(init_path))
    return {"train_loss": float(result.training_loss), "seconds": time.perf_counter() - t0,
            "steps": int(trainer.state.global_step), "n_train": len(rows),
            "dropped_too_long": len(train_pairs) - len(rows)}
