"""The embedded task's language, prompt pool, hidden gold reward and tokenizer, on hand-built data."""

import random
from statistics import fmean

import pytest

from components.toy import language as L
from components.toy.gold import gold_reward, gold_terms

PROMPT = "review pizza crust today :"
CONCISE_POSITIVE = " the crust was great and the sauce was lovely ."
OFF_TOPIC = " the battery was great and the screen was lovely ."
RUN_ON = (
    " the crust was great and the sauce was lovely and i loved the cheese and the dough was perfect"
    " and the slice was amazing and the oven was nice and i enjoyed the basil"
)
NEGATIVE = " the crust was awful and the sauce was terrible ."


def gold(completion: str, prompt: str = PROMPT) -> float:
    return gold_reward([prompt], [completion])[0]


def test_gold_prefers_concise_positive_on_topic_reviews():
    best = gold(CONCISE_POSITIVE)
    assert best > 2.0
    for worse in (OFF_TOPIC, RUN_ON, NEGATIVE):
        assert best > gold(worse) + 1.5, worse


def test_gold_rewards_answering_the_aspect_asked():
    assert gold(" the crust was great .") > gold(" the sauce was great .")
    assert gold(" the crust was great .") < gold(" the sauce was great .", "review pizza sauce today :") + 1e-9


def test_gold_punishes_positive_spam_that_a_sentiment_proxy_would_love():
    spam = " great" * 20 + " ."
    assert sum(w in L.POSITIVE for w in spam.split()) == 20
    assert gold(spam) < -3
    assert gold(" the crust was great great great .") < gold(" the crust was great .")
    assert gold(" the crust was great and lovely .") > gold(" the crust was great .")  # distinct words do pay


def test_gold_form_terms():
    assert gold(" the crust was great .") - gold(" the crust was great") == pytest.approx(0.8)
    assert gold(" the crust was great . .") < gold(" the crust was great .")
    assert gold("") < gold(NEGATIVE)


def test_gold_terms_sum_to_the_reward_and_mismatched_lengths_fail():
    assert sum(gold_terms(PROMPT, RUN_ON).values()) == pytest.approx(gold(RUN_ON))
    with pytest.raises(ValueError):
        gold_reward([PROMPT], [])


def test_corpus_is_mediocre_with_room_to_improve():
    corpus = L.sample_corpus(0, 2000)
    rewards = gold_reward([p for p, _ in corpus], [c for _, c in corpus])
    assert -0.4 < fmean(rewards) < 0.0
    assert max(rewards) > 2.0 and min(rewards) < -3.0
    completions = [c.split() for _, c in corpus]
    assert 0.1 < fmean(c[-1] != "." for c in completions) < 0.3  # some lack the final "."
    assert 0.05 < fmean(len(c) > 25 for c in completions) < 0.3  # some run on
    assert 12 < fmean(len(c) for c in completions) < 16


def test_corpus_is_deterministic_in_its_seed_and_stays_in_vocabulary():
    assert L.sample_corpus(3, 50) == L.sample_corpus(3, 50)
    assert L.sample_corpus(3, 50) != L.sample_corpus(4, 50)
    vocabulary = set(L.vocabulary())
    for prompt, completion in L.sample_corpus(3, 500):
        assert completion.startswith(" ") and not completion.startswith("  ")
        assert set(prompt.split()) | set(completion.split()) <= vocabulary
    review = L.sample_review(random.Random(0), "hotel", "staff")
    assert review == L.sample_review(random.Random(0), "hotel", "staff")


def test_topic_words_are_disjoint_from_shared_words():
    shared = set(L.vocabulary()) - set(L.WORD_TOPIC)
    assert len(L.vocabulary()) == len(L.WORD_TOPIC) + len(shared)
    assert not (L.POSITIVE | L.NEGATIVE) & (set(L.FUNCTION_WORDS) | set(L.WORD_TOPIC))
    assert len(L.TOPICS) >= 12


def test_prompt_pool_ids_unique_and_eval_disjoint_from_train():
    pool = L.make_prompt_pool(seed=0, n_train_per_topic=24, n_eval_per_topic=8)
    assert pool.column_names == ["prompt_id", "prompt", "source", "split"]
    rows = pool.to_pylist()
    assert len(rows) == len(L.TOPICS) * 32
    assert len({r["prompt_id"] for r in rows}) == len(rows)
    train = {r["prompt"] for r in rows if r["split"] == "train"}
    evaluation = {r["prompt"] for r in rows if r["split"] == "eval"}
    assert not train & evaluation and len(train) + len(evaluation) == len(rows)  # no repeats at this size
    assert all(L.parse_prompt(r["prompt"])[0] == r["source"] for r in rows)
    assert L.make_prompt_pool(0, 24, 8).equals(pool)
    assert not L.make_prompt_pool(1, 24, 8).equals(pool)


def test_prompt_pool_repeats_train_texts_with_unique_ids_when_asked_for_more():
    pool = L.make_prompt_pool(seed=0, n_train_per_topic=100, n_eval_per_topic=4).to_pylist()
    assert len({r["prompt_id"] for r in pool}) == len(pool)
    assert len({r["prompt"] for r in pool if r["split"] == "train"}) < len(L.TOPICS) * 100
    with pytest.raises(ValueError):
        L.make_prompt_pool(seed=0, n_train_per_topic=1, n_eval_per_topic=10_000)


def test_tokenizer_round_trips_a_completion(tmp_path):
    from transformers import AutoTokenizer

    from components.toy.tokenizer import build_tokenizer

    build_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.padding_side == "left"
    assert len(tokenizer) == 4 + len(L.vocabulary())
    prompt, completion = L.sample_corpus(0, 1)[0]
    ids = tokenizer(prompt + completion)["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == len((prompt + completion).split())
    assert ids == tokenizer(prompt)["input_ids"] + tokenizer(completion)["input_ids"]  # no specials added
    assert tokenizer.decode(tokenizer(completion)["input_ids"]) == completion.strip()
    assert tokenizer.decode([*ids, tokenizer.eos_token_id, tokenizer.pad_token_id], skip_special_tokens=True) == (
        prompt + completion
    )
