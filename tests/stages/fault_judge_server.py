"""A fault-injecting OpenAI-compatible judge server for the tests (stdlib only): POST /v1/chat/completions, the
behaviour chosen by the request's `model` name.

    ok        a short reasoning (with a <think> block that names the wrong marker) and a final [[A]]/[[B]]
    verbose   long prose that argues both ways and mentions "A is better" before its final marker
    plain     "A is worse than B." - clear to a human, but no marker: no verdict
    e500      HTTP 500 every time
    slow      sleeps `slow_s` before answering (past the client's timeout)
    badjson   HTTP 200 with a body that is not JSON
    nochoices HTTP 200 with JSON that is not a chat completion
    e400      HTTP 400 with vLLM's context-length error body
    e429      HTTP 429 with Retry-After: 1 on the first request, then as ok
    e401      HTTP 401 (a wrong API key: a configuration mistake)

The verdict of ok/verbose/e429/slow is the correct one for the tests' data: the response containing "great" is
better (read from the toy rubric's "Response A: ..." / "Response B: ..." lines). `requests` records (model, time,
status) of every request.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VLLM_400 = {"object": "error", "type": "BadRequestError", "param": None, "code": 400,
            "message": "This model's maximum context length is 2048 tokens. However, you requested 4096 tokens "
                       "(3584 in the messages, 512 in the completion). Please reduce the length of the messages or "
                       "completion."}


def _better(user: str) -> str:
    a = re.search(r"^Response A: (.*)$", user, re.M)
    b = re.search(r"^Response B: (.*)$", user, re.M)
    return "A" if a and "great" in a.group(1) and not (b and "great" in b.group(1)) else "B"


def _reply(mode: str, user: str) -> str:
    v = _better(user)
    other = "B" if v == "A" else "A"
    if mode == "verbose":
        prose = (f"Comparing A and B, {other} is better in tone at first sight, and one could argue that A is better"
                 " because it is shorter. ") * 20
        return f"{prose}\nWeighing everything, response {v} answers the request.\n\n[[{v}]]"
    if mode == "plain":
        return "A is worse than B."
    return f"<think>Maybe [[{other}]]? Let me look again.</think>Response {v} is on topic and positive. [[{v}]]"


class FaultJudgeServer:
    def __init__(self, slow_s: float = 2.0):
        self.slow_s, self.requests, self._lock = slow_s, [], threading.Lock()
        self._seen: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                server.handle(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultJudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._seen.clear()

    def handle(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        mode = body.get("model", "ok")
        user = next((m["content"] for m in body.get("messages", []) if m.get("role") == "user"), "")
        with self._lock:
            n = self._seen[mode] = self._seen.get(mode, 0) + 1
        if mode == "slow":
            time.sleep(self.slow_s)
        status, headers, payload = self._response(mode, n, user, body)
        with self._lock:
            self.requests.append((mode, time.monotonic(), status))
        try:
            h.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (slow)
            pass

    def _response(self, mode: str, n: int, user: str, body: dict) -> tuple[int, dict, bytes]:
        if mode == "e500":
            return 500, {}, b'{"error": "internal"}'
        if mode == "e400":
            return 400, {}, json.dumps(VLLM_400).encode()
        if mode == "e401":
            return 401, {}, b'{"error": "invalid api key"}'
        if mode == "e429" and n == 1:
            return 429, {"Retry-After": "1"}, b'{"error": "rate limited"}'
        if mode == "badjson":
            return 200, {}, b'{"choices": [ this is not json'
        if mode == "nochoices":
            return 200, {}, b'{"object": "chat.completion", "choices": []}'
        text = _reply(mode, user)
        doc = {"id": "x", "object": "chat.completion", "model": mode,
               "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
               "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}}
        return 200, {}, json.dumps(doc).encode()
