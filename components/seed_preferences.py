"""Seed preferences: a TRL-format preference dataset imported as trusted seed labels (`label.seed_preferences`).

    label: {seed_preferences: data/seed-prefs.jsonl}

Read once when an iteration starts (flows/iteration.py `_start_state`), stored as a `preferences` table (meta: the
file and its md5, so lineage names it) and appended by the label stage with label_source = imported. Accepted:

- files: JSONL (.jsonl), JSON (.json: a list of rows), Parquet (.parquet), CSV (.csv, standard rows only), or a
  `datasets` directory (`save_to_disk`; a DatasetDict's `train` split);
- rows, as TRL has them: standard (`prompt`, `chosen`, `rejected` strings), conversational (`prompt` = messages,
  `chosen`/`rejected` = [one assistant message]), or implicit-prompt (no `prompt`: `chosen`/`rejected` are whole
  conversations, or strings, sharing their prompt as a common prefix; TRL's `extract_prompt`).
Every problem is a ValueError naming `file:row` and the field.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from components import chat
from components import preferences as prefs
from components.prompt_import import read_rows
from components.schemas import conform

SOURCE = "imported"


def _common_prefix(a: list, b: list) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def _implicit(chosen, rejected, where: str):
    """TRL's extract_prompt: the longest common prefix of chosen and rejected is the prompt."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        k = _common_prefix(list(chosen), list(rejected))
        k = chosen.rfind(" ", 0, k + 1) if " " in chosen[:k + 1] else k  # the completion starts with its space
        if k <= 0:
            raise ValueError(f"{where}: no 'prompt' and chosen/rejected share no prompt prefix")
        return chosen[:k], chosen[k:], rejected[k:]
    if isinstance(chosen, list) and isinstance(rejected, list):
        k = _common_prefix(chosen, rejected)
        return chosen[:k], chosen[k:], rejected[k:]
    raise ValueError(f"{where}: chosen and rejected must both be strings or both message lists")


def _completion(value, field: str, where: str) -> str:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: {field} is empty")
        return value
    if (not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict)
            or value[0].get("role") != "assistant"):
        raise ValueError(f"{where}: {field} must be a string or [one assistant message] (TRL conversational format)")
    content = value[0].get("content")
    if not isinstance(content, str) or not content.strip():
        raise ValueError(f"{where}: {field}[0].content must be a non-empty string")
    return content


def convert_row(row: dict, where: str) -> tuple[chat.Prompt, str, str]:
    """(prompt, chosen, rejected) of one TRL preference row."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be an object with chosen and rejected")
    for field in ("chosen", "rejected"):
        if row.get(field) is None:
            raise ValueError(f"{where}: missing field {field!r}")
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if prompt is None:
        prompt, chosen, rejected = _implicit(chosen, rejected, where)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where}: prompt is empty")
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise ValueError(f"{where}: a string prompt needs string chosen/rejected (standard format)")
    else:
        prompt = chat.check_messages(prompt, f"{where}: prompt")
    return prompt, _completion(chosen, "chosen", where), _completion(rejected, "rejected", where)


def read_seed_preferences(path: str | Path) -> pa.Table:
    """The preference file at `path` as a `preferences` table (label_source = imported, iteration 0)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"label.seed_preferences: {p} does not exist")
    rows = read_rows(p)  # the prompt importer's readers: same formats, `FILE:LINE` / `FILE: row N` locations
    if not rows:
        raise ValueError(f"{p}: no preference rows")
    triples = [convert_row(r, where) for where, r in rows]
    prompts = [t[0] for t in triples]
    chosen, rejected = [t[1] for t in triples], [t[2] for t in triples]
    n = len(triples)
    return conform(pa.table({
        "pair_id": [prefs.pair_id(chat.key(x), c, r) for x, c, r in triples], **chat.prompt_columns(prompts),
        "chosen": chosen, "rejected": rejected, "margin": [0.0] * n, "uncertainty": [0.0] * n,
        "agreement": [1.0] * n, "label_source": [SOURCE] * n, "iteration": pa.array([0] * n, pa.int64())}),
        "preferences", str(p))
