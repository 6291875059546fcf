"""Pairwise LLM judge: ask "which response is better, A or B?" in both orders, within a budget, cached.

    alignloop run --config configs/tiny.yaml --set label.judge.backend=toy --set label.judge.budget=200

A backend (`PairwiseJudge`, components/backends/judge_base.py) answers one ordered question; `JudgeRunner` owns
everything a judge costs:
  * both orders: a pair (a, b) is asked as (A=a, B=b) and (A=b, B=a); only "a" both times (or "b" both
    times) is a label, anything else (position bias, noise, an unparseable answer) is `None` = uncertain;
  * a per-iteration `budget` of paid calls (cache hits are free); pairs are taken in the order given
    (routing puts the least certain first) and a pair is only started if both its calls fit;
  * `concurrency` calls in flight (a thread pool: backends block on HTTP or on torch);
  * retries with exponential backoff on `TransportError` (connection failures, HTTP 429/5xx);
  * a cache keyed by sha256(prompt, shown-first, shown-second, judge name, rubric version), one JSONL line per
    entry under the workspace, so a re-run never pays twice for the same question;
  * a transcript: one dict per ordered question (cached or paid), written by the label task as a JSONL artifact.
Backends: components/backends/judge_toy.py (gold + noise + position bias), judge_hf.py (local causal LM),
judge_openai.py (any OpenAI-compatible endpoint).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from components.backends.judge_base import RUBRIC, Answer, PairwiseJudge, TransportError, Verdict, parse_verdict

Outcome = Literal["a", "b", "inconsistent", "over_budget"]

__all__ = ["RUBRIC", "Answer", "JudgeCache", "JudgeRunner", "Outcome", "PairwiseJudge", "TransportError", "Verdict",
           "make_runner", "parse_verdict"]


def _key(prompt: str, first: str, second: str, judge: str, rubric_version: str) -> str:
    blob = json.dumps([prompt, first, second, judge, rubric_version], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class JudgeCache:
    """Answers by key, persisted as JSONL (append-only: one line per new answer, read back on open)."""

    def __init__(self, path: Path | None):
        self.path, self.entries = path, {}
        if path is not None and path.exists():
            for n, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    doc = json.loads(line)
                    self.entries[doc["key"]] = Answer(doc["verdict"], doc["raw"], doc.get("cost", 0.0))
                except (json.JSONDecodeError, KeyError) as err:
                    raise ValueError(f"{path}:{n}: not a judge cache entry ({err})") from None

    def put(self, key: str, answer: Answer) -> None:
        self.entries[key] = answer
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps({"key": key, "verdict": answer.verdict, "raw": answer.raw,
                                     "cost": answer.cost}) + "\n")


class JudgeRunner:
    """Judges pairs in both orders under a budget; keeps the transcript and call statistics of one iteration."""

    def __init__(self, judge: PairwiseJudge, *, rubric_version: str, budget: int, concurrency: int = 1,
                 max_retries: int = 3, backoff_s: float = 0.5, cache_path: Path | None = None):
        self.judge, self.rubric_version, self.budget = judge, rubric_version, budget
        self.concurrency, self.max_retries, self.backoff_s = concurrency, max_retries, backoff_s
        self.cache = JudgeCache(cache_path)
        self.calls = 0  # paid calls (budget spent), including ones that failed after all retries
        self.transcript: list[dict] = []
        self._lock = threading.Lock()

    def _call(self, prompt: str, first: str, second: str) -> tuple[Answer | None, float, int, str | None]:
        for attempt in range(self.max_retries + 1):
            t0 = time.perf_counter()
            try:
                return self.judge.ask(prompt, first, second), time.perf_counter() - t0, attempt + 1, None
            except TransportError as err:
                if attempt == self.max_retries:
                    return None, time.perf_counter() - t0, attempt + 1, str(err)
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def judge_pairs(self, pair_ids: list[str], prompts: list[str], a: list[str], b: list[str]) -> list[Outcome]:
        """Per pair: "a" or "b" if the judge preferred it in both orders, "inconsistent" otherwise (position
        bias, noise, unreadable answer, failed call), "over_budget" if its calls did not fit. Pairs are taken in
        the order given; a question asked twice (also within one call) is paid once."""
        questions, paid, judged = [], {}, []  # paid: key -> (prompt, first, second) to ask, in budget order
        for i, (p, x, y) in enumerate(zip(prompts, a, b)):
            qs = [(i, "ab", p, x, y), (i, "ba", p, y, x)]
            keys = [_key(p, f, s, self.judge.name, self.rubric_version) for _, _, p, f, s in qs]
            new = {k: q[2:] for k, q in zip(keys, qs) if k not in self.cache.entries and k not in paid}
            judged.append(self.calls + len(new) <= self.budget)
            if judged[-1]:
                self.calls += len(new)
                paid.update(new)
                questions += [(*q, k) for q, k in zip(qs, keys)]
        results = {}  # key -> (answer, latency, attempts, error)

        def ask(key):
            answer, *rest = self._call(*paid[key])
            with self._lock:
                if answer is not None:
                    self.cache.put(key, answer)
                results[key] = (answer, *rest)

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            list(pool.map(ask, paid))
        answers: dict[tuple[int, str], Answer | None] = {}
        for i, order, p, first, second, key in questions:
            answer, latency, attempts, error = results.pop(key) if key in results else (
                self.cache.entries.get(key), 0.0, 0, None)
            answers[i, order] = answer
            self.transcript.append({
                "pair_id": pair_ids[i], "order": order, "prompt": p, "first": first, "second": second,
                "judge": self.judge.name, "rubric_version": self.rubric_version, "cached": attempts == 0,
                "raw": answer.raw if answer else None, "verdict": answer.verdict if answer else None,
                "latency_s": round(latency, 6), "attempts": attempts, "cost": answer.cost if answer else 0.0,
                "error": error})
        out: list[Outcome] = []
        for i, ok in enumerate(judged):
            ab, ba = answers.get((i, "ab")), answers.get((i, "ba"))
            v = (ab.verdict if ab else None, ba.verdict if ba else None)
            out.append("over_budget" if not ok else "a" if v == ("A", "B") else "b" if v == ("B", "A")
                       else "inconsistent")
        return out

    def stats(self) -> dict[str, float]:
        paid = [t["latency_s"] for t in self.transcript if not t["cached"]]
        return {"label/judge_calls": self.calls, "label/judge_cache_hits": sum(t["cached"] for t in self.transcript),
                "label/judge_errors": sum(t["error"] is not None for t in self.transcript),
                "label/judge_latency_mean_s": sum(paid) / len(paid) if paid else 0.0,
                "label/judge_latency_max_s": max(paid, default=0.0),
                "label/judge_cost": sum(t["cost"] for t in self.transcript if not t["cached"])}


def make_runner(cfg, *, gold=None, seed: int = 0, cache_dir: Path | None = None) -> JudgeRunner | None:
    """The runner for a `JudgeConfig` (None for backend none); the cache lives in `cache_dir`/judge-<id>.jsonl."""
    if cfg.backend == "none":
        return None
    if cfg.backend == "toy":
        if gold is None:
            raise ValueError("label.judge.backend=toy plays the judge with the gold oracle: it needs `gold: toy`")
        from components.backends.judge_toy import ToyJudge

        judge = ToyJudge(gold, noise=cfg.noise, position_bias=cfg.position_bias, seed=seed)
    elif cfg.backend == "hf":
        if not cfg.model:
            raise ValueError("label.judge.model: the hf backend needs a from_pretrained path or hub id")
        from components.backends.judge_hf import HFJudge

        judge = HFJudge(cfg.model)
    else:
        from components.backends.judge_openai import OpenAIJudge

        judge = OpenAIJudge(cfg.base_url, cfg.model, api_key_env=cfg.api_key_env, max_tokens=cfg.max_tokens,
                            timeout_s=cfg.timeout_s)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"judge-{hashlib.sha256(judge.name.encode()).hexdigest()[:16]}.jsonl"
    return JudgeRunner(judge, rubric_version=cfg.rubric_version, budget=cfg.budget, concurrency=cfg.concurrency,
                       max_retries=cfg.max_retries, backoff_s=cfg.backoff_s, cache_path=cache)
