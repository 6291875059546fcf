"""The promotion rule: a candidate replaces the champion only if every blocking check passes.

Three outcomes (`GateDecision.outcome`): promote (all blocking checks pass: champion and head move to the
candidate), head (every blocking *safety* check passes but a *significance* check does not, with
`gate.keep_head`: the candidate becomes the training head the next iteration starts from, the champion stays,
so a gain too small to show in one night is kept and compounds until it is significant), discard (a safety
check failed, or keep_head is off: nothing moves).

A check (config: `GateCheck`) reads one metric of the evaluation, optionally against the champion's value,
and compares it with a bound. Each check records its value, bound and verdict, so a rejected candidate
always says why, and the decision renders as a table (Prefect artifact, MLflow, the iteration report).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from components.config import GateCheck, GateConfig


@dataclass(frozen=True)
class Check:
    name: str
    metric: str
    value: float
    bound: str        # human-readable bound, e.g. "> 0.5"
    passed: bool
    blocking: bool = True
    role: str = "safety"

    @property
    def reason(self) -> str:
        return f"{self.name}: {self.metric} = {self.value:.4g} (needs {self.bound})"


OUTCOMES = ("promote", "head", "discard")


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    checks: tuple[Check, ...]
    outcome: str = "discard"  # one of OUTCOMES

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks if c.blocking and not c.passed]

    @property
    def warnings(self) -> list[str]:
        return [c.reason for c in self.checks if not c.blocking and not c.passed]

    def to_dict(self) -> dict:
        return {"promote": self.promote, "outcome": self.outcome, "reasons": self.reasons, "warnings": self.warnings,
                "checks": [asdict(c) for c in self.checks]}


HELDOUT = "evaluate/heldout_win_rate/ci_low"  # present iff the evaluation had a held-out signal


def outcome_of(decision: dict) -> str:
    """promote | head | discard of a decision dict (a ledger from before heads: promote or discard)."""
    return decision.get("outcome") or ("promote" if decision["promote"] else "discard")


def standard_checks(gate: GateConfig, metrics: dict[str, float]) -> tuple[GateCheck, ...]:
    """The default specification, from the thresholds in `gate` and what the evaluation measured (its metrics):
    the held-out checks where it had a held-out signal (`evaluate.heldout`), the length-controlled held-out win
    rate only for a pointwise one (gold), the regression check where it had a regression set."""
    win = gate.min_win_rate_lower
    signal = "heldout" if HELDOUT in metrics else "proxy"
    checks = [
        GateCheck(name="proxy_win_rate", metric="evaluate/proxy_win_rate/ci_low", above=win, role="significance"),
        # non-inferiority: a head that is not yet significantly better must not look worse either (the point
        # estimate: an upper CI bound let heads 0.3 gold below the champion through on the toy, where ties dilute
        # the judged win rate; benchmarks/README.md §8)
        GateCheck(name="not_worse", metric=f"evaluate/{signal}_win_rate/value", at_least=gate.min_head_win_rate),
        GateCheck(name="kl_budget", metric="evaluate/candidate/kl", at_most=gate.max_kl),
        GateCheck(name="length_ratio", metric="evaluate/candidate/mean_tokens", vs_champion="ratio",
                  at_least=1 / gate.max_length_ratio, at_most=gate.max_length_ratio),
    ]
    if HELDOUT in metrics:
        checks += [
            GateCheck(name="heldout_win_rate", metric=HELDOUT, above=win, role="significance"),
            # The proxy may rise while an independent signal does not: the classic over-optimisation signature.
            GateCheck(name="reward_hacking", metric="evaluate/reward_hacking", at_most=gate.hacking_tolerance),
        ]
    # Length-controlled: does the candidate still win once reward explained by length is removed? Advisory,
    # because on small held-out sets its CI is wide; the length ratio above is what blocks. Only a pointwise
    # held-out signal (gold) has a length-controlled version; a judge's verdicts do not.
    lc = "lc_heldout_win_rate" if "evaluate/lc_heldout_win_rate/ci_low" in metrics else "lc_proxy_win_rate"
    checks.append(GateCheck(name="length_controlled_win_rate", metric=f"evaluate/{lc}/ci_low", above=win,
                            blocking=False))
    if "evaluate/candidate/regression_logp" in metrics:
        checks.append(GateCheck(name="regression", metric="evaluate/candidate/regression_logp",
                                vs_champion="difference",
                                at_least=-gate.max_regression_drop))
    if gate.max_reference_regression is not None:
        # ZenML's rule with heldout_win_rate: beat the champion, and do not lose ground against a fixed baseline
        # (the champion drifts; the reference completions do not).
        checks.append(GateCheck(name="reference_regression", metric="evaluate/candidate/reference_win_rate",
                                vs_champion="difference", at_least=-gate.max_reference_regression))
    return tuple(checks)


def _lookup(metrics: dict[str, float], key: str, check: GateCheck) -> float:
    if key not in metrics:
        raise KeyError(f"gate check {check.name!r}: the evaluation has no metric {key!r}; "
                       f"available: {sorted(metrics)}")
    return float(metrics[key])


def measure(check: GateCheck, metrics: dict[str, float]) -> float:
    """The checked value: the metric as is, or the candidate's against the champion's (`evaluate/champion/<m>`)."""
    if check.vs_champion == "none":
        return _lookup(metrics, check.metric, check)
    cand = _lookup(metrics, check.metric, check)
    champ = _lookup(metrics, check.metric.replace("/candidate/", "/champion/", 1), check)
    if check.vs_champion == "difference":
        return cand - champ
    return cand / champ if champ else math.inf


def bound_text(check: GateCheck) -> str:
    parts = [f"{op} {v:.4g}" for op, v in ((">", check.above), (">=", check.at_least), ("<", check.below),
                                           ("<=", check.at_most)) if v is not None]
    return " and ".join(parts)


def passes(check: GateCheck, value: float) -> bool:
    """NaN passes nothing: a metric that could not be computed must not let a candidate through."""
    return ((check.above is None or value > check.above) and (check.at_least is None or value >= check.at_least)
            and (check.below is None or value < check.below) and (check.at_most is None or value <= check.at_most)
            and not math.isnan(value))


def decide(metrics: dict[str, float], gate: GateConfig) -> GateDecision:
    """`metrics`: the evaluation's flat metrics, named as in MLflow (`evaluate/candidate/kl`,
    `evaluate/champion/mean_tokens`, `evaluate/proxy_win_rate/ci_low`, `evaluate/reward_hacking`, ...).
    Checks: `gate.checks` if given, else `standard_checks`."""
    spec = gate.checks if gate.checks is not None else standard_checks(gate, metrics)
    checks = []
    for c in spec:
        value = measure(c, metrics)
        metric = c.metric if c.vs_champion == "none" else f"{c.metric} ({c.vs_champion} vs champion)"
        checks.append(Check(c.name, metric, value, bound_text(c), passes(c, value), c.blocking, c.role))
    failed = {c.role for c in checks if c.blocking and not c.passed}
    outcome = "promote" if not failed else "head" if failed == {"significance"} and gate.keep_head else "discard"
    return GateDecision(promote=outcome == "promote", checks=tuple(checks), outcome=outcome)


def markdown(decision: dict, title: str) -> str:
    """The decision (a `GateDecision.to_dict()`) as a Markdown table with its verdict and reasons."""
    outcome = decision.get("outcome", "promote" if decision["promote"] else "discard")
    verdict = {"promote": "**PROMOTE**", "head": "**HEAD** (kept as training head; champion stays)"}.get(
        outcome, "**REJECT**")
    rows = [f"# {title}", "", f"Decision: {verdict}", "",
            "| check | metric | value | bound | verdict | blocking | role |", "|---|---|---:|---|---|---|---|"]
    for c in decision["checks"]:
        rows.append(f"| {c['name']} | {c['metric']} | {c['value']:.4g} | {c['bound']} | "
                    f"{'pass' if c['passed'] else 'FAIL'} | {'yes' if c['blocking'] else 'no'} | "
                    f"{c.get('role', 'safety')} |")
    for label, key in (("Reasons", "reasons"), ("Warnings", "warnings")):
        if decision.get(key):
            rows += ["", f"{label}:", *[f"- {r}" for r in decision[key]]]
    return "\n".join(rows) + "\n"
