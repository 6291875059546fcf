"""Routing by uncertainty: which pairs the reward-model ensemble labels, which go to the judge, which to humans.

For pairs oriented by the ensemble's aggregate reward (chosen = higher aggregate), with per-pair margin m,
ensemble std of the margin σ and member agreement α (share of members preferring chosen):

    uncertain  ⇔  m ≤ k·σ  or  α < α_min                    (k = min_margin_over_std, α_min = min_agreement)

Certain pairs are labelled by the ensemble (label_source = rm_ensemble). The judge's budget is offered pairs
in priority order (`judge_order`): with select = uncertainty, uncertain pairs first, least certain first (lowest
z = m/σ: where the ensemble is closest to a coin flip, a judge verdict adds the most), then (spend = budget) the
remaining pairs the same way, so the budget is spent every iteration; with select = random, a random sample of
all pairs (the baseline). A consistent judge verdict becomes the label (label_source = judge,
oriented by the judge, which may flip the ensemble). Only "a" and "b" are verdicts: a tie, an inconsistent
pair, a reply without a verdict marker and a failed call (`components.judge.Outcome`: tie, inconsistent,
no_verdict, error) never become labels. Uncertain pairs the judge did not settle (those, over budget, no judge)
are dropped, or exported to the human review queue with that reason. A judge that does not settle a pair the
ensemble was sure of leaves the ensemble's label: a non-verdict carries no information against it.

A single scorer (K = 1: one reward model, frozen or trained) has std 0 and agreement 1, so the rule above finds
no uncertain pair; with a judge configured its budget then goes to the pairs of smallest |margin| (`judge_order`
with `single`), without one nothing is routed (components.validation warns when routing thresholds are set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.judge import SETTLED, Outcome
from components.preferences import confident


def uncertain(margin: np.ndarray, margin_std: np.ndarray, agreement: np.ndarray, min_margin_over_std: float,
              min_agreement: float) -> np.ndarray:
    """Boolean mask of pairs the ensemble is not sure of (see the module docstring)."""
    return ~confident(margin, margin_std, min_margin_over_std) | (agreement < min_agreement)


def judge_order(is_uncertain: np.ndarray, margin: np.ndarray, margin_std: np.ndarray, select: str,
                rng: np.random.Generator, *, single: bool = False, spend: str = "budget") -> np.ndarray:
    """Indices of the pairs offered to the judge, highest priority first. `single`: one scorer (K = 1), whose
    margin std is 0 and agreement 1, so no pair is uncertain by them: every pair is offered, smallest |margin|
    first (where one reward model is closest to a coin flip). `spend`: routed = only the uncertain pairs;
    budget = the uncertain pairs, then every other pair, each group least certain (lowest z = m/σ) first, so the
    whole budget buys the B most informative labels every iteration even when the threshold routes none."""
    if select == "random":
        return rng.permutation(len(margin))
    if select != "uncertainty":
        raise ValueError(f"unknown judge selection {select!r}")
    if single:
        return np.argsort(np.abs(margin), kind="stable")
    z = margin / np.maximum(margin_std, 1e-12)
    groups = (np.flatnonzero(is_uncertain),) + ((np.flatnonzero(~is_uncertain),) if spend == "budget" else ())
    return np.concatenate([g[np.argsort(z[g], kind="stable")] for g in groups]).astype(np.int64)


@dataclass
class Routed:
    source: np.ndarray  # [P] str: "rm_ensemble" | "judge" | "" (not labelled)
    flip: np.ndarray  # [P] bool: the judge preferred the ensemble's `rejected`
    to_human: np.ndarray  # [P] bool: exported to the human review queue
    reason: np.ndarray  # [P] str: why a pair is unlabelled: "tie" | "inconsistent" | "no_verdict" | "error" |
    #                     "over_budget" | "not_judged" | ""


def resolve(is_uncertain: np.ndarray, offered: np.ndarray, outcomes: list[Outcome], *, to_human_queue: bool
            ) -> Routed:
    """Combine the ensemble's certainty and the judge's outcomes (`outcomes[j]` for pair `offered[j]`, where "a"
    is the ensemble's chosen side) into one label decision per pair."""
    n = len(is_uncertain)
    verdict = np.full(n, "not_judged", dtype=object)
    verdict[np.asarray(offered, dtype=np.int64)] = outcomes
    by_judge = np.isin(verdict, SETTLED)
    source = np.where(by_judge, "judge", np.where(is_uncertain, "", "rm_ensemble")).astype(object)
    unlabelled = source == ""
    return Routed(source=source, flip=verdict == "b", to_human=unlabelled & to_human_queue,
                  reason=np.where(unlabelled, verdict, "").astype(object))


def routing_metrics(is_uncertain: np.ndarray, offered: np.ndarray, outcomes: list[Outcome], routed: Routed
                    ) -> dict[str, float]:
    """label/... metrics of one iteration's routing (counts of pairs; rates NaN when undefined)."""
    out = np.asarray(outcomes, dtype=object)
    settled = np.isin(out, SETTLED)
    return {
        "label/routed": int(is_uncertain.sum()),
        "label/judge_pairs_offered": int((out != "over_budget").sum()),
        "label/judge_settled": int(settled.sum()),
        # offered pairs the judge did not settle, by why: never labels
        "label/judge_inconsistent": int((out == "inconsistent").sum()),
        "label/judge_pairs_tie": int((out == "tie").sum()),
        "label/judge_pairs_no_verdict": int((out == "no_verdict").sum()),
        "label/judge_pairs_error": int((out == "error").sum()),
        "label/judge_flipped": int((out == "b").sum()),
        # among pairs the judge settled: share where it agrees with the ensemble's orientation
        "label/rm_judge_agreement": float((out[settled] == "a").mean()) if settled.any() else float("nan"),
        "label/human_queued": int(routed.to_human.sum()),
        "label/dropped_uncertain": int(((routed.source == "") & ~routed.to_human).sum()),
    }
