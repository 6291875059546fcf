"""Prompts as TRL has them: a plain string (standard format) or a conversation (conversational format,
`[{"role": "system" | "user" | "assistant", "content": str}, ...]`). Pure: no tokenizer here.

In tables a prompt is two columns (components.schemas): `prompt`, always a string (a plain prompt itself, or a
chat prompt's turns as text for display, search and the human queue), and `messages`, the conversation, null
for plain prompts. In memory stages pass `Prompt` values, so every backend sees the structure and renders it
with its own tokenizer's chat template (components.backends.hf); the judge gets `as_text`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

Message = dict[str, str]
Prompt = str | list[Message]
ROLES = ("system", "user", "assistant")


def is_chat(prompt: Prompt) -> bool:
    return not isinstance(prompt, str)


def key(prompt: Prompt) -> str:
    """A string that identifies the prompt (content ids, grouping): the text itself, or canonical JSON of the
    turns, so one conversation has one key whatever dict order it was read with."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False, separators=(",", ":"))


def as_text(prompt: Prompt) -> str:
    """The prompt as a reader sees it: a plain prompt as is; a conversation as `Role: content` turns."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def check_messages(messages, where: str) -> list[Message]:
    """`messages` as a clean conversation, or ValueError naming `where` and the bad field: a non-empty list of
    {role, content} with a known role and non-empty string content, ending on a user turn (the policy answers)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: messages must be a non-empty list of {{role, content}} turns")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"{where}: messages[{k}] must be an object with role and content, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}: messages[{k}].role is {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{where}: messages[{k}].content must be a non-empty string")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ValueError(f"{where}: the last turn must be the user's (the policy writes the assistant's answer), "
                         f"got {out[-1]['role']!r}")
    return out


def prompts_of(table) -> list[Prompt]:
    """The `Prompt` of every row of a table with `prompt` (+ optional `messages`) columns."""
    texts = table["prompt"].to_pylist()
    if "messages" not in table.column_names:
        return texts
    msgs = table["messages"].to_pylist()
    return [t if m is None else [{"role": x["role"], "content": x["content"]} for x in m]
            for t, m in zip(texts, msgs)]


def prompt_columns(prompts: Sequence[Prompt]) -> dict[str, list]:
    """`prompt` and `messages` column values for `prompts` (the inverse of `prompts_of`)."""
    return {"prompt": [as_text(p) for p in prompts],
            "messages": [None if isinstance(p, str) else list(p) for p in prompts]}


def assistant(completion: str) -> list[Message]:
    """A completion as TRL's conversational `chosen`/`rejected`: one assistant turn."""
    return [{"role": "assistant", "content": completion}]
