"""Preference-pair construction and filtering over one iteration's rollouts (pure functions over arrays)."""

from __future__ import annotations

import hashlib

import numpy as np


def pair_id(prompt: str, chosen: str, rejected: str) -> str:
    return hashlib.sha256("\x1f".join((prompt, chosen, rejected)).encode()).hexdigest()[:32]


def check_same_prompt(group_ids: list[str], prompts: list[str], chosen: np.ndarray, rejected: np.ndarray) -> None:
    """Every pair's two completions answer the same prompt: same prompt_id and same prompt text. Raises ValueError
    naming how many pairs mix prompts and the first one (a pool with repeated ids, or a bug in pairing)."""
    bad = [n for n, (c, r) in enumerate(zip(chosen.tolist(), rejected.tolist()))
           if group_ids[c] != group_ids[r] or prompts[c] != prompts[r]]
    if bad:
        c, r = int(chosen[bad[0]]), int(rejected[bad[0]])
        raise ValueError(f"{len(bad)} of {len(chosen)} preference pairs mix prompts, e.g. rows {c} and {r}: "
                         f"prompt_id {group_ids[c]!r} vs {group_ids[r]!r}, prompt {prompts[c][:60]!r} vs "
                         f"{prompts[r][:60]!r} (prompt ids must be unique per prompt text)")


def _groups(group_ids: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    return groups


def best_vs_worst(group_ids: list[str], reward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt group: chosen = argmax reward, rejected = argmin reward (groups with one distinct reward
    value are skipped, they carry no preference). Returns index arrays (chosen, rejected)."""
    chosen, rejected = [], []
    for idx in _groups(group_ids).values():
        r = reward[idx]
        hi, lo = idx[int(np.argmax(r))], idx[int(np.argmin(r))]
        if reward[hi] > reward[lo]:
            chosen.append(hi)
            rejected.append(lo)
    return np.asarray(chosen, dtype=np.int64), np.asarray(rejected, dtype=np.int64)


def all_pairs(group_ids: list[str], reward: np.ndarray, min_margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt group: every pair (i, j) with reward[i] - reward[j] > 0 and >= `min_margin`, oriented by reward.
    K samples give up to K(K-1)/2 pairs per prompt: more labels from the same rollouts, more correlated ones."""
    chosen, rejected = [], []
    for idx in _groups(group_ids).values():
        for n, i in enumerate(idx):
            for j in idx[n + 1:]:
                hi, lo = (i, j) if reward[i] >= reward[j] else (j, i)
                if reward[hi] > reward[lo] and reward[hi] - reward[lo] >= min_margin:
                    chosen.append(hi)
                    rejected.append(lo)
    return np.asarray(chosen, dtype=np.int64), np.asarray(rejected, dtype=np.int64)


def rejection_sampling_pairs(group_ids: list[str], reward: np.ndarray, beta: float, pairs_per_prompt: int,
                             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RSO-style pairs: per prompt, draw candidates without replacement by rejection sampling towards
    π*(y|x) ∝ π(y|x)·exp(r(x,y)/β) — propose a remaining sample uniformly (the samples already come from π),
    accept it with probability exp((r - M)/β), M = max r over the remaining ones — and pair consecutive accepted
    samples, oriented by reward. β → 0 gives best vs second best; β → ∞ gives random pairs."""
    chosen, rejected = [], []
    for idx in _groups(group_ids).values():
        left, accepted = list(idx), []
        while len(left) > 0 and len(accepted) < 2 * pairs_per_prompt:
            top = max(reward[i] for i in left)
            k = left[int(rng.integers(len(left)))]
            if rng.random() < np.exp((reward[k] - top) / beta):
                accepted.append(k)
                left.remove(k)
        for a, b in zip(accepted[0::2], accepted[1::2]):
            if reward[a] != reward[b]:
                chosen.append(a if reward[a] > reward[b] else b)
                rejected.append(b if reward[a] > reward[b] else a)
    return np.asarray(chosen, dtype=np.int64), np.asarray(rejected, dtype=np.int64)


def random_pairs(group_ids: list[str], n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to `n_pairs` distinct unordered pairs within prompt groups, spread evenly over groups
    (round-robin), in random order. Orientation is left to the labeler."""
    per_group = []
    for idx in _groups(group_ids).values():
        pairs = [(a, b) for i, a in enumerate(idx) for b in idx[i + 1:]]
        rng.shuffle(pairs)
        per_group.append(pairs)
    picked: list[tuple[int, int]] = []
    depth = 0
    while len(picked) < n_pairs and any(depth < len(p) for p in per_group):
        picked += [p[depth] for p in per_group if depth < len(p)]
        depth += 1
    picked = picked[:n_pairs]
    rng.shuffle(picked)
    a = np.asarray([p[0] for p in picked], dtype=np.int64)
    b = np.asarray([p[1] for p in picked], dtype=np.int64)
    return a, b


def orient(reward: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orient pairs by a labeler's reward: returns (chosen, rejected, keep) where ties are not kept."""
    a_wins = reward[a] > reward[b]
    chosen = np.where(a_wins, a, b)
    rejected = np.where(a_wins, b, a)
    return chosen, rejected, reward[a] != reward[b]


def confident(margin: np.ndarray, margin_std: np.ndarray, min_margin_over_std: float) -> np.ndarray:
    """Keep a pair only if its margin clears the ensemble's uncertainty: margin > k · std(margin).
    With k = 0 every pair with a positive margin is kept."""
    return margin > min_margin_over_std * margin_std
