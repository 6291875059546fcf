"""The promotion rule: a candidate replaces the champion only if every blocking check passes.

Each check records its value, bound and verdict, so a rejected candidate always says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from components.config import GateConfig


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    bound: str        # human-readable bound, e.g. "> 0.5"
    passed: bool
    blocking: bool = True

    @property
    def reason(self) -> str:
        return f"{self.name} = {self.value:.4g} (needs {self.bound})"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    checks: tuple[Check, ...]

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks if c.blocking and not c.passed]

    def to_dict(self) -> dict:
        return {"promote": self.promote, "reasons": self.reasons, "checks": [asdict(c) for c in self.checks]}


def decide(metrics: dict[str, float], gate: GateConfig) -> GateDecision:
    """metrics keys: proxy_win_rate_ci_low, kl_candidate, length_ratio and, when a held-out judge exists,
    heldout_win_rate_ci_low. Length ratio = candidate mean tokens / champion mean tokens."""
    ratio = metrics["length_ratio"]
    checks = [
        Check("proxy_win_rate_ci_low", metrics["proxy_win_rate_ci_low"], f"> {gate.min_win_rate_lower}",
              metrics["proxy_win_rate_ci_low"] > gate.min_win_rate_lower),
        Check("kl_candidate", metrics["kl_candidate"], f"<= {gate.max_kl}", metrics["kl_candidate"] <= gate.max_kl),
        Check("length_ratio", ratio, f"in [{1 / gate.max_length_ratio:.3g}, {gate.max_length_ratio}]",
              1 / gate.max_length_ratio <= ratio <= gate.max_length_ratio),
    ]
    if gate.heldout_judge != "none":
        # Reward-hacking guard: the proxy may rise while an independent judge does not; require the judge too.
        checks.append(Check("heldout_win_rate_ci_low", metrics["heldout_win_rate_ci_low"],
                            f"> {gate.min_win_rate_lower}",
                            metrics["heldout_win_rate_ci_low"] > gate.min_win_rate_lower))
    return GateDecision(promote=all(c.passed for c in checks if c.blocking), checks=tuple(checks))
