"""What a pairwise judge backend is and answers: the contract between components.judge (the runner: both orders,
budget, cache, retries) and the backends (judge_toy, judge_hf, judge_openai), importable by both without a cycle.
components.judge re-exports every name here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

Verdict = Literal["A", "B"]

# The rubric every backend shows; {prompt}/{first}/{second} are filled per call. Bump rubric_version on edits.
RUBRIC = (
    "Two responses to the same request follow. Prefer the response that is more positive about the subject, "
    "stays on the topic and the aspect asked about, is concise and ends with a single period.\n"
    "Request: {prompt}\nResponse A: {first}\nResponse B: {second}\n"
    "Which response is better? Answer with one letter, A or B.\nAnswer:"
)


class TransportError(RuntimeError):
    """A transient failure (connection, timeout, HTTP 429/5xx): the call is retried with backoff."""


@dataclass
class Answer:
    verdict: Verdict | None  # None: the judge's output could not be read as A or B
    raw: str  # what the judge said (text, or the two log-likelihoods)
    cost: float = 0.0  # backend-specific: tokens for HTTP judges, 0 for local ones


class PairwiseJudge(Protocol):
    name: str  # identity in cache keys and transcripts: backend + model (+ settings that change answers)

    def ask(self, prompt: str, first: str, second: str) -> Answer: ...


def parse_verdict(text: str) -> Verdict | None:
    """The first standalone A or B in a judge's answer ("A", "B.", "Response B"), else None."""
    m = re.search(r"\b([AB])\b", text)
    return m.group(1) if m else None  # type: ignore[return-value]
