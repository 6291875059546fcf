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

import tempfile
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


def train_reward_heads(init_path: str, train_pairs: list[dict], out_dir: Path, cfg: RewardConfig, *,
                       heads: int, seed: int) -> dict:
    """K = `heads` Bradley-Terry heads on one trunk, saved to `out_dir` (safetensors + tokenizer).

    `init_path` is a causal LM (fresh heads from `seed`) or a reward model (warm start: trunk and, when it has K
    heads, the heads; otherwise fresh heads on its trunk). Pairs longer than cfg.max_length tokens are dropped
    (TRL's rule) and counted. Returns train_loss, seconds, steps, n_train, dropped_too_long.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, set_seed
    from trl import RewardConfig as TRLRewardConfig
    from trl.trainer.reward_trainer import DataCollatorForPreference, suppress_seqcls_warning

    from components.backends.hf import encode_scored
    from components.backends.trainers import (
        REWARD_CENTERING,
        common_args,
        parent_dir,
        peft_config,
        quiet,
        save,
        steps_for,
        trl_config,
    )

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(init_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_seed(seed)  # the fresh heads' initialisation
    with suppress_seqcls_warning():  # causal LM -> seq-cls, or a K'-head model -> K heads: new heads (expected)
        model = AutoModelForSequenceClassification.from_pretrained(
            init_path, id2label={k: f"member-{k}" for k in range(heads)}, ignore_mismatched_sizes=True,
            dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.lora.r > 0:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(cfg.lora, "SEQ_CLS"))  # score layer trained in full

    weights = poisson_weights(len(train_pairs), heads, seed, cfg.bootstrap)
    rows = []
    for p, w in zip(train_pairs, weights):
        chosen, _ = encode_scored(tokenizer, p["prompt"], p["chosen"])
        rejected, _ = encode_scored(tokenizer, p["prompt"], p["rejected"])
        if max(len(chosen), len(rejected)) <= cfg.max_length:
            rows.append({"chosen_ids": chosen, "rejected_ids": rejected, "weights": w.tolist()})
    if not rows:
        raise ValueError(f"no training pair fits max_length={cfg.max_length} tokens ({len(train_pairs)} pairs given)")
    pad = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)

    def collate(examples: list[dict]) -> dict:  # chosen rows first, then rejected (TRL's layout), + weights [B, K]
        batch = pad([{"chosen_ids": e["chosen_ids"], "rejected_ids": e["rejected_ids"]} for e in examples])
        batch["weights"] = torch.tensor([e["weights"] for e in examples], dtype=torch.float32)
        return batch

    class HeadsTrainer(Trainer):
        loss_is_scaled_for_ga = False  # a per-batch mean: Trainer divides by the accumulation steps

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            w = inputs.pop("weights")
            out = model(**inputs, use_cache=False)
            r_chosen, r_rejected = out.logits.chunk(2)  # [B, K] each
            loss = bootstrap_bt_loss(r_chosen, r_rejected, w, REWARD_CENTERING)
            return (loss, out) if return_outputs else loss

    steps = steps_for(len(rows), cfg.batch_size, cfg.epochs)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-hf-", dir=parent_dir(out_dir)) as tmp:
        args = trl_config(  # TRL's reward config, so `trainer_args` mean what they mean for separate members
            TRLRewardConfig, "train_reward", cfg.trainer_args,
            **common_args(tmp, lr=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed,
                          steps=steps),
            max_length=cfg.max_length, remove_unused_columns=False,  # keep `weights` for the loss
        )
        trainer = HeadsTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collate,
                               processing_class=tokenizer)
        quiet(trainer)
        result = trainer.train()
        save(trainer.model, tokenizer, out_dir, trainer.accelerator)
    return {"train_loss": float(result.training_loss), "seconds": time.perf_counter() - t0,
            "steps": int(trainer.state.global_step), "n_train": len(rows),
            "dropped_too_long": len(train_pairs) - len(rows)}
