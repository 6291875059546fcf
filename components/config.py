"""Typed, frozen configuration: one object per stage, aggregated in `LoopConfig`.

YAML only sets values; every field is declared and documented here, unknown keys are errors that name the
key, and `--set a.b=c` overrides are parsed as YAML scalars.  `config_hash` is what cache keys and MLflow
runs record, so two runs with the same hash ran the same loop.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.config_files import (
    ConfigError,
    apply_overrides,
    invalid,
    merge,
    moved_keys,
    read_yaml,
    source,
)
from components.config_gate import GateCheck, GateConfig  # noqa: F401 - re-exported: `gate:`
from components.config_judge import JudgeConfig  # `label.judge`, `evaluate.judge`
from components.config_models import GenerateConfig, ModelsConfig  # `generate:`, `models:`
from components.retention import RetentionConfig  # `retention:` (alignloop gc), defined with gc


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleConfig(_Frozen):
    """Stage 1, sample_prompts: which prompts this iteration trains on."""

    n_prompts: int = Field(128, ge=1, description="Prompts drawn per iteration from the train split of the pool.")
    dedup_history: bool = Field(
        True, description="Prefer prompts not used by earlier iterations; reuse only when the pool runs out."
    )
    when_pool_smaller: Literal["error", "cap"] = Field(
        "error", description="n_prompts larger than the pool's train split: error (before any stage runs, naming"
        " both numbers), or cap = draw every train prompt once per iteration (without replacement) and log a warning."
        " No iteration ever draws a prompt twice."
    )
    max_prompt_chars: int = Field(
        20000, ge=1, description="Longest prompt (characters) the pool may hold; a longer one is an input error"
        " naming the limit and the count, checked before any stage runs. Empty or whitespace-only prompts are"
        " always an error."
    )


class PretrainedRM(_Frozen):
    """A pretrained reward model (`AutoModelForSequenceClassification`) the ensemble starts with."""

    path: str = Field(description="from_pretrained directory or hub id of the reward model (its own tokenizer and"
                      " chat template score the conversations).")
    frozen: bool = Field(
        True, description="true: a frozen member, scored every iteration and never retrained; false: a starting"
        " point: it scores until the first members are trained, and trained members start from it (round-robin"
        " over the non-frozen ones) instead of `train_reward.init`."
    )


class EnsembleConfig(_Frozen):
    """The reward-model ensemble: how many members train_reward trains, and how every stage that scores (label,
    train_policy's RL reward and probe, evaluate) combines their rewards into one. Its scorers are the frozen
    `pretrained` reward models followed by the trained members; before any member is trained (iteration 0) every
    `pretrained` reward model (frozen or not) is the ensemble."""

    members: int = Field(
        3, ge=0, description="Members train_reward trains (K trained); they differ by seed and bootstrap resample."
        " 0 = train none (only frozen `pretrained` reward models score); at least one scorer must exist."
    )
    pretrained: list[PretrainedRM] = Field(
        default_factory=list, description="Pretrained reward models: frozen members and/or starting points of the"
        " trained ones (cold start without gold: iteration 0 labels with them)."
    )
    score_batch_size: int = Field(32, ge=1, description="Sequences per reward-model forward pass when scoring.")
    aggregation: Literal["mean", "worst_case", "uncertainty_weighted"] = Field(
        "mean",
        description="How member rewards r_1..r_K combine: mean; worst_case = min_k r_k;"
        " uncertainty_weighted = mean - uw_lambda * var_k r_k.",
    )
    uw_lambda: float = Field(1.0, ge=0, description="Variance penalty λ of `uncertainty_weighted`.")

    @property
    def frozen_paths(self) -> list[str]:
        return [p.path for p in self.pretrained if p.frozen]

    @property
    def start_paths(self) -> list[str]:
        """Non-frozen pretrained reward models: where trained members start (round-robin)."""
        return [p.path for p in self.pretrained if not p.frozen]

    @property
    def scorers(self) -> int:
        """Scorers once members are trained: frozen pretrained reward models + trained members."""
        return len(self.frozen_paths) + self.members

    @model_validator(mode="after")
    def _some_scorer(self) -> EnsembleConfig:
        if self.scorers == 0:
            raise ValueError("ensemble.members=0 needs at least one frozen ensemble.pretrained reward model "
                             "(nothing would score)")
        return self


class LabelConfig(_Frozen):
    """Stage 3, label: score completions, build pairs, keep the ones the labeler is sure about."""

    labeler: Literal["ensemble", "gold"] = Field(
        "ensemble",
        description="ensemble: reward-model ensemble (the product); gold: the toy's hidden oracle labels every"
        " pair (the upper bound other runs are compared with; needs `gold: toy`).",
    )
    min_margin_over_std: float = Field(
        1.0,
        ge=0,
        description="Keep a pair only if its aggregate margin exceeds this many ensemble standard deviations"
        " of the margin; pairs inside the ensemble's uncertainty are routed (judge, then `uncertain`).",
    )
    seed_gold_pairs: int = Field(
        1000, ge=0, description="Gold-labelled random pairs in the first iteration, before any reward model exists"
        " (only with a gold oracle; without one iteration 0 cold-starts: see LoopConfig)."
    )
    pairing: Literal["best_vs_worst", "all_pairs", "rejection_sampling"] = Field(
        "best_vs_worst",
        description="Pair construction per prompt from the aggregate reward: best_vs_worst = argmax vs argmin;"
        " all_pairs = every pair with |margin| >= all_pairs_min_margin; rejection_sampling = RSO-style, candidates"
        " accepted with probability exp((r - max r) / rs_beta), consecutive accepted ones paired.",
    )
    all_pairs_min_margin: float = Field(0.0, ge=0, description="all_pairs: smallest aggregate margin to pair.")
    rs_beta: float = Field(0.5, gt=0, description="rejection_sampling: temperature β of exp(r/β).")
    rs_pairs_per_prompt: int = Field(1, ge=1, description="rejection_sampling: pairs drawn per prompt.")
    min_agreement: float = Field(
        0.0,
        ge=0,
        le=1,
        description="A pair is also uncertain if fewer than this share of members prefer the chosen side.",
    )
    judge: JudgeConfig = JudgeConfig()
    uncertain: Literal["drop", "human_queue"] = Field(
        "drop",
        description="Uncertain pairs the judge could not settle (inconsistent, over budget, or no judge): drop them,"
        " or also export them to <workspace>/human_queue/iter-NNNN.jsonl for `alignloop labels import`.",
    )
    seed_preferences: str | None = Field(
        None, description="A TRL-format preference file (JSONL/JSON/Parquet/CSV or a `datasets` directory) of seed"
        " data, added once (iteration 0's preferences, label_source = imported, trusted like gold/human labels):"
        " standard rows (prompt/chosen/rejected strings) or conversational ones (prompt = messages, chosen/rejected ="
        " [assistant message]; implicit-prompt rows with the shared turns in chosen/rejected too). None = none."
    )
    truncated: Literal["keep", "drop", "penalise"] = Field(
        "keep", description="Rollouts cut at max_new_tokens (finish_reason = length): keep them as they are, drop"
        " them from pairing, or penalise = subtract `truncation_penalty` from their aggregate reward. Counted as"
        " label/truncated."
    )
    truncation_penalty: float = Field(1.0, ge=0, description="truncated=penalise: reward subtracted.")


class LoraSettings(_Frozen):
    """Optional LoRA (peft) adapters; the trained adapter is merged into the weights before saving, so every later
    stage loads a plain `from_pretrained` checkpoint."""

    r: int = Field(0, ge=0, description="Adapter rank; 0 = off (full fine-tuning).")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (update scaled by alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; None = peft's default for the architecture (GPT-2: c_attn)."
    )


TRAINER_ARGS_DOC = (
    "Extra transformers/TRL TrainingArguments passed through unchanged (e.g. deepspeed: ds.json,"
    " gradient_accumulation_steps: 4, bf16: true, fsdp: ...): how accelerate/DeepSpeed settings reach the"
    " trainer on real hardware. Unknown names are errors at train time."
)


class RewardConfig(_Frozen):
    """Stage 4, train_reward: Bradley-Terry reward-model ensemble, warm-started and trained on a replay buffer."""

    init: str | None = Field(
        None, description="Backbone to start members from (from_pretrained path/hub id); None = the initial policy."
    )
    learning_rate: float = Field(3e-5, gt=0)
    epochs: int = Field(6, ge=1, description="Epochs of a from-scratch training (no previous ensemble).")
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(2048, ge=8, description="Longest scored sequence (tokens) trained on; longer pairs"
                            " are dropped and counted.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass (TRL's"
                                         " gradient_checkpointing): less memory, ~30% more time.")
    heldout_frac: float = Field(0.1, ge=0, lt=1, description="Share of pairs held out for pair accuracy.")
    bootstrap: bool = Field(True, description="Each member trains on a bootstrap resample (diversity).")
    shared_backbone: bool = Field(
        False, description="One model with a shared trunk and K linear heads (saved as `shared/`, num_labels=K)"
        " instead of K separate models: one training and ~one member's scoring cost; heads differ by"
        " initialisation and Poisson(1) bootstrap weights per pair. Warm start reuses the previous ensemble's first"
        " model (its trunk; its heads too when it has K). Off by default: see benchmarks/README.md §3."
    )
    freeze_backbone: bool = Field(
        False, description="shared_backbone: train only the K heads on a frozen trunk (e.g. a pretrained RM or the"
        " policy's): the cheapest ensemble, K linear probes on one base; the trunk's weights never change."
    )
    warm_start: bool = Field(
        True, description="Start member k from the previous ensemble's member k (mod its size) instead of `init`."
    )
    warm_epochs: int = Field(
        2, ge=1, description="Epochs when warm-started: the members already fit the old pairs, so fewer suffice."
    )
    replay_cap: int = Field(
        600, ge=0, description="Older (not newest-iteration) pairs sampled into a warm-started retraining."
    )
    replay_recency: float = Field(
        0.7, gt=0, le=1, description="Sampling weight of an older pair = replay_recency ** (its age in iterations);"
        " 1 = uniform over all history."
    )
    replay_seed_share: float = Field(
        0.3, ge=0, le=1, description="Share of the replay sample always drawn from the seed (non-self-generated:"
        " gold/human) pairs, so retraining stays anchored to real labels."
    )
    max_heldout_regression: float = Field(
        0.02, ge=0, le=1, description="A retrained ensemble replaces the previous one unless its held-out pair"
        " accuracy falls below the previous one's by more than this (beyond `regression_z` standard errors)."
    )
    regression_z: float = Field(
        1.64, ge=0, description="One-sided z of the regression test on paired held-out correctness (1.64 ~ 95%),"
        " so a few held-out pairs of noise never discard a retrained ensemble."
    )
    ece_bins: int = Field(10, ge=2, description="Bins of the expected calibration error of P_BT(chosen > rejected).")
    lora: LoraSettings = LoraSettings()
    trainer_args: dict[str, Any] = Field(default_factory=dict, description=TRAINER_ARGS_DOC)

    @model_validator(mode="after")
    def _frozen_trunk_needs_heads(self) -> RewardConfig:
        if self.freeze_backbone and not self.shared_backbone:
            raise ValueError("train_reward.freeze_backbone needs train_reward.shared_backbone: true (K heads on one "
                             "frozen trunk; separate members each train their own model)")
        return self


class RLConfig(_Frozen):
    """Online RL (train_policy.algo = rloo | grpo): sample, score with the reward-model ensemble, update."""

    num_generations: int = Field(4, ge=2, description="Completions per prompt (the leave-one-out / group baseline).")
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    kl_control: Literal["fixed", "adaptive"] = Field(
        "fixed", description="adaptive: Ziegler et al.'s proportional controller moves β toward `kl_target`."
    )
    kl_target: float = Field(2.0, gt=0, description="Adaptive control's target KL (nats per sequence).")
    kl_horizon: int = Field(100, ge=1, description="Adaptive control's horizon in optimizer steps (its gain).")
    shaping: Literal["none", "par", "log_sigmoid"] = Field(
        "par", description="Reward transform relative to reference completions' rewards r_ref: par = mean σ(r − r_ref)"
        " (bounded, PAR); log_sigmoid = mean log σ(r − r_ref); none = the raw ensemble aggregate."
    )
    reference_samples: int = Field(
        2, ge=1, description="Reference-policy completions per prompt whose rewards center the shaping."
    )
    prompt_repeats: int = Field(1, ge=1, description="Passes over this iteration's prompts per epoch.")


class DPOConfig(_Frozen):
    """train_policy.algo = dpo: the DPO loss variant and its SFT term (β is `train_policy.beta`)."""

    loss_type: Literal["sigmoid", "ipo", "robust"] = Field(
        "sigmoid", description="TRL DPO loss: sigmoid (Rafailov et al.); ipo (squared, no over-confidence);"
        " robust (label-smoothed 0.1 for noisy labels). sigmoid by default: our labels are filtered for confidence."
    )
    sft_coef: float = Field(0.0, ge=0, description="RPO: weight of an SFT (NLL) term on chosen responses.")


class ProbeConfig(_Frozen):
    """After the update, fresh samples on held-out prompts estimate KL to the reference, entropy, length, reward."""

    prompts: int = Field(32, ge=1, description="Held-out prompts sampled after the update.")
    samples: int = Field(2, ge=1, description="Completions per probe prompt.")
    max_new_tokens: int = Field(32, ge=1, description="Length limit of a probe completion.")


class PolicyConfig(_Frozen):
    """Stage 5, train_policy: DPO on the labelled pairs, or online RL against the reward-model ensemble."""

    algo: Literal["dpo", "rloo", "grpo"] = Field(
        "dpo", description="dpo: iterative online DPO on label's pairs (cheapest, default); rloo: REINFORCE"
        " leave-one-out with the KL penalty in the reward (the RLHF objective E[r] − β·KL; TRL core trainer);"
        " grpo: group-normalised advantages with the KL term in the loss."
    )
    beta: float = Field(
        0.1, ge=0, description="β, the strength of the KL regulariser of E[r] − β·KL(π || π_ref): DPO's temperature"
        " (> 0), the RL KL-penalty coefficient (initial value under rl.kl_control = adaptive; 0 = none)."
    )
    learning_rate: float = Field(1e-4, gt=0, description="1e-4 suits tiny from-scratch models; use ~5e-7 for 7B.")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(
        16, ge=1, description="Pairs (dpo) or completions (rl; a multiple of rl.num_generations) per optimizer step."
    )
    reference: Literal["initial", "previous"] = Field(
        "initial", description="initial: the loop's starting policy (fixed anchor, so KL in the gate is total drift;"
        " default); previous: the champion (allows larger total drift, one trust region per iteration)."
    )
    max_prompt_length: int = Field(
        1024, ge=1, description="Prompt tokens trained on: a longer DPO prompt keeps its last max_prompt_length"
        " tokens (the latest turns and the generation prompt); an RL prompt longer than this is skipped and counted."
    )
    max_length: int = Field(
        2048, ge=8, description="Longest DPO sequence (prompt + completion tokens): completions are cut to fit;"
        " a pair whose prompt leaves no room is skipped and counted (train_policy/pairs_too_long)."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass (TRL's"
                                         " gradient_checkpointing): less memory, ~30% more time.")
    dpo: DPOConfig = DPOConfig()
    rl: RLConfig = RLConfig()
    lora: LoraSettings = LoraSettings()
    trainer_args: dict[str, Any] = Field(default_factory=dict, description=TRAINER_ARGS_DOC)
    probe: ProbeConfig = ProbeConfig()

    @model_validator(mode="after")
    def _rl_batch(self) -> PolicyConfig:
        if self.algo == "dpo" and self.beta <= 0:
            raise ValueError("beta must be > 0 for algo=dpo (it is DPO's temperature)")
        if self.algo != "dpo" and self.batch_size % self.rl.num_generations:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of rl.num_generations="
                             f"{self.rl.num_generations}")
        return self


class EvalConfig(_Frozen):
    """Stage 6, evaluate: candidate vs champion on the held-out split (the decision is the gate's, `gate:`).

    Sample size, from the power calculation (components/power.py): the gate passes a true held-out win-rate gain
    δ over ½ with power 0.8 from n = D·(2.80·σ/(a·δ))² paired comparisons (n_prompts × samples_per_prompt; σ ≤ ½,
    D the within-prompt design effect, a = (1 − position_bias)(1 − 2·noise) the judge's attenuation). The
    embedded default's 128 × 16 = 2048 comparisons with the toy judge (a = 0.72) and D ≈ 1.5 detect δ ≈ 0.053
    (128 × 4 = 512: δ ≈ 0.105), i.e. a true win rate of ~0.55 in one night; smaller nightly gains are kept as
    the training head (`gate.keep_head`) and promoted once they add up. Both sides sample with the same seed per
    prompt (common random numbers): where the policies agree the samples are identical ties, the variance the
    comparison is spared (on the toy ~73% of pairs of consecutive policies are identical, which also shrinks δ by
    that share)."""

    n_prompts: int = Field(64, ge=1, description="Held-out prompts (eval split) scored per iteration (sample size:"
                           " the class docstring).")
    samples_per_prompt: int = Field(4, ge=1, description="Samples per held-out prompt and policy, paired by seed.")
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_resamples: int = Field(2000, ge=100)
    regression_set: str = Field(
        "toy", description="Fixed reference completions whose likelihood must not drop: 'toy' = per held-out"
        " prompt, the gold-best of `regression_best_of` corpus reviews (needs `gold: toy`); a path = Parquet with"
        " prompt and completion columns; 'none' = no regression check."
    )
    regression_best_of: int = Field(8, ge=1, description="'toy' regression set: corpus reviews drawn per prompt.")
    heldout: Literal["gold", "noisy_gold", "judge", "none"] = Field(
        "gold", description="The held-out signal, independent of the reward models, for the held-out win rate and"
        " the reward-hacking check: gold = the gold reward (needs `gold: toy`); noisy_gold = the toy judge, gold"
        " with noise and position bias, so the gate errs like a real LLM judge (needs `gold: toy`; its noise from"
        " `judge` when backend toy, else 0.1/0.1); judge = the pairwise LLM judge `judge`; none = proxy only."
    )
    judge: JudgeConfig = Field(
        JudgeConfig(), description="heldout: judge = the held-out judge (its own endpoint, model, rubric and budget,"
        " separate from `label.judge`; never one of the reward models). Each candidate/champion sample pair of a"
        " prompt is judged in both orders: the budget must cover n_prompts × samples_per_prompt × 2 calls (× 3"
        " with reference_completions)."
    )
    reference_completions: str | None = Field(
        None, description="Parquet (prompt, completion; the first completion of a prompt counts): fixed reference"
        " answers (the initial policy's, a strong model's) that candidate and champion are each compared with by"
        " the held-out signal, a baseline that does not drift with the champion (AlpacaEval-style). Held-out"
        " prompts absent from the file are not compared. null = off."
    )

    @property
    def judge_calls(self) -> int:
        """Paid calls a judged held-out evaluation needs at most (no cache hits)."""
        return self.n_prompts * self.samples_per_prompt * 2 * (3 if self.reference_completions else 1)

    def heldout_judge(self) -> JudgeConfig | None:
        """The judge the evaluate stage is given: `judge` for judge, the toy judge for noisy_gold, else None."""
        if self.heldout == "judge" or (self.heldout == "noisy_gold" and self.judge.backend == "toy"):
            return self.judge
        if self.heldout == "noisy_gold":
            return JudgeConfig(backend="toy", noise=0.1, position_bias=0.1, budget=self.judge_calls)
        return None

    @model_validator(mode="after")
    def _heldout_judge(self) -> EvalConfig:
        if self.heldout == "judge" and self.judge.backend == "none":
            raise ValueError("evaluate.heldout='judge' needs evaluate.judge.backend (toy, hf or openai)")
        if self.heldout == "judge" and self.judge.backend in ("hf", "openai") and not self.judge.model:
            raise ValueError(f"evaluate.judge.model: the {self.judge.backend} held-out judge needs a model")
        if self.heldout == "noisy_gold" and self.judge.backend not in ("none", "toy"):
            raise ValueError("evaluate.heldout='noisy_gold' plays the judge with the toy backend: set "
                             "evaluate.judge.backend to toy (or none for noise 0.1, position bias 0.1), or use "
                             "evaluate.heldout='judge'")
        judge = self.heldout_judge()
        if judge is not None and judge.budget < self.judge_calls:
            raise ValueError(f"evaluate.judge.budget={judge.budget} does not cover the held-out comparisons: "
                             f"{self.judge_calls} calls (n_prompts × samples_per_prompt × 2 orders"
                             f"{' × 3 comparisons' if self.reference_completions else ''})")
        if self.reference_completions and self.heldout == "none":
            raise ValueError("evaluate.reference_completions needs a held-out signal (evaluate.heldout)")
        return self


class LaunchConfig(_Frozen):
    """How training stages (train_reward, train_policy) run: in the task's process, or as an `accelerate launch`
    subprocess (multi-GPU / DeepSpeed) started from the Prefect task, so a GPU work pool can run them."""

    mode: Literal["in_process", "accelerate"] = Field(
        "in_process", description="in_process: call the stage directly; accelerate: `accelerate launch` a subprocess."
    )
    num_processes: int = Field(1, ge=1, description="accelerate --num_processes (one per GPU).")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="accelerate --mixed_precision.")
    deepspeed_config: str | None = Field(
        None, description="DeepSpeed JSON config file passed as --use_deepspeed --deepspeed_config_file."
    )
    extra_args: tuple[str, ...] = Field(
        (), description="Further `accelerate launch` flags, passed as given (e.g. ['--main_process_port', '29501'])."
    )


class FanoutConfig(_Frozen):
    """Where the reward ensemble's members train and the generate stage's prompt shards are sampled: one after
    another inside their stage's task (local), or in parallel as Prefect tasks on Ray through prefect-ray's
    RayTaskRunner (tasks/fanout.py; extra `ray`)."""

    task_runner: Literal["local", "ray"] = Field(
        "local", description="local: members train sequentially in the train_reward task; ray: one Ray task each."
    )
    ray_address: str | None = Field(
        None, description="ray: null = start a private local Ray instance for the fan-out and stop it after; 'auto' ="
        " join the cluster this machine is part of (`ray start`); 'ray://HEAD:10001' = a remote cluster (Ray Client)."
        " Workers read/write the workspace: same machine or a shared filesystem."
    )
    num_cpus: float = Field(1.0, gt=0, description="ray: CPUs reserved per member task (node CPUs / it = parallelism).")
    num_gpus: float = Field(0.0, ge=0, description="ray: GPUs reserved per member task (1 = one member per GPU).")
class LoopConfig(_Frozen):
    """A whole continual-RLHF loop: models, data, and one config per stage."""

    name: str = Field("tiny", pattern=r"^[A-Za-z0-9_.-]+$", description="Loop name = MLflow experiment name.")
    seed: int = 0
    policy_init: str = Field(
        "data/bootstrap/policy", description="Initial (SFT) policy: local path or hub id for from_pretrained."
    )
    prompt_pool: str = Field("data/prompts/pool.parquet", description="Prompt pool (DVC-tracked Parquet).")
    gold: Literal["toy"] | None = Field(
        "toy", description="Hidden gold oracle for evaluation/seed labels; only the toy task has one."
    )
    sample: SampleConfig = SampleConfig()
    generate: GenerateConfig = GenerateConfig()
    models: ModelsConfig = ModelsConfig()
    label: LabelConfig = LabelConfig()
    train_reward: RewardConfig = RewardConfig()
    train_policy: PolicyConfig = PolicyConfig()
    evaluate: EvalConfig = EvalConfig()
    gate: GateConfig = GateConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    train_launch: LaunchConfig = LaunchConfig()
    fanout: FanoutConfig = FanoutConfig()
    retention: RetentionConfig = RetentionConfig()
    report: bool = Field(
        True, description="Render the HTML iteration report (matplotlib; ~1-2 s per iteration plus ~3 s of imports "
        "once per process on a 2-core CPU) at the end of every iteration and log it to the iteration's MLflow run. "
        "Off: `alignloop report N` renders any finished iteration later from the ledger and store.")

    @model_validator(mode="after")
    def _fanout_in_process(self) -> LoopConfig:
        if self.fanout.task_runner == "ray" and self.train_launch.mode != "in_process":
            raise ValueError("fanout.task_runner='ray' needs train_launch.mode='in_process' (Ray runs the members)")
        return self

    @model_validator(mode="after")
    def _gold_needed(self) -> LoopConfig:
        if self.label.labeler == "gold" and self.gold is None:
            raise ValueError("label.labeler='gold' needs `gold: toy`")
        if self.evaluate.heldout in ("gold", "noisy_gold") and self.gold is None:
            raise ValueError(f"evaluate.heldout={self.evaluate.heldout!r} needs `gold: toy` (or evaluate.heldout="
                             "'judge' with an LLM judge, or 'none')")
        if self.evaluate.heldout == "judge" and self.evaluate.judge.backend == "toy" and self.gold is None:
            raise ValueError("evaluate.judge.backend='toy' plays the judge with the gold oracle: it needs `gold: toy`")
        if self.label.judge.backend == "toy" and self.gold is None:
            raise ValueError("label.judge.backend='toy' plays the judge with the gold oracle: it needs `gold: toy`")
        if self.gate.max_reference_regression is not None and not self.evaluate.reference_completions:
            raise ValueError("gate.max_reference_regression needs evaluate.reference_completions")
        if self.evaluate.regression_set == "toy" and self.gold is None:
            raise ValueError("evaluate.regression_set='toy' needs `gold: toy` (or a Parquet path, or 'none')")
        cold = self.ensemble.pretrained or self.label.seed_preferences or self.label.judge.backend != "none"
        if self.gold is None and not cold:
            raise ValueError("gold: null needs a cold start: set ensemble.pretrained (pretrained reward models), "
                             "label.seed_preferences (a TRL preference file) and/or label.judge (an LLM judge)")
        return self


def load_config(paths: str | Path | list, overrides: list[str] | tuple[str, ...] = ()) -> LoopConfig:
    """Read one or more YAML files (later files override earlier ones key by key, so an experiment file holds
    only what it changes), apply `key.sub=value` overrides (values parsed as YAML), validate strictly. Problems
    name the file, or the `--set` item, that caused them."""
    paths = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    files = " + ".join(map(str, paths))
    tree: dict = {}
    for path in paths:
        tree = merge(tree, read_yaml(path))
    applied = apply_overrides(tree, overrides)
    if moved := moved_keys(tree):
        blame = sorted({f"--set {item}" if (item := source(old, applied)) else files for old in moved})
        raise ConfigError(f"{' + '.join(blame)}: invalid config\n" + "\n".join(
            f"  {old}: moved to {new}" for old, new in moved.items()))
    try:
        return LoopConfig.model_validate(tree)
    except ValidationError as err:
        raise invalid(err, files, applied) from None


def with_overrides(cfg: LoopConfig, overrides: list[str] | tuple[str, ...], where: str = "--set") -> LoopConfig:
    """`cfg` (e.g. a stored run's config) with `key.sub=value` overrides applied, validated strictly."""
    tree = cfg.model_dump(mode="json")
    applied = apply_overrides(tree, overrides, where)
    try:
        return LoopConfig.model_validate(tree)
    except ValidationError as err:
        raise invalid(err, "the stored config", applied, where) from None


def config_hash(cfg: BaseModel) -> str:
    """sha256 of the canonical JSON of a (sub)config: the identity of 'the same settings'. A loop's `retention:`
    decides what gc deletes afterwards, not what an iteration computes, so changing it never blocks a resume."""
    dump = cfg.model_dump(mode="json", exclude={"retention"} if isinstance(cfg, LoopConfig) else None)
    blob = json.dumps(dump, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
