"""The pairwise judge's configuration (`label.judge`, `evaluate.judge`): backend, rubric, budget and how the
budget is spent, retries; re-exported by components/config.py, kept apart only so that module stays readable."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    rubric: str = Field(
        "configs/rubrics/toy.md",
        description="Rubric template file (relative paths: from the current directory, else the repository root):"
        " Jinja when it ends in .j2/.jinja or uses {{ }}, else a Python format string, filled with {prompt} (the"
        " conversation), {response_a} and {response_b}; it must ask for a final [[A]], [[B]] or [[tie]] (the only"
        " answers read as verdicts). Its content's sha256 (with the system prompt) is part of the cache key. The"
        " default is the toy task's; configs/real/judge-rubric.md is a general helpfulness/harmlessness rubric.",
    )
    system_prompt: str | None = Field(
        None, description="hf/openai: system prompt shown before the rubric: inline text, or a file when it is one"
        " line ending in .md/.txt/.j2/.jinja (resolved like `rubric`); None = none."
    )
    budget: int = Field(200, ge=0, description="Judge calls allowed per iteration (each pair costs 2: both orders;"
                        " cache hits are free).")
    budget_tokens: int | None = Field(
        None, ge=0, description="Judge tokens (usage.total_tokens of the replies) allowed per iteration; a pair is"
        " started only while the spend is below it (calls in flight may pass it by `concurrency` calls). None ="
        " unlimited; local judges report 0 tokens."
    )
    select: Literal["uncertainty", "random"] = Field(
        "uncertainty",
        description="Which pairs spend the budget: uncertainty = the routed (uncertain) pairs, least certain first;"
        " random = a random sample of all built pairs (the baseline routing is measured against).",
    )
    spend: Literal["budget", "routed"] = Field(
        "budget", description="select=uncertainty: budget = spend the whole budget every iteration on the least"
        " certain pairs (routed ones first, then the rest by z = margin/std); routed = only pairs the threshold"
        " routes (none once the ensemble is confident everywhere: the loop then gets no new external label)."
    )
    concurrency: int = Field(4, ge=1, description="Judge calls in flight at once.")
    max_retries: int = Field(
        3, ge=0, description="Retries of a call after a connection error, timeout or HTTP 429/5xx (then the pair"
        " stays uncertain). HTTP 400/413 (too long) and unreadable replies are not retried."
    )
    backoff_s: float = Field(
        0.5, ge=0, description="First retry delay; doubles on every retry, +0-25% jitter, at least Retry-After."
    )
    give_up_after: int = Field(
        8, ge=0, description="Consecutive questions failed after all retries before the judge counts as down for the"
        " iteration: the rest is not asked (its pairs stay uncertain; the stage finishes with a warning). 0 = never."
    )
    timeout_s: float = Field(60.0, gt=0, description="openai: per-request timeout in seconds.")
    max_tokens: int = Field(
        512, ge=1, description="openai: tokens the judge may generate: room for its reasoning before the final"
        " [[A]]/[[B]]/[[tie]] (a reply cut off before it is no verdict)."
    )
    noise: float = Field(0.1, ge=0, le=0.5, description="toy: probability that a verdict is flipped (label noise).")
    position_bias: float = Field(
        0.1, ge=0, le=1, description="toy: probability that the judge answers 'A' (the first shown) whatever it saw."
    )

    @field_validator("rubric")
    @classmethod
    def _rubric_exists(cls, value: str, info: ValidationInfo) -> str:
        from components.backends.judge_base import REPO, find_file

        if info.data.get("backend", "none") != "none" and find_file(value) is None:  # read when the judge is built
            raise ValueError(f"rubric file not found: {value} (relative paths are read from the current directory"
                             f" or the repository root {REPO})")
        return value
