"""Pairwise LLM judge: ask "which response is better, A or B (or a tie)?" in both orders, within a budget, cached.

    alignloop run --config configs/tiny.yaml --set label.judge.backend=toy --set label.judge.budget=200

A backend (`PairwiseJudge`, components/backends/judge_base.py) answers one ordered question with the rubric of
`label.judge.rubric`; `JudgeRunner` owns everything a judge costs, and makes sure a fault is never a label:
  * both orders: a pair (a, b) is asked as (A=a, B=b) and (A=b, B=a); only "A" then "B" (or "B" then "A") is a
    label; "tie" both times is a tie (never a label); two verdicts that disagree (position bias, noise) are
    "inconsistent"; a reply without a verdict marker makes the pair "no_verdict", a failed call "error";
  * per-iteration budgets: `budget` paid calls (cache hits are free; a pair is only started if both its calls
    fit) and `budget_tokens` (usage.total_tokens; a pair is only started while the spend is under it, so calls
    already in flight may pass it by at most `concurrency` calls); pairs are taken in the order given (routing
    puts the least certain first);
  * `concurrency` calls in flight (a thread pool: backends block on HTTP or on torch);
  * retries of `TransportError` (connection failures, timeouts, HTTP 429/5xx) with jittered exponential backoff,
    at least the server's Retry-After; `Rejected` (HTTP 400/413: too long) and `BadResponse` are not retried;
  * a judge that is down stops being asked: after `give_up_after` consecutive questions failed for good, the
    rest of the iteration's questions are recorded as errors ("unavailable") without calls;
  * a cache keyed by sha256(prompt, shown-first, shown-second, judge name, rubric sha256), one JSONL line per
    verdict under the workspace, so a re-run never pays twice for the same question (faults and replies without
    a verdict are not cached: a re-run asks again);
  * a transcript: one dict per ordered question (cached or paid), written by the label task as a JSONL artifact.
Backends: components/backends/judge_toy.py (gold + noise + position bias), judge_hf.py (local causal LM),
judge_openai.py (any OpenAI-compatible endpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from components.backends.judge_base import (
    Answer,
    BadResponse,
    JudgeFault,
    PairwiseJudge,
    Rejected,
    Rubric,
    TransportError,
    Verdict,
    parse_verdict,
)

Outcome = Literal["a", "b", "tie", "inconsistent", "no_verdict", "error", "over_budget"]
SETTLED: tuple[Outcome, ...] = ("a", "b")  # the only outcomes that become labels
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is waited for this long (then the retry counts as usual)
log = logging.getLogger(__name__)

__all__ = ["SETTLED", "Answer", "BadResponse", "JudgeCache", "JudgeFault", "JudgeRunner", "Outcome", "PairwiseJudge",
           "Rejected", "Rubric", "TransportError", "Verdict", "make_runner", "parse_verdict"]


def _key(prompt: str, first: str, second: str, judge: str, rubric_sha256: str) -> str:
    blob = json.dumps([prompt, first, second, judge, rubric_sha256], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class JudgeCache:
    """Verdicts by key, persisted as JSONL (append-only: one line per new answer, read back on open)."""

    def __init__(self, path: Path | None):
        self.path, self.entries = path, {}
        if path is not None and path.exists():
            for n, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    doc = json.loads(line)
                    if doc["verdict"] in ("A", "B", "tie"):  # older caches also kept unreadable answers
                        self.entries[doc["key"]] = Answer(doc["verdict"], doc["raw"], int(doc.get("tokens", 0)))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"{path}:{n}: not a judge cache entry ({err})") from None

    def put(self, key: str, answer: Answer) -> None:
        self.entries[key] = answer
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps({"key": key, "verdict": answer.verdict, "raw": answer.raw,
                                     "tokens": answer.tokens}) + "\n")


@dataclass
class _Result:
    """One ordered question's answer (None: a fault) as the transcript records it."""

    answer: Answer | None
    latency_s: float = 0.0
    attempts: int = 0  # 0: not asked (cached, a repeat within one call, or the judge was unavailable)
    error: str | None = None
    error_kind: str | None = None  # transport | too_long | rejected | bad_response | unavailable
    cached: bool = False


