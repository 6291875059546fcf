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
    backend: Literal["hf"] = Field("hf", description="hf: transformers generate (CPU or GPU).")


class LabelConfig(_Frozen):
    """Stage 3, label: score completions, build pairs, keep the ones the labeler is sure about."""

    labeler: Literal["ensemble", "gold"] = Field(
        "ensemble",
        description="ensemble: reward-model ensemble (the product); gold: the toy's hidden oracle labels every"
        " pair (the upper bound other runs are compared with; needs `gold: toy`).",
    )
    aggregation: Literal["mean", "worst_case", "uncertainty_weighted"] = Field(
        "mean",
        description="How member rewards r_1..r_K combine: mean; worst_case = min_k r_k;"
        " uncertainty_weighted = mean - uw_lambda * var_k r_k.",
    )
    uw_lambda: float = Field(1.0, ge=0, description="Variance penalty of `uncertainty_weighted`.")
    min_margin_over_std: float = Field(
        1.0,
        ge=0,
        description="Keep a pair only if its aggregate margin exceeds this many ensemble standard deviations"
        " of the margin (pairs inside the ensemble's uncertainty are dropped).",
    )
    seed_gold_pairs: int = Field(
        1000, ge=0, description="Gold-labelled random pairs in the first iteration, before any reward model exists."
    )


class RewardConfig(_Frozen):
    """Stage 4, train_reward: Bradley-Terry reward-model ensemble on all preferences so far."""

    members: int = Field(3, ge=1, description="Ensemble size K; members differ by seed and bootstrap resample.")
    init: str | None = Field(
        None, description="Backbone to start members from (from_pretrained path/hub id); None = the initial policy."
    )
    learning_rate: float = Field(3e-5, gt=0)
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(64, ge=8)
    heldout_frac: float = Field(0.1, ge=0, lt=1, description="Share of pairs held out for pair accuracy.")
    bootstrap: bool = Field(True, description="Each member trains on a bootstrap resample (diversity).")


class PolicyConfig(_Frozen):
    """Stage 5, train_policy: DPO from the champion to a candidate."""

    beta: float = Field(0.1, gt=0, description="DPO temperature: strength of the implicit KL to the reference.")
    learning_rate: float = Field(1e-4, gt=0, description="1e-4 suits tiny from-scratch models; use ~5e-7 for 7B.")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    loss_type: Literal["sigmoid", "ipo", "robust"] = Field("sigmoid", description="TRL DPO loss variant.")
    sft_coef: float = Field(0.0, ge=0, description="RPO: weight of an SFT (NLL) term on chosen responses.")
    reference: Literal["initial", "previous"] = Field(
        "initial", description="initial: the loop's starting policy (fixed anchor); previous: the champion."
    )
    max_length: int = Field(64, ge=8)


class GateConfig(_Frozen):
    """The promotion rule: every check must pass for the candidate to become champion."""

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


class EvalConfig(_Frozen):
    """Stage 6, evaluate + gate: candidate vs champion on the held-out split."""

    n_prompts: int = Field(64, ge=1, description="Held-out prompts (eval split) scored per iteration.")
    samples_per_prompt: int = Field(4, ge=1)
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_resamples: int = Field(2000, ge=100)
    gate: GateConfig = GateConfig()


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

    @model_validator(mode="after")
    def _gold_needed(self) -> LoopConfig:
        needs_gold = self.label.labeler == "gold" or self.label.seed_gold_pairs > 0
        if needs_gold and self.gold is None:
            raise ValueError("label.labeler='gold' or label.seed_gold_pairs > 0 needs `gold: toy`")
        if self.evaluate.gate.heldout_judge == "gold" and self.gold is None:
            raise ValueError("evaluate.gate.heldout_judge='gold' needs `gold: toy`")
        return self


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
    try:
        return LoopConfig.model_validate(tree)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"]) or "(top level)"
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            problems.append(f"  {field}: {msg}")
        raise ConfigError(f"{' + '.join(map(str, paths))}: invalid config\n" + "\n".join(problems)) from None


def config_hash(cfg: BaseModel) -> str:
    """sha256 of the canonical JSON of a (sub)config: the identity of 'the same settings'."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
