"""The embedded synthetic task's "review" language: vocabulary, prompt pool and a deliberately mediocre corpus.

A prompt is `review <topic> <aspect> <occasion> :` (e.g. `review pizza crust today :`); a completion is the text
after it, starting with a space (` the crust was great .`). Words are separated by single spaces, so
`str.split()` is the tokenizer of record for everything that reads this language (gold reward, tokenizer vocab).

The corpus is what the bootstrap policy is pre-trained on. It is mediocre on purpose, so the RLHF loop has room
to improve and room to be fooled: sentiment is balanced and mixed within a review, clauses drift onto other
topics' words, some reviews run on for many clauses, and some lack the final ".".

Only the standard library is imported at module level (pyarrow is imported inside `make_prompt_pool`), so the
gold reward and unit tests import this in milliseconds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    aspects: tuple[str, ...]  # nouns a prompt can ask about; each is also an on-topic word
    nouns: tuple[str, ...]  # further on-topic nouns


# topic: (aspects, further nouns)
TOPICS: dict[str, Topic] = {
    name: Topic(tuple(aspects.split()), tuple(nouns.split()))
    for name, aspects, nouns in (
        ("pizza", "crust sauce cheese toppings dough slice", "pepperoni oven mozzarella basil"),
        ("burger", "patty bun fries pickles bacon ketchup", "grill onion lettuce tomato"),
        ("coffee", "espresso latte beans foam roast aroma", "barista cup mug milk"),
        ("movie", "plot actors ending script soundtrack pacing", "director scene cinema sequel"),
        ("book", "chapters characters prose author cover dialogue", "novel pages story paperback"),
        ("concert", "band vocals crowd setlist venue encore", "drummer guitar stage tickets"),
        ("hotel", "room staff lobby bed breakfast pool", "suite checkin towels balcony"),
        ("airline", "flight crew seats boarding luggage legroom", "pilot gate cabin delay"),
        ("phone", "battery screen charger signal apps speaker", "case ringtone calls storage"),
        ("laptop", "keyboard trackpad display fan hinge ports", "processor ram webcam lid"),
        ("camera", "lens autofocus sensor flash zoom shutter", "tripod photos pixels viewfinder"),
        ("headphones", "earcups bass cable microphone headband treble", "bluetooth volume earbuds headset"),
        ("car", "engine brakes mileage steering trunk dashboard", "tires mechanic fuel sedan"),
        ("bike", "gears saddle chain frame pedals handlebars", "helmet spokes wheels bell"),
        ("shoes", "sole laces fit heel insole leather", "sneakers size toe boots"),
        ("gym", "coaches equipment lockers classes showers weights", "treadmill membership yoga sauna"),
    )
}

# Context words that multiply the number of distinct prompts; they carry no meaning for the gold reward.
OCCASIONS = ("today", "yesterday", "weekend", "again", "lately", "recently")

POSITIVE_ADJECTIVES = ("great", "good", "excellent", "amazing", "lovely", "perfect", "fantastic", "nice")
NEGATIVE_ADJECTIVES = ("bad", "awful", "terrible", "poor", "horrible", "boring", "disappointing", "mediocre")
POSITIVE_VERBS = ("loved", "enjoyed", "liked")
NEGATIVE_VERBS = ("hated", "disliked", "regretted")
POSITIVE = frozenset(POSITIVE_ADJECTIVES + POSITIVE_VERBS)
NEGATIVE = frozenset(NEGATIVE_ADJECTIVES + NEGATIVE_VERBS)

# Grammar: belongs to no topic, carries no sentiment, and may repeat without penalty.
FUNCTION_WORDS = ("the", "was", "it", "i", "and", "but", "so", "also", "really", "very", "quite", "then")
PROMPT_WORDS = ("review", ":")
PERIOD = "."

# word -> topic it is on-topic for; every topic-specific word belongs to exactly one topic.
WORD_TOPIC: dict[str, str] = {
    word: name for name, topic in TOPICS.items() for word in (name, *topic.aspects, *topic.nouns)
}
assert len(WORD_TOPIC) == sum(1 + len(t.aspects) + len(t.nouns) for t in TOPICS.values()), "topic words overlap"

# Corpus shape. Tuned so the pre-trained policy's mean gold reward is about -0.2, its best of 8 samples per
# prompt above +1.5 (components/toy/bootstrap.py reports both), and completions average 12-14 tokens.
CLAUSE_COUNT_WEIGHTS = {1: 0.30, 2: 0.35, 3: 0.20, 4: 0.15}  # a concise review has 1-2 clauses
P_RUN_ON = 0.12  # instead, ramble on for 5-8 clauses
RUN_ON_CLAUSES = (5, 8)
P_STAY_ON_POLARITY = 0.7  # each clause keeps the review's overall sentiment, else flips it (mixed reviews)
P_DRIFT = 0.15  # a clause talks about another topic's noun
P_ASPECT_FIRST = 0.6  # the first clause addresses the prompt's aspect
P_FILLER = 0.2  # a clause starts with a filler phrase
P_SENTENCE_BREAK = 0.25  # clauses are joined by "." instead of a conjunction
P_MISSING_PERIOD = 0.2  # the review stops without its final "."
CONNECTORS = ("and", "but", "so", "also", "then")
# The chatter a mediocre review drifts into; some of it carries sentiment about something else ("nice" weather).
FILLER_PHRASES = (
    ("honestly",),
    ("overall",),
    ("anyway",),
    ("well",),
    ("maybe",),
    ("i", "think"),
    ("the", "weather", "was", "nice", "and"),
    ("the", "traffic", "was", "bad", "so"),
    ("my", "friend", "said"),
    ("on", "monday"),
    ("stuff", "and", "things", "but"),
)


def vocabulary() -> list[str]:
    """Every word the language can produce, in a fixed order (the tokenizer's vocabulary after its specials)."""
    sentiment = POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES + POSITIVE_VERBS + NEGATIVE_VERBS
    filler = [word for phrase in FILLER_PHRASES for word in phrase]
    words = [*PROMPT_WORDS, PERIOD, *OCCASIONS, *WORD_TOPIC, *sentiment, *FUNCTION_WORDS, *filler]
    return list(dict.fromkeys(words))


def format_prompt(topic: str, aspect: str, occasion: str) -> str:
    return f"review {topic} {aspect} {occasion} :"


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(topic, aspect) of a prompt made by `format_prompt`."""
    _, topic, aspect, *_ = prompt.split()
    return topic, aspect


def _clause(rng: random.Random, noun: str, sentiment: int) -> list[str]:
    adjectives = POSITIVE_ADJECTIVES if sentiment > 0 else NEGATIVE_ADJECTIVES
    verbs = POSITIVE_VERBS if sentiment > 0 else NEGATIVE_VERBS
    form = rng.randrange(5)
    if form == 0:
        return ["the", noun, "was", rng.choice(adjectives)]
    if form == 1:
        return ["the", noun, "was", rng.choice(("really", "very", "quite")), rng.choice(adjectives)]
    if form == 2:
        return ["i", rng.choice(verbs), "the", noun]
    if form == 3:
        return [rng.choice(adjectives), noun]
    return ["it", "was", rng.choice(adjectives)]  # sentiment with no noun at all


def sample_review(rng: random.Random, topic: str, aspect: str | None = None) -> str:
    """One corpus completion (leading space included) for a review of `topic`, optionally about `aspect`."""
    on_topic_nouns = TOPICS[topic].aspects + TOPICS[topic].nouns
    other_topics = [t for t in TOPICS if t != topic]
    polarity = rng.choice((1, -1))
    if rng.random() < P_RUN_ON:
        n_clauses = rng.randint(*RUN_ON_CLAUSES)
    else:
        n_clauses = rng.choices(list(CLAUSE_COUNT_WEIGHTS), weights=list(CLAUSE_COUNT_WEIGHTS.values()))[0]

    words: list[str] = []
    for i in range(n_clauses):
        if rng.random() < P_DRIFT:
            other = TOPICS[rng.choice(other_topics)]
            noun = rng.choice(other.aspects + other.nouns)
        elif i == 0 and aspect is not None and rng.random() < P_ASPECT_FIRST:
            noun = aspect
        else:
            noun = rng.choice(on_topic_nouns)
        sentiment = polarity if rng.random() < P_STAY_ON_POLARITY else -polarity
        if i > 0:
            words += [PERIOD] if rng.random() < P_SENTENCE_BREAK else [rng.choice(CONNECTORS)]
        if rng.random() < P_FILLER:
            words += rng.choice(FILLER_PHRASES)
        words += _clause(rng, noun, sentiment)
    if rng.random() >= P_MISSING_PERIOD:
        words.append(PERIOD)
    return " " + " ".join(words)


def sample_corpus(seed: int, n: int) -> list[tuple[str, str]]:
    """`n` (prompt, completion) pairs over uniformly drawn topics, aspects and occasions; deterministic in seed."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(n):
        topic = rng.choice(list(TOPICS))
        aspect = rng.choice(TOPICS[topic].aspects)
        prompt = format_prompt(topic, aspect, rng.choice(OCCASIONS))
        corpus.append((prompt, sample_review(rng, topic, aspect)))
    return corpus


def make_prompt_pool(seed: int, n_train_per_topic: int, n_eval_per_topic: int):
    """The prompt pool as a pyarrow Table (prompt_id, prompt, source, split), eval disjoint from train by text.

    Each topic has len(aspects) * len(OCCASIONS) distinct prompts: a seeded shuffle gives its first
    `n_eval_per_topic` to eval and cycles through the rest for `n_train_per_topic` train rows (a prompt text
    repeats only when more train rows are asked for than remain). prompt_id = sha256 of the text and the
    occurrence number of that text in the pool, so repeated texts still get unique ids.
    """
    import pyarrow as pa

    rng = random.Random(seed)
    rows: list[tuple[str, str, str]] = []  # (prompt, topic, split)
    for topic_name, topic in TOPICS.items():
        texts = [format_prompt(topic_name, a, o) for a in topic.aspects for o in OCCASIONS]
        rng.shuffle(texts)
        if n_eval_per_topic >= len(texts):
            raise ValueError(f"n_eval_per_topic={n_eval_per_topic} leaves no train prompts out of {len(texts)}")
        eval_texts, train_texts = texts[:n_eval_per_topic], texts[n_eval_per_topic:]
        rows += [(text, topic_name, "eval") for text in eval_texts]
        rows += [(train_texts[i % len(train_texts)], topic_name, "train") for i in range(n_train_per_topic)]

    occurrences: dict[str, int] = {}
    prompt_ids = []
    for text, _, _ in rows:
        k = occurrences.get(text, 0)
        occurrences[text] = k + 1
        prompt_ids.append(hashlib.sha256(f"{text}\n{k}".encode()).hexdigest())
    return pa.table(
        {
            "prompt_id": pa.array(prompt_ids, pa.string()),
            "prompt": pa.array([r[0] for r in rows], pa.string()),
            "source": pa.array([r[1] for r in rows], pa.string()),
            "split": pa.array([r[2] for r in rows], pa.string()),
        }
    )