def _outcome(ab: _Result, ba: _Result) -> Outcome:
    if ab.answer is None or ba.answer is None:
        return "error"
    v = (ab.answer.verdict, ba.answer.verdict)
    if None in v:
        return "no_verdict"
    return {("A", "B"): "a", ("B", "A"): "b", ("tie", "tie"): "tie"}.get(v, "inconsistent")  # type: ignore[return-value]


class JudgeRunner:
    """Judges pairs in both orders under budgets; keeps the transcript and call statistics of one iteration.
    `metric_prefix` names its metrics (`label/judge` → label/judge_calls, label/judge_errors/too_long, ...)."""

    def __init__(self, judge: PairwiseJudge, *, rubric_sha256: str | None = None, budget: int,
                 budget_tokens: int | None = None, concurrency: int = 1, max_retries: int = 3,
                 backoff_s: float = 0.5, give_up_after: int = 8, cache_path: Path | None = None,
                 metric_prefix: str = "label/judge"):
        rubric = getattr(judge, "rubric", None)
        self.rubric_sha256 = rubric_sha256 if rubric_sha256 is not None else rubric.sha256 if rubric else ""
        self.judge, self.budget, self.budget_tokens = judge, budget, budget_tokens
        self.concurrency, self.max_retries, self.backoff_s = concurrency, max_retries, backoff_s
        self.give_up_after, self.metric_prefix = give_up_after, metric_prefix
        self.cache = JudgeCache(cache_path)
        self.calls = 0  # paid calls (budget spent), including ones that failed after all retries
        self.tokens = 0  # usage tokens of the paid calls
        self.transcript: list[dict] = []
        self.outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._failed_in_a_row, self._down, self._fatal = 0, False, None
        self._rng = random.Random()  # retry jitter only (never a verdict)

    @property
    def is_oracle(self) -> bool:
        """Its calls are gold-oracle queries (the toy judge): counted in label/oracle_calls, evaluate/oracle_calls."""
        return getattr(self.judge, "is_oracle", False)

    # -- one question ---------------------------------------------------------------------------------------
    def _delay(self, attempt: int, retry_after: float | None) -> float:
        base = self.backoff_s * 2**attempt
        if retry_after is not None:
            base = max(base, min(retry_after, MAX_RETRY_AFTER_S))
        return base * (1 + 0.25 * self._rng.random())  # never earlier than asked; jitter desynchronises workers

    def _call(self, prompt: str, first: str, second: str) -> _Result:
        for attempt in range(self.max_retries + 1):
            t0 = time.perf_counter()
            try:
                return _Result(self.judge.ask(prompt, first, second), time.perf_counter() - t0, attempt + 1)
            except TransportError as err:
                if attempt == self.max_retries or self._down:
                    return _Result(None, time.perf_counter() - t0, attempt + 1, str(err), err.kind)
                time.sleep(self._delay(attempt, err.retry_after))
            except JudgeFault as err:
                return _Result(None, time.perf_counter() - t0, attempt + 1, str(err), err.kind)
        raise AssertionError("unreachable")

    def _ask(self, key: str, question: tuple[str, str, str], slots: threading.Semaphore) -> _Result:
        try:
            if self._down:
                with self._lock:
                    self.calls -= 1  # never sent: not spent
                return _Result(None, error="judge unavailable: not asked", error_kind="unavailable")
            try:
                res = self._call(*question)
            except Exception as err:  # a configuration mistake (HTTP 401/404, a bad rubric): fails the stage
                self._fatal, self._down = err, True
                raise
            with self._lock:
                self._record(key, res)
            return res
        finally:
            slots.release()

    def _record(self, key: str, res: _Result) -> None:
        if res.answer is not None:
            self.tokens += res.answer.tokens
            self._failed_in_a_row = 0
            if res.answer.verdict is not None:
                self.cache.put(key, res.answer)
        elif res.error_kind in ("transport", "bad_response"):
            self._failed_in_a_row += 1
            if self._failed_in_a_row >= self.give_up_after > 0 and not self._down:
                self._down = True
                log.warning("judge %s: %d questions in a row failed (last: %s); not asking it again in this"
                            " iteration", self.judge.name, self._failed_in_a_row, res.error)

    # -- pairs ----------------------------------------------------------------------------------------------
    def _affordable(self, n_new: int) -> bool:
        if n_new == 0:
            return True
        if self.calls + n_new > self.budget:
            return False
        return self.budget_tokens is None or self.tokens < self.budget_tokens

    def _schedule(self, prompts, a, b, pool, slots) -> tuple[list, dict[str, Future]]:
        """Submit the paid questions pair by pair while the budgets allow; (plan, futures by key), where a plan
        entry is (questions, keys, status: ok | over_budget | unavailable)."""
        plan, futures = [], {}
        for p, x, y in zip(prompts, a, b):
            qs = [("ab", p, x, y), ("ba", p, y, x)]
            keys = [_key(p, f, s, self.judge.name, self.rubric_sha256) for _, p, f, s in qs]
            new = [k for k in dict.fromkeys(keys) if k not in self.cache.entries and k not in futures]
            with self._lock:
                status = ("ok" if not new else "unavailable" if self._down
                          else "ok" if self._affordable(len(new)) else "over_budget")
                if status == "ok":
                    self.calls += len(new)
            plan.append((qs, keys, status))
            for k, q in zip(keys, qs):
                if status == "ok" and k in new and k not in futures:
                    slots.acquire()  # at most `concurrency` in flight: the token budget sees what was spent
                    futures[k] = pool.submit(self._ask, k, q[1:], slots)
        return plan, futures

    def judge_pairs(self, pair_ids: list[str], prompts: list[str], a: list[str], b: list[str]) -> list[Outcome]:
        """Per pair: "a" or "b" if the judge preferred it in both orders, "tie" if it answered tie in both,
        "inconsistent" if its verdicts disagree, "no_verdict" / "error" if a reply had no verdict marker / a call
        failed, "over_budget" if its calls did not fit. Only "a" and "b" may become labels. Pairs are taken in the
        order given; a question asked twice (also within one call) is paid once."""
        slots = threading.BoundedSemaphore(self.concurrency)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            plan, futures = self._schedule(prompts, a, b, pool, slots)
        if self._fatal is not None:
            raise self._fatal
        paid, seen = {k: f.result() for k, f in futures.items()}, set()
        unavailable = _Result(None, error="judge unavailable: not asked", error_kind="unavailable")
        out: list[Outcome] = []
        for i, (qs, keys, status) in enumerate(plan):
            if status == "over_budget":
                out.append("over_budget")
                continue
            res = []
            for (order, p, first, second), k in zip(qs, keys):
                r = paid.get(k)
                if r is None:  # answered before (the cache), or not asked: the judge was down
                    cached = self.cache.entries.get(k)
                    r = _Result(cached, cached=True) if cached is not None else unavailable
                elif k in seen:  # the same question again within this call: paid once
                    r = replace(r, cached=True, attempts=0, latency_s=0.0)
                seen.add(k)
                res.append(r)
                self.transcript.append(self._entry(pair_ids[i], order, p, first, second, r))
            out.append(_outcome(*res))
        self.outcomes.update(out)
        log.info("judge %s: %d calls (budget %d), %d tokens (budget %s); outcomes %s", self.judge.name,
                 self.calls, self.budget, self.tokens, self.budget_tokens, dict(Counter(out)))
        return out

    def _entry(self, pair_id, order, prompt, first, second, r: _Result) -> dict:
        return {"pair_id": pair_id, "order": order, "prompt": prompt, "first": first, "second": second,
                "judge": self.judge.name, "rubric_sha256": self.rubric_sha256, "cached": r.cached,
                "raw": r.answer.raw if r.answer else None, "verdict": r.answer.verdict if r.answer else None,
                "latency_s": round(r.latency_s, 6), "attempts": r.attempts,
                "tokens": r.answer.tokens if r.answer and not r.cached else 0,
                "error": r.error, "error_kind": r.error_kind}

    def stats(self) -> dict[str, float]:
        """Spend and faults of this iteration (questions; `_ties` and `_over_budget` count pairs)."""
        p, fresh = self.metric_prefix, [t for t in self.transcript if not t["cached"]]
        asked = [t for t in fresh if t["attempts"] > 0]
        kinds = Counter(t["error_kind"] for t in fresh if t["error_kind"] is not None)
        out = {f"{p}_calls": self.calls, f"{p}_tokens": self.tokens,
               f"{p}_cache_hits": sum(t["cached"] and t["error"] is None for t in self.transcript),
               f"{p}_errors": sum(kinds.values()),
               f"{p}_no_verdict": sum(t["verdict"] is None and t["error"] is None for t in asked),
               f"{p}_ties": self.outcomes["tie"], f"{p}_over_budget": self.outcomes["over_budget"],
               f"{p}_latency_mean_s": sum(t["latency_s"] for t in asked) / len(asked) if asked else 0.0,
               f"{p}_latency_max_s": max((t["latency_s"] for t in asked), default=0.0)}
        for kind in ("transport", "too_long", "rejected", "bad_response", "unavailable"):
            out[f"{p}_errors/{kind}"] = kinds[kind]
        return out

    def health_warning(self) -> str | None:
        """A sentence when the judge gave no verdict at all although it was asked (down, misconfigured, or its
        replies carry no marker), else None: the stage still finishes, with 0 judge labels."""
        asked = [t for t in self.transcript if not t["cached"]]
        if not asked or any(t["verdict"] is not None for t in asked):
            return None
        s = self.stats()
        faults = {k.rsplit("/", 1)[1]: v for k, v in s.items() if "_errors/" in k and v}
        unmarked = s[f"{self.metric_prefix}_no_verdict"]
        return (f"judge {self.judge.name}: no verdict from any of {len(asked)} questions asked this iteration"
                f" (errors {faults or 'none'}, replies without a verdict marker {unmarked}); its pairs stay"
                " uncertain, 0 judge labels")


