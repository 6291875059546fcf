"""The gate's configuration (`gate:`): the promotion rule's thresholds and its check specification.

Re-exported by components/config.py (`from components.config import GateConfig`), which aggregates it into
`LoopConfig`; kept apart only so that module stays readable. The held-out signal the checks read is computed by
the evaluate stage (`evaluate.heldout`, `evaluate.judge`, `evaluate.reference_completions` in EvalConfig): the
gate only decides from the stored report's flat metrics.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateCheck(_Frozen):
    """One check of the gate: a metric of the evaluation, a bound, and whether failing it blocks promotion.

    `metric` is the name the evaluate stage logs to MLflow (components/stages/evaluate.py): per-model metrics
    `evaluate/candidate/<m>` (proxy_reward, gold_reward, kl, mean_tokens, regression_logp, reference_win_rate),
    which `vs_champion` compares with `evaluate/champion/<m>`; paired ones, candidate vs champion already, take an
    absolute bound: `evaluate/<signal>_win_rate/<value|ci_low|ci_high|n>` (signal: proxy, heldout, lc_proxy,
    lc_heldout) and `evaluate/reward_hacking`.

    Held-out signal (`evaluate.heldout`): gold = the gold reward compared per paired sample; noisy_gold / judge =
    a pairwise judge asked in both orders (1 = candidate preferred both times, 0 = champion, ½ = tie or no
    consistent verdict). `lc_heldout` exists only for gold: length control removes the part of a pointwise reward
    that length explains, which a pairwise verdict does not have.

    With `evaluate.reference_completions`, each model is also compared with that fixed reference by the held-out
    signal: `evaluate/reference_win_rate/<value|ci_low|ci_high|n>` (candidate vs reference),
    `evaluate/champion_reference_win_rate/...` (champion vs reference), and their values per model as
    `evaluate/candidate/reference_win_rate`, `evaluate/champion/reference_win_rate`.
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
    role: Literal["safety", "significance"] = Field(
        "safety", description="What a failed blocking check means (gate.keep_head): safety = the candidate is unsafe"
        " and discarded (KL, length, regression, reward hacking, not worse than the champion); significance = its"
        " gain is not yet shown (a win-rate CI): a candidate failing only these becomes the training head."
    )

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

    Outcomes: promote (every blocking check passed: `champion` and `head` move), head (every blocking safety check
    passed, a significance check did not: only `head` moves; with keep_head), discard (a safety check failed).

    `checks` unset = the standard checks, built from the thresholds below by `components.gating.standard_checks`:
    proxy win rate, KL budget, length ratio, and where the report has a held-out signal (`evaluate.heldout` not
    none) its win rate and the reward-hacking check (all blocking); the length-controlled win rate (advisory;
    held-out for gold, else proxy); the regression-set likelihood (blocking); with `max_reference_regression`, the
    reference check (blocking).
    """

    min_win_rate_lower: float = Field(
        0.5, ge=0, le=1, description="Lower CI bound of the candidate's win rate vs the champion must exceed this."
    )
    max_kl: float = Field(5.0, gt=0, description="KL(candidate || reference) budget in nats per sequence.")
    max_length_ratio: float = Field(1.5, gt=1, description="Candidate/champion mean length must stay within 1/x..x.")
    hacking_tolerance: float = Field(
        0.0, ge=0, description="Reward-hacking check: `reward_hacking` (> 0 when the proxy win rate is significantly"
        " above ½ while the held-out one is significantly below ½) must stay at most this."
    )
    max_regression_drop: float = Field(
        4.0, gt=0, description="Regression check: mean log-likelihood of the fixed reference completions (nats per"
        " sequence) may fall at most this much below the champion's."
    )
    max_reference_regression: float | None = Field(
        None, ge=0, le=1, description="Reference check (needs `evaluate.reference_completions`): the candidate's win"
        " rate against the fixed reference completions may fall at most this much below the champion's (ZenML's"
        " rule with the held-out check: beat the champion and do not regress against a constant baseline);"
        " null = off."
    )
    keep_head: bool = Field(
        True, description="Keep gains the gate cannot yet see: a candidate that passes every blocking safety check but"
        " not a significance check becomes the training head (alias `head`: what the next iteration samples from and"
        " trains), while `champion` stays; the gate keeps comparing later candidates with the champion until the"
        " gain is significant. false = such a candidate is discarded like an unsafe one."
    )
    min_head_win_rate: float = Field(
        0.5, ge=0, le=1, description="Non-inferiority (safety check `not_worse`): the candidate's held-out (else"
        " proxy) win rate vs the champion, as estimated, must be at least this: a head may be not yet significantly"
        " better, never look worse. (Not the upper CI bound: on the toy most paired held-out samples of close"
        " policies are identical ties, the judged win rate is diluted, and heads 0.3 gold below the champion had"
        " an upper bound over ½.)"
    )
    checks: tuple[GateCheck, ...] | None = Field(
        None, description="The full gate specification; unset = the standard checks (class docstring). A list"
        " replaces them: each item is a GateCheck (name, metric, vs_champion, bound, blocking)."
    )
