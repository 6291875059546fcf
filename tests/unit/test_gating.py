"""The gate on hand-built evaluation metrics: the standard checks, a configured specification, reward hacking,
length control and the regression check."""

import math

import numpy as np
import pytest
from pydantic import ValidationError

from components.config import GateCheck, GateConfig, load_config
from components.gating import decide, markdown
from components.metrics import pairwise_win_rate, win_rate
from components.stages.evaluate import length_residual, reward_hacking


def _wr(value, lo, hi):
    return {"value": value, "ci_low": lo, "ci_high": hi, "n": 64}


def _metrics(proxy=(0.7, 0.6, 0.8), heldout=(0.7, 0.6, 0.8), **kw):
    m = {"evaluate/candidate/kl": 1.0, "evaluate/champion/kl": 0.5, "evaluate/candidate/mean_tokens": 10.0,
         "evaluate/champion/mean_tokens": 10.0, "evaluate/candidate/regression_logp": -20.0,
         "evaluate/champion/regression_logp": -19.0}
    for name, w in (("proxy_win_rate", proxy), ("heldout_win_rate", heldout), ("lc_heldout_win_rate", heldout),
                    ("lc_proxy_win_rate", proxy)):
        m.update({f"evaluate/{name}/{k}": v for k, v in _wr(*w).items()})
    m["evaluate/reward_hacking"] = reward_hacking(_wr(*proxy), _wr(*heldout))
    return {**m, **kw}


def _failed(decision):
    return [c.name for c in decision.checks if not c.passed]


def test_standard_checks_promote_only_when_all_blocking_checks_pass():
    gate = GateConfig(max_kl=5.0)
    d = decide(_metrics(), gate)
    assert d.promote and not d.reasons
    assert [c.name for c in d.checks] == ["proxy_win_rate", "not_worse", "kl_budget", "length_ratio",
                                          "heldout_win_rate", "reward_hacking", "length_controlled_win_rate",
                                          "regression"]
    assert d.outcome == "promote"
    d = decide(_metrics(**{"evaluate/candidate/kl": 7.0}), gate)
    assert not d.promote and d.reasons == ["kl_budget: evaluate/candidate/kl = 7 (needs <= 5)"]
    assert _failed(decide(_metrics(**{"evaluate/candidate/mean_tokens": 20.0}), gate)) == ["length_ratio"]
    assert _failed(decide(_metrics(**{"evaluate/candidate/mean_tokens": 5.0}), gate)) == ["length_ratio"]
    # the old rule: a tie on the proxy (CI low exactly 0.5) does not pass "> 0.5"
    assert _failed(decide(_metrics(proxy=(0.6, 0.5, 0.7)), gate)) == ["proxy_win_rate"]


def test_reward_hacking_rejected_with_its_reason():
    """The proxy says significantly better, the held-out judge says worse."""
    d = decide(_metrics(proxy=(0.9, 0.85, 0.95), heldout=(0.3, 0.2, 0.4)), GateConfig())
    assert not d.promote
    hacking = next(c for c in d.checks if c.name == "reward_hacking")
    assert not hacking.passed and hacking.value == pytest.approx(0.1)  # min(0.85 - 0.5, 0.5 - 0.4)
    assert any(r.startswith("reward_hacking:") for r in d.reasons)
    # both signals rising is not hacking, and a proxy that does not rise significantly is not either
    assert reward_hacking(_wr(0.9, 0.85, 0.95), _wr(0.7, 0.6, 0.8)) < 0
    assert reward_hacking(_wr(0.55, 0.45, 0.65), _wr(0.3, 0.2, 0.4)) < 0
    # a held-out point estimate a hair under ½ is noise, not hacking: it has to be significantly below
    assert reward_hacking(_wr(0.9, 0.85, 0.95), _wr(0.49, 0.47, 0.51)) < 0
    # without a held-out signal (evaluate.heldout: none) neither check exists (and the proxy alone decides)
    no_heldout = {k: v for k, v in _metrics(heldout=(0.3, 0.2, 0.4)).items()
                  if "heldout" not in k and "hacking" not in k}
    d = decide(no_heldout, GateConfig())
    assert d.promote and "reward_hacking" not in [c.name for c in d.checks]
    assert next(c for c in d.checks if c.name == "length_controlled_win_rate").metric.startswith("evaluate/lc_proxy")