def make_runner(cfg, *, gold=None, seed: int = 0, cache_dir: Path | None = None, metric_prefix: str = "label/judge",
                where: str = "label.judge") -> JudgeRunner | None:
    """The runner for a `JudgeConfig` (None for backend none); the cache lives in `cache_dir`/judge-<id>.jsonl.
    `where` is the config path named in errors (a rubric file that is missing, ...)."""
    if cfg.backend == "none":
        return None
    rubric = Rubric.load(cfg.rubric, cfg.system_prompt, where=where)
    if cfg.backend == "toy":
        if gold is None:
            raise ValueError(f"{where}.backend=toy plays the judge with the gold oracle: it needs `gold: toy`")
        from components.backends.judge_toy import ToyJudge

        judge = ToyJudge(gold, noise=cfg.noise, position_bias=cfg.position_bias, seed=seed)
    elif cfg.backend == "hf":
        if not cfg.model:
            raise ValueError(f"{where}.model: the hf backend needs a from_pretrained path or hub id")
        from components.backends.judge_hf import HFJudge

        judge = HFJudge(cfg.model, rubric=rubric)
    else:
        from components.backends.judge_openai import OpenAIJudge

        judge = OpenAIJudge(cfg.base_url, cfg.model, rubric=rubric, api_key_env=cfg.api_key_env,
                            max_tokens=cfg.max_tokens, timeout_s=cfg.timeout_s)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"judge-{hashlib.sha256(judge.name.encode()).hexdigest()[:16]}.jsonl"
    return JudgeRunner(judge, rubric_sha256=rubric.sha256, budget=cfg.budget, budget_tokens=cfg.budget_tokens,
                       concurrency=cfg.concurrency, max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
                       give_up_after=cfg.give_up_after, cache_path=cache, metric_prefix=metric_prefix)
