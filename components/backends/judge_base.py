"""What a pairwise judge backend is and answers: the contract between components.judge (the runner: both orders,
budget, cache, retries) and the backends (judge_toy, judge_hf, judge_openai), importable by both without a cycle.
components.judge re-exports every name here.

The rubric is configuration (`label.judge.rubric`, a template file): `Rubric.load` reads it (Jinja when the file
ends in .j2/.jinja or uses `{{ }}`/`{% %}`, else a Python format string; literal braces are then doubled) and fills
`{prompt}` (the conversation), `{response_a}` and `{response_b}` per question. Its sha256 (template + system
prompt) is part of the judge cache key, so an edited rubric is asked again and never served an old answer.

A verdict is read only from an explicit marker: the last `[[A]]`, `[[B]]` or `[[tie]]` of the reply, after any
`<think>…</think>` block of a reasoning model is removed. Anything else ("A is worse than B.", a truncated
reasoning, an empty reply) is no verdict (`None`), which never becomes a label.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

Verdict = Literal["A", "B", "tie"]
REPO = Path(__file__).resolve().parents[2]
DEFAULT_RUBRIC = "configs/rubrics/toy.md"  # the embedded default's rubric, shipped in the repository


class JudgeFault(RuntimeError):
    """A call that produced no answer; `kind` names it in the transcript and in `…_errors/<kind>` metrics."""

    kind = "fault"


class TransportError(JudgeFault):
    """A transient failure (connection, timeout, HTTP 429/5xx): the call is retried with backoff, or after
    `retry_after` seconds when the server said so (HTTP 429/503 Retry-After)."""

    kind = "transport"

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(JudgeFault):
    """The endpoint refused this question (HTTP 400/413/422: too long for the context, or otherwise invalid): not
    retried, the pair stays uncertain. `kind` is "too_long" when the refusal is about length."""

    def __init__(self, message: str, *, too_long: bool):
        super().__init__(message)
        self.kind = "too_long" if too_long else "rejected"


class BadResponse(JudgeFault):
    """A 200 whose body is not a chat completion (invalid JSON, no choices): no verdict, not retried, not cached."""

    kind = "bad_response"


@dataclass
class Answer:
    verdict: Verdict | None  # None: the reply carries no verdict marker (never a label)
    raw: str  # what the judge said (text, or the log-likelihoods)
    tokens: int = 0  # usage.total_tokens for HTTP judges, 0 for local ones


class PairwiseJudge(Protocol):
    name: str  # identity in cache keys and transcripts: backend + model (+ settings that change answers)

    def ask(self, prompt: str, first: str, second: str) -> Answer: ...


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_MARKER = re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.IGNORECASE)


def strip_thinking(text: str) -> str:
    """The reply without reasoning: `<think>…</think>` blocks removed; with an unmatched `</think>` (templates
    that open the block in the prompt) everything before it, with an unclosed `<think>` everything after it."""
    text = _THINK.sub("", text)
    low = text.lower()
    if "</think>" in low:
        text = text[low.rindex("</think>") + len("</think>"):]
    low = text.lower()
    return text[:low.index("<think>")] if "<think>" in low else text


def parse_verdict(text: str | None) -> Verdict | None:
    """The last `[[A]]` / `[[B]]` / `[[tie]]` marker outside thinking blocks, else None (no verdict)."""
    found = _MARKER.findall(strip_thinking(text or ""))
    if not found:
        return None
    v = found[-1].upper()
    return "tie" if v == "TIE" else v  # type: ignore[return-value]


def find_file(value: str) -> Path | None:
    """A config path: absolute, else relative to the current directory, else to the repository root (None: none)."""
    p = Path(value).expanduser()
    return next((c for c in ([p] if p.is_absolute() else [Path.cwd() / p, REPO / p]) if c.is_file()), None)


def resolve_path(value: str, where: str) -> Path:
    """`find_file`, or a ValueError naming the config key `where`."""
    found = find_file(value)
    if found is not None:
        return found
    raise ValueError(f"{where}: file not found: {value} (relative paths are read from the current directory or"
                     f" the repository root {REPO})")


@functools.lru_cache(maxsize=8)
def _jinja(template: str):
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(template)


_FILE_SUFFIXES = (".md", ".txt", ".j2", ".jinja", ".jinja2")


@dataclass(frozen=True)
class Rubric:
    template: str
    system: str | None = None  # the system prompt of chat judges (None: none)
    source: str = ""  # where the template came from (for messages)

    @classmethod
    def load(cls, path: str = DEFAULT_RUBRIC, system_prompt: str | None = None, *, where: str = "label.judge"
             ) -> Rubric:
        """The rubric file at `path`; `system_prompt` is inline text, or a file when it is one line ending in
        .md/.txt/.j2/.jinja (resolved like the rubric)."""
        template = resolve_path(path, f"{where}.rubric").read_text()
        system = system_prompt
        if system is not None and "\n" not in system.strip() and system.strip().endswith(_FILE_SUFFIXES):
            system = resolve_path(system.strip(), f"{where}.system_prompt").read_text()
        rubric = cls(template, system, str(path))
        try:
            probe = rubric.render("\x00P", "\x00A", "\x00B")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"{where}.rubric: {path}: cannot fill the template ({type(err).__name__}: {err}); it"
                             " may use {prompt}, {response_a}, {response_b} (double literal braces)") from None
        missing = [n for n, s in (("prompt", "\x00P"), ("response_a", "\x00A"), ("response_b", "\x00B"))
                   if s not in probe]
        if missing:
            raise ValueError(f"{where}.rubric: {path}: the template never shows {', '.join(missing)}")
        return rubric

    @property
    def is_jinja(self) -> bool:
        return self.source.endswith((".j2", ".jinja", ".jinja2")) or "{{" in self.template or "{%" in self.template

    @property
    def sha256(self) -> str:
        return hashlib.sha256(f"{self.template}\x00{self.system or ''}".encode()).hexdigest()

    def render(self, prompt: str, first: str, second: str) -> str:
        """The user message for one ordered question (response A = `first`, response B = `second`)."""
        values = {"prompt": prompt, "response_a": first, "response_b": second}
        if self.is_jinja:
            import jinja2

            try:
                return _jinja(self.template).render(**values)
            except jinja2.TemplateError as err:
                raise ValueError(f"jinja: {err}") from None
        return self.template.format_map(values)