def test_length_controlled_win_rate_removes_a_length_only_advantage():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(32), 4)
    quality = rng.normal(size=256)
    lengths = np.concatenate([rng.integers(20, 30, 128), rng.integers(5, 15, 128)])  # candidate is longer
    reward = quality + 0.5 * lengths  # a proxy that mostly pays for length
    raw = win_rate(reward[:128], reward[128:], groups)
    lc_reward = length_residual(reward, lengths)
    lc = win_rate(lc_reward[:128], lc_reward[128:], groups)
    assert raw["value"] > 0.95
    assert lc["ci_low"] < 0.5 < lc["ci_high"]
    # equal lengths: the residual is the reward minus its mean, so comparisons are unchanged
    same = length_residual(np.array([1.0, 2.0, 3.0]), np.array([4, 4, 4]))
    assert np.allclose(same, [-1.0, 0.0, 1.0])


def test_regression_check_blocks_a_forgetful_candidate():
    gate = GateConfig(max_regression_drop=2.0)
    assert decide(_metrics(**{"evaluate/candidate/regression_logp": -20.9}), gate).promote  # 1.9 nats below
    d = decide(_metrics(**{"evaluate/candidate/regression_logp": -25.0}), gate)
    assert _failed(d) == ["regression"] and "difference vs champion" in d.checks[-1].metric
    no_set = {k: v for k, v in _metrics().items() if "regression" not in k}
    assert "regression" not in [c.name for c in decide(no_set, gate).checks]


def test_configured_specification_replaces_the_standard_checks(tmp_path):
    spec = tmp_path / "gate.yaml"
    spec.write_text("""
gate:
  checks:
    - {name: gold_gain, metric: evaluate/candidate/gold_reward, vs_champion: difference, above: 0.1}
    - {name: kl_drift, metric: evaluate/candidate/kl, vs_champion: ratio, at_most: 1.5, blocking: false}
""")
    gate = load_config(spec).gate
    m = _metrics(**{"evaluate/candidate/gold_reward": 1.0, "evaluate/champion/gold_reward": 0.5})
    d = decide(m, gate)
    assert d.promote and [c.name for c in d.checks] == ["gold_gain", "kl_drift"]
    # 1.0 / 0.5, advisory
    assert d.warnings == ["kl_drift: evaluate/candidate/kl (ratio vs champion) = 2 (needs <= 1.5)"]
    assert not decide({**m, "evaluate/candidate/gold_reward": 0.55}, gate).promote
    with pytest.raises(KeyError, match=r"gold_gain.*no metric 'evaluate/candidate/gold_reward'"):
        decide(_metrics(), gate)
    with pytest.raises(ValidationError, match="no bound"):
        GateCheck(name="x", metric="evaluate/candidate/kl")
    with pytest.raises(ValidationError, match="one lower bound"):
        GateCheck(name="x", metric="evaluate/candidate/kl", above=0, at_least=1)


def test_nan_metric_never_passes_and_markdown_names_every_check():
    d = decide(_metrics(**{"evaluate/candidate/kl": math.nan}), GateConfig())
    assert "kl_budget" in _failed(d)
    md = markdown(d.to_dict(), "iteration 3")
    assert "Decision: **REJECT**" in md and md.count("\n| ") == len(d.checks) + 1 and "kl_budget" in md


def test_pairwise_win_rate_is_the_mean_outcome_with_a_ci_clustered_by_prompt():
    groups = np.repeat(np.arange(4), 2)
    outcomes = np.array([1, 1, 0, 0, 0.5, 0.5, 1, 0])
    w = pairwise_win_rate(outcomes, groups, resamples=500, seed=1)
    assert w["value"] == 0.5 and w["n"] == 8 and 0 <= w["ci_low"] < 0.5 < w["ci_high"] <= 1
    # every comparison of a prompt moves together: the CI is as wide as 4 prompts allow, not 8 samples
    assert w["ci_high"] - w["ci_low"] >= 0.5
    assert pairwise_win_rate(np.ones(6), np.arange(6))["ci_low"] == 1.0  # unanimous: no uncertainty left
    assert math.isnan(pairwise_win_rate([], [])["value"])  # nothing compared passes no check
    # pointwise scores reduce to it: win_rate == pairwise_win_rate of (a > b) + ½ (a == b), same bootstrap
    a, b = np.array([1.0, 2.0, 3.0, 0.0]), np.array([0.0, 2.0, 4.0, -1.0])
    assert win_rate(a, b, np.array([0, 0, 1, 1]), seed=3) == pairwise_win_rate([1, 0.5, 0, 1], [0, 0, 1, 1], seed=3)


