"""Any OpenAI-compatible chat endpoint as a pairwise judge (OpenAI, vLLM, TGI, `transformers serve`, ...).

    OPENAI_API_KEY=... alignloop run --set label.judge.backend=openai --set label.judge.model=gpt-4o-mini \
        --set label.judge.base_url=https://api.openai.com/v1 --set label.judge.rubric=configs/real/judge-rubric.md

One POST {base_url}/chat/completions per question: the system prompt (if any) and the filled rubric as the user
message, temperature 0, `max_tokens` (room for reasoning before the verdict). The verdict is only the last
`[[A]]`/`[[B]]`/`[[tie]]` marker of the reply outside `<think>` blocks (judge_base.parse_verdict); any other reply
is no verdict. Faults never become labels:
  * connection errors, timeouts, HTTP 429 and 5xx raise `TransportError` (retried by the runner; a Retry-After
    header, in seconds or as an HTTP date, is passed on so the runner waits at least that long);
  * HTTP 400/413/422 (the question does not fit the context, or is otherwise refused) raise `Rejected`: that
    question is not retried, its pair stays uncertain;
  * a 200 whose body is not a chat completion (invalid JSON, no choices) raises `BadResponse` (no verdict);
  * other HTTP errors (401, 403, 404: a wrong key, URL or model name) are configuration mistakes and raise
    ValueError at once.
Tokens are `usage.total_tokens` of the reply (0 when the server reports none). The API key is read from the
environment variable named by `api_key_env` and only ever put in the Authorization header (never logged, never
in the transcript or the cache). Uses httpx (already a dependency of the stack), not the `openai` package.
"""

from __future__ import annotations

import email.utils
import os
import time

from components.backends.judge_base import Answer, BadResponse, Rejected, Rubric, TransportError, parse_verdict

_LENGTH_HINTS = ("context", "too long", "too many tokens", "maximum", "max_tokens", "length", "exceed")


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), None when absent/unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class OpenAIJudge:
    def __init__(self, base_url: str, model: str, *, rubric: Rubric | None = None,
                 api_key_env: str = "OPENAI_API_KEY", max_tokens: int = 512, timeout_s: float = 60.0):
        import httpx

        if not model:
            raise ValueError("label.judge.model: the openai backend needs the served model's name")
        key = os.environ.get(api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.model, self.max_tokens, self.rubric = model, max_tokens, rubric or Rubric.load()
        self.name = f"openai:{base_url.rstrip('/')}/{model}"

    def messages(self, prompt: str, first: str, second: str) -> list[dict]:
        user = {"role": "user", "content": self.rubric.render(prompt, first, second)}
        return [{"role": "system", "content": self.rubric.system}, user] if self.rubric.system else [user]

    def ask(self, prompt: str, first: str, second: str) -> Answer:
        import httpx

        body = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                "messages": self.messages(prompt, first, second)}
        try:
            resp = self.client.post("/chat/completions", json=body)
        except httpx.TransportError as err:  # connection refused/reset, timeouts
            raise TransportError(f"{self.name}: {type(err).__name__}: {err}") from None
        code = resp.status_code
        if code == 429 or code >= 500:
            raise TransportError(f"{self.name}: HTTP {code}: {resp.text[:200]}",
                                 retry_after=retry_after_s(resp.headers.get("retry-after")))
        if code in (400, 413, 422):
            text = resp.text[:500]
            raise Rejected(f"{self.name}: HTTP {code}: {text}",
                           too_long=code == 413 or any(h in text.lower() for h in _LENGTH_HINTS))
        if code != 200:
            raise ValueError(f"{self.name}: HTTP {code}: {resp.text[:500]}")
        return self._answer(resp)

    def _answer(self, resp) -> Answer:
        try:
            doc = resp.json()
            choice = doc["choices"][0]
            text = choice["message"].get("content") or ""
            usage = doc.get("usage") or {}
            tokens = int(usage.get("total_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise BadResponse(f"{self.name}: HTTP 200 but not a chat completion ({type(err).__name__}: {err}):"
                              f" {resp.text[:200]!r}") from None
        if not isinstance(text, str):
            raise BadResponse(f"{self.name}: message content is {type(text).__name__}, not text")
        raw = text if choice.get("finish_reason") != "length" else text + " [finish_reason=length]"
        return Answer(parse_verdict(text), raw, tokens)
