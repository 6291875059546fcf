"""The embedded task's regression set: fixed, good reference completions whose likelihood must not drop.

For each held-out prompt, the gold-best of n corpus reviews (seeded, so the set is the same every iteration).
A candidate that gains reward by forgetting how good reviews are written loses likelihood on these.
"""

from __future__ import annotations

import random

from components.toy.gold import gold_reward
from components.toy.language import parse_prompt, sample_review


def gold_best_reviews(prompts: list[str], best_of: int, seed: int) -> list[str]:
    """One reference completion per prompt: the highest-gold of `best_of` corpus reviews about its topic/aspect."""
    rng = random.Random(seed)
    best = []
    for prompt in prompts:
        topic, aspect = parse_prompt(prompt)
        drafts = [sample_review(rng, topic, aspect) for _ in range(best_of)]
        rewards = gold_reward([prompt] * best_of, drafts)
        best.append(drafts[max(range(best_of), key=rewards.__getitem__)])
    return best