def _judged(proxy=(0.7, 0.6, 0.8), heldout=(0.7, 0.6, 0.8), **kw):
    """The metrics of a judged held-out signal (noisy_gold / judge): no length-controlled held-out win rate."""
    return {k: v for k, v in _metrics(proxy, heldout, **kw).items() if "lc_heldout" not in k}


def test_standard_checks_with_a_judged_heldout_signal():
    d = decide(_judged(), GateConfig())
    assert d.promote and "heldout_win_rate" in [c.name for c in d.checks]
    lc = next(c for c in d.checks if c.name == "length_controlled_win_rate")
    assert lc.metric == "evaluate/lc_proxy_win_rate/ci_low" and not lc.blocking
    d = decide(_judged(proxy=(0.9, 0.85, 0.95), heldout=(0.45, 0.35, 0.55)), GateConfig())
    assert not d.promote and _failed(d) == ["not_worse", "heldout_win_rate"] and d.outcome == "discard"
    d = decide(_judged(proxy=(0.9, 0.85, 0.95), heldout=(0.40, 0.33, 0.47)), GateConfig())
    assert _failed(d) == ["not_worse", "heldout_win_rate", "reward_hacking"] and d.outcome == "discard"


def test_safe_but_not_significant_becomes_the_head():
    """Only significance checks failed: the gain is kept as the training head; any safety failure discards."""
    gate = GateConfig()
    d = decide(_judged(proxy=(0.55, 0.45, 0.65), heldout=(0.54, 0.47, 0.61)), gate)
    assert d.reasons == [r for r in d.reasons if r.startswith(("proxy_win_rate", "heldout_win_rate"))]
    assert len(d.reasons) == 2 and d.outcome == "head" and not d.promote
    assert d.to_dict()["outcome"] == "head" and "**HEAD**" in markdown(d.to_dict(), "t")
    # looks worse than the champion (point estimate under ½): not a head, although not significantly worse
    d = decide(_judged(proxy=(0.55, 0.45, 0.65), heldout=(0.48, 0.40, 0.56)), gate)
    assert _failed(d)[:2] == ["proxy_win_rate", "not_worse"] and d.outcome == "discard"
    # safe on significance but over the KL budget: discarded
    d = decide(_judged(proxy=(0.55, 0.45, 0.65), heldout=(0.54, 0.47, 0.61), **{"evaluate/candidate/kl": 9.0}),
               gate)
    assert d.outcome == "discard"
    # keep_head off: the old two-way gate
    d = decide(_judged(proxy=(0.55, 0.45, 0.65), heldout=(0.54, 0.47, 0.61)), GateConfig(keep_head=False))
    assert d.outcome == "discard"
    # a custom check spec says which checks are significance checks; a failed advisory check changes nothing
    spec = GateConfig(checks=[{"name": "sig", "metric": "evaluate/heldout_win_rate/ci_low", "above": 0.5,
                               "role": "significance"},
                              {"name": "kl", "metric": "evaluate/candidate/kl", "at_most": 5.0},
                              {"name": "adv", "metric": "evaluate/candidate/kl", "at_most": 0.1, "blocking": False}])
    assert decide(_judged(heldout=(0.54, 0.47, 0.61)), spec).outcome == "head"
    assert decide(_judged(heldout=(0.64, 0.57, 0.71)), spec).outcome == "promote"


def test_reference_regression_check_is_zenmls_rule():
    """Beat the champion (heldout_win_rate) and do not regress against the fixed reference (tolerance)."""
    ref = {"evaluate/candidate/reference_win_rate": 0.60, "evaluate/champion/reference_win_rate": 0.64}
    assert "reference_regression" not in [c.name for c in decide(_judged(**ref), GateConfig()).checks]
    assert decide(_judged(**ref), GateConfig(max_reference_regression=0.05)).promote
    d = decide(_judged(**ref), GateConfig(max_reference_regression=0.02))
    assert not d.promote and _failed(d) == ["reference_regression"]
    assert d.reasons[0].startswith("reference_regression: evaluate/candidate/reference_win_rate (difference vs")
    with pytest.raises(KeyError, match="reference_win_rate"):  # asked for, but the evaluation had no reference
        decide(_judged(), GateConfig(max_reference_regression=0.02))
