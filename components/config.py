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

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """Bad configuration: the message names the file and the field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleConfig(_Frozen):
    """Stage 1, sample_prompts: which prompts this iteration trains on."""

    n_prompts: int = Field(128, ge=1, description="Prompts drawn per iteration from the train split of the pool.")
    dedup_history: bool = Field(
        True, description="Prefer prompts not used by earlier iterations; reuse only when the pool runs out."
    )


class GenerateConfig(_Frozen):
    """Stage 2, generate: on-policy completions from the current champion."""

    samples_per_prompt: int = Field(8, ge=2, description="K completions per prompt (pairs need at least 2).")
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(128, ge=1, description="Prompts×samples decoded together in one `generate` call.")
    shards: int = Field(
        1, ge=1, description="Contiguous prompt shards, each sampled with a seed derived from (seed, shard) (at most"
        " one per prompt; 1 = no sharding). With fanout.task_runner: ray, one Ray task per shard (fanout.num_cpus/"
        "num_gpus as for members); otherwise the shards run one after another in the generate task, with the same"
        " rollouts."
    )
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="hf: transformers generate (CPU or GPU); vllm: vLLM's offline engine (needs the `vllm` extra"
        " and a CUDA device, else it falls back to hf with a warning).",
    )
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="vllm only: share of GPU memory vLLM may take (weights + KV cache)."
    )


class JudgeConfig(_Frozen):
    """The pairwise LLM judge that uncertain pairs are routed to (components/judge.py). Every pair is judged in
    both orders; only a consistent verdict becomes a label."""

    backend: Literal["none", "toy", "hf", "openai"] = Field(
        "none",
        description="none: no judge (uncertain pairs go straight to `label.uncertain`); toy: the hidden gold reward"
        " with `noise` and `position_bias` (needs `gold: toy`); hf: a local causal LM (`model` = from_pretrained"
        " path) compares log-likelihoods of the verdict tokens; openai: any OpenAI-compatible chat endpoint.",
    )
    model: str = Field("", description="hf: from_pretrained path/hub id; openai: the served model name.")
    base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="openai: endpoint base URL (…/v1); requests go to /chat/completions."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="openai: name of the environment variable holding the API key (never logged)."
    )
    rubric_version: str = Field(
        "v1", description="Version of the rubric prompt; part of the cache key, bump it when the rubric changes."
    )
    budget: int = Field(200, ge=0, description="Judge calls allowed per iteration (each pair costs 2: both orders;"
                        " cache hits are free).")
    select: Literal["uncertainty", "random"] = Field(
        "uncertainty",
        description="Which pairs spend the budget: uncertainty = the routed (uncertain) pairs, least certain first;"
        " random = a random sample of all built pairs (the baseline routing is measured against).",
    )
    concurrency: int = Field(4, ge=1, description="Judge calls in flight at once.")
    max_retries: int = Field(3, ge=0, description="Retries of a call after a transport error or HTTP 429/5xx.")
    backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles on every retry.")
    timeout_s: float = Field(60.0, gt=0, description="openai: per-request timeout in seconds.")
    max_tokens: int = Field(4, ge=1, description="openai: tokens the judge may generate for its verdict.")
    noise: float = Field(0.1, ge=0, le=0.5, description="toy: probability that a verdict is flipped (label noise).")
    position_bias: float = Field(
        0.1, ge=0, le=1, description="toy: probability that the judge answers 'A' (the first shown) whatever it saw."
    )


class EnsembleConfig(_Frozen):
    """The reward-model ensemble: how many members train_reward trains, and how every stage that scores (label,
    train_policy's RL reward and probe, evaluate) combines their rewards into one."""

    members: int = Field(3, ge=1, description="Ensemble size K; members differ by seed and bootstrap resample.")
    aggregation: Literal["mean", "worst_case", "uncertainty_weighted"] = Field(
        "mean",
        description="How member rewards r_1..r_K combine: mean; worst_case = min_k r_k;"
        " uncertainty_weighted = mean - uw_lambda * var_k r_k.",
    )
    uw_lambda: float = Field(1.0, ge=0, description="Variance penalty λ of `uncertainty_weighted`.")


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
        1000, ge=0, description="Gold-labelled random pairs in the first iteration, before any reward model exists."
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
    max_length: int = Field(64, ge=8)
    heldout_frac: float = Field(0.1, ge=0, lt=1, description="Share of pairs held out for pair accuracy.")
    bootstrap: bool = Field(True, description="Each member trains on a bootstrap resample (diversity).")
    shared_backbone: bool = Field(
        False, description="One model with a shared trunk and K linear heads (saved as `shared/`, num_labels=K)"
        " instead of K separate models: one training and ~one member's scoring cost; heads differ by"
        " initialisation and Poisson(1) bootstrap weights per pair. Warm start reuses the previous ensemble's first"
        " model (its trunk; its heads too when it has K). Off by default: see benchmarks/README.md §3."
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
    max_length: int = Field(64, ge=8)
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


class GateCheck(_Frozen):
    """One check of the gate: a metric of the evaluation, a bound, and whether failing it blocks promotion.

    `metric` is the name the evaluate stage logs to MLflow (components/stages/evaluate.py): per-model metrics
    `evaluate/candidate/<m>` (proxy_reward, gold_reward, kl, mean_tokens, regression_logp), which `vs_champion`
    compares with `evaluate/champion/<m>`; paired ones, candidate vs champion already, take an absolute bound:
    `evaluate/<signal>_win_rate/<value|ci_low|ci_high|n>` (signal: proxy, heldout, lc_proxy, lc_heldout) and
    `evaluate/reward_hacking`.
    """

    name: str = Field(description="Label in the gate table and in rejection reasons.")
    metric: str = Field(description="Evaluation metric name (per-model or paired, see the class docstring).")
    vs_champion: Literal["none", "difference", "ratio"] = Field(
        "none", description="none: the metric itself; difference: candidate − champion; ratio: candidate / champion."
    )
    above: float | None = Field(None, description="Passes only if value > above.")
    at_least: float | None = Field(None, description="Passes only if value >= at_least.")
    below: float | None = Field(None, description="Passes only if value < below.")
    at_most: float | None = Field(None, description="Passes only if value <= at_most.")
    blocking: bool = Field(True, description="A failed blocking check rejects the candidate; others only warn.")

    @model_validator(mode="after")
    def _bounded(self) -> GateCheck:
        if not self.metric.startswith("evaluate/"):
            raise ValueError(f"gate check {self.name!r}: metric {self.metric!r} is not an evaluation metric's MLflow "
                             "name (e.g. evaluate/candidate/kl, evaluate/proxy_win_rate/ci_low)")
        if self.vs_champion != "none" and "/candidate/" not in self.metric:
            raise ValueError(f"gate check {self.name!r}: vs_champion needs a per-model metric "
                             f"(evaluate/candidate/<m>), got {self.metric!r}")
        if all(b is None for b in (self.above, self.at_least, self.below, self.at_most)):
            raise ValueError(f"gate check {self.name!r} has no bound (set above, at_least, below or at_most)")
        if (self.above is not None and self.at_least is not None) or (
                self.below is not None and self.at_most is not None):
            raise ValueError(f"gate check {self.name!r}: use one lower bound and one upper bound at most")
        return self


class GateConfig(_Frozen):
    """The gate: decided by the gate task from the stored evaluation report, so changing a threshold re-decides
    (`alignloop promote --version N`) without re-sampling. Every blocking check must pass for the candidate to
    become champion.

    `checks` unset = the standard checks, built from the thresholds below by `components.gating.standard_checks`:
    proxy win rate, KL budget, length ratio, and with a held-out judge its win rate and the reward-hacking check
    (all blocking); the length-controlled win rate (advisory); the regression-set likelihood (blocking).
    """

    min_win_rate_lower: float = Field(
        0.5, ge=0, le=1, description="Lower CI bound of the candidate's win rate vs the champion must exceed this."
    )
    max_kl: float = Field(5.0, gt=0, description="KL(candidate || reference) budget in nats per sequence.")
    max_length_ratio: float = Field(1.5, gt=1, description="Candidate/champion mean length must stay within 1/x..x.")
    heldout_judge: Literal["gold", "none"] = Field(
        "gold",
        description="Independent held-out signal for the win rate (toy: the gold oracle plays the judge). The"
        " candidate must not lose to the champion on it (lower CI bound of its win rate ≥ 0.5 - tie margin).",
    )
    hacking_tolerance: float = Field(
        0.0, ge=0, description="Reward-hacking check: `reward_hacking` (> 0 when the proxy win rate is significantly"
        " above ½ while the held-out one is not above ½) must stay at most this."
    )
    max_regression_drop: float = Field(
        4.0, gt=0, description="Regression check: mean log-likelihood of the fixed reference completions (nats per"
        " sequence) may fall at most this much below the champion's."
    )
    checks: tuple[GateCheck, ...] | None = Field(
        None, description="The full gate specification; unset = the standard checks (class docstring). A list"
        " replaces them: each item is a GateCheck (name, metric, vs_champion, bound, blocking)."
    )


class EvalConfig(_Frozen):
    """Stage 6, evaluate: candidate vs champion on the held-out split (the decision is the gate's, `gate:`)."""

    n_prompts: int = Field(64, ge=1, description="Held-out prompts (eval split) scored per iteration.")
    samples_per_prompt: int = Field(4, ge=1)
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_resamples: int = Field(2000, ge=100)
    regression_set: str = Field(
        "toy", description="Fixed reference completions whose likelihood must not drop: 'toy' = per held-out"
        " prompt, the gold-best of `regression_best_of` corpus reviews (needs `gold: toy`); a path = Parquet with"
        " prompt and completion columns; 'none' = no regression check."
    )
    regression_best_of: int = Field(8, ge=1, description="'toy' regression set: corpus reviews drawn per prompt.")


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
    label: LabelConfig = LabelConfig()
    train_reward: RewardConfig = RewardConfig()
    train_policy: PolicyConfig = PolicyConfig()
    evaluate: EvalConfig = EvalConfig()
    gate: GateConfig = GateConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    train_launch: LaunchConfig = LaunchConfig()
    fanout: FanoutConfig = FanoutConfig()
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
        needs_gold = self.label.labeler == "gold" or self.label.seed_gold_pairs > 0
        if needs_gold and self.gold is None:
            raise ValueError("label.labeler='gold' or label.seed_gold_pairs > 0 needs `gold: toy`")
        if self.gate.heldout_judge == "gold" and self.gold is None:
            raise ValueError("gate.heldout_judge='gold' needs `gold: toy`")
        if self.evaluate.regression_set == "toy" and self.gold is None:
            raise ValueError("evaluate.regression_set='toy' needs `gold: toy` (or a Parquet path, or 'none')")
        return self


# Keys that moved to the section of the stage that owns them: an old key is an error naming its new place.
MOVED = {
    "label.aggregation": "ensemble.aggregation",
    "label.uw_lambda": "ensemble.uw_lambda",
    "train_reward.members": "ensemble.members",
    "evaluate.gate": "gate",
    "train_policy.loss_type": "train_policy.dpo.loss_type",
    "train_policy.sft_coef": "train_policy.dpo.sft_coef",
    "train_policy.rl.kl_coef": "train_policy.beta",
    "train_policy.probe_prompts": "train_policy.probe.prompts",
    "train_policy.probe_samples": "train_policy.probe.samples",
    "fanout.generate_shards": "generate.shards",
}


def _moved_keys(tree: dict) -> list[str]:
    found = []
    for old, new in MOVED.items():
        node: Any = tree
        for key in old.split("."):
            node = node.get(key, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            found.append(f"  {old}: moved to {new}")
    return found


_MISSING = object()


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
    node[leaf] = value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path) -> dict:
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return tree


def load_config(paths: str | Path | list, overrides: list[str] | tuple[str, ...] = ()) -> LoopConfig:
    """Read one or more YAML files (later files override earlier ones key by key, so an experiment file holds
    only what it changes), apply `key.sub=value` overrides (values parsed as YAML), validate strictly."""
    paths = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    tree: dict = {}
    for path in paths:
        tree = _merge(tree, _read_yaml(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        _set_path(tree, key.strip(), yaml.safe_load(raw))
    moved = _moved_keys(tree)
    if moved:
        raise ConfigError(f"{' + '.join(map(str, paths))}: invalid config\n" + "\n".join(moved))
    try:
        return LoopConfig.model_validate(tree)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"]) or "(top level)"
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            problems.append(f"  {field}: {msg}")
        raise ConfigError(f"{' + '.join(map(str, paths))}: invalid config\n" + "\n".join(problems)) from None


def with_overrides(cfg: LoopConfig, overrides: list[str] | tuple[str, ...], where: str = "--set") -> LoopConfig:
    """`cfg` (e.g. a stored run's config) with `key.sub=value` overrides applied, validated strictly."""
    tree = cfg.model_dump(mode="json")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where} {item!r}: expected key.path=value")
        _set_path(tree, key.strip(), yaml.safe_load(raw))
    try:
        return LoopConfig.model_validate(tree)
    except ValidationError as err:
        problems = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"{where}: invalid config\n" + "\n".join(problems)) from None


def config_hash(cfg: BaseModel) -> str:
    """sha256 of the canonical JSON of a (sub)config: the identity of 'the same settings'."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
