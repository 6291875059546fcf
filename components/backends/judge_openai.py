"""Any OpenAI-compatible chat endpoint as a pairwise judge (OpenAI, vLLM, TGI, `transformers serve`, ...).

    OPENAI_API_KEY=... alignloop run --set label.judge.backend=openai --set label.judge.model=gpt-4o-mini \
        --set label.judge.base_url=https://api.openai.com/v1

One POST {base_url}/chat/completions per question with the rubric as the user message, temperature 0 and
`max_tokens`; the verdict is the first standalone A or B of the reply. The API key is read from the environment
variable named by `api_key_env` and only ever put in the Authorization header (never logged, never in the
transcript or the cache). Connection errors, timeouts and HTTP 429/5xx raise `TransportError` (retried by
the runner); other HTTP errors are configuration mistakes and raise at once. Uses httpx (already a dependency
of the stack), not the `openai` package.
"""

from __future__ import annotations

import os

from components.backends.judge_base import RUBRIC, Answer, TransportError, parse_verdict


class OpenAIJudge:
    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", max_tokens: int = 4,
                 timeout_s: float = 60.0):
        import httpx

        if not model:
            raise ValueError("label.judge.model: the openai backend needs the served model's name")
        key = os.environ.get(api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.model, self.max_tokens = model, max_tokens
        self.name = f"openai:{base_url.rstrip('/')}/{model}"

    def ask(self, prompt: str, first: str, second: str) -> Answer:
        import httpx

        body = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": RUBRIC.format(prompt=prompt, first=first, second=second)}]}
        try:
            resp = self.client.post("/chat/completions", json=body)
        except httpx.TransportError as err:
            raise TransportError(f"{self.name}: {type(err).__name__}: {err}") from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransportError(f"{self.name}: HTTP {resp.status_code}: {resp.text[:200]}")
        if resp.status_code != 200:
            raise ValueError(f"{self.name}: HTTP {resp.status_code}: {resp.text[:500]}")
        doc = resp.json()
        text = doc["choices"][0]["message"]["content"] or ""
        return Answer(parse_verdict(text), text, float(doc.get("usage", {}).get("total_tokens", 0)))
