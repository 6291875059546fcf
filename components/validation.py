"""Input validation before any stage runs: the prompt pool's contents and config settings that cannot take effect.

    alignloop run --config configs/tiny.yaml      (flows/iteration.py:validate_inputs calls `check_pool` and
                                                   `check_settings` before the workspace is touched)

Every error names the file, the column or the config key, and what was found, so bad input stops early instead of
being cast, repeated or mixed silently downstream:
- prompt_id, prompt, source, split must be string columns (an integer `prompt` column is refused, never cast);
- prompt_id must be unique: pairs are built per prompt_id, so a repeated id would pair one prompt's completion
  with another's;
- no empty or whitespace-only prompt, none longer than `sample.max_prompt_chars`;
- a chat row's `messages` (optional column; null = plain prompt) is a valid conversation
  (components.chat.check_messages: known roles, non-empty content, the last turn the user's);
- a train and an eval split, and a train split of at least `sample.n_prompts` rows unless
  `sample.when_pool_smaller: cap`.
A single-scorer ensemble (one trained member or pretrained RM: std 0) cannot route uncertain pairs: without a
judge a warning says the routing settings are inert (with one, the judge gets the smallest-|margin| pairs).
"""

from __future__ import annotations

import logging
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from components.chat import check_messages
from components.config import LoopConfig
from components.schemas import SchemaError, conform
from components.stages.sample_prompts import draw_size

log = logging.getLogger(__name__)
STRING_COLUMNS = ("prompt_id", "prompt", "source", "split")
_warned: set[str] = set()  # warnings already given in this process (validation runs once per iteration)


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def check_pool(table: pa.Table, cfg: LoopConfig, source: str) -> pa.Table:
    """The pool `table` read from `source`, conformed to the prompts schema; raises ValueError (SchemaError for
    column types) naming the file and what is wrong."""
    for name in STRING_COLUMNS:
        if name in table.column_names and not _is_string(table.schema.field(name).type):
            raise SchemaError(f"{source}: column {name!r} is {table.schema.field(name).type}, expected string "
                              "(values are not cast: write the column as text)")
    table = conform(table, "prompts", source=source)
    counts = Counter(table["prompt_id"].to_pylist())
    dups = [k for k, n in counts.items() if n > 1]
    if dups:
        shown = ", ".join(repr(d) for d in dups[:5]) + (f" (+{len(dups) - 5} more)" if len(dups) > 5 else "")
        raise ValueError(f"{source}: column 'prompt_id' has {len(dups)} duplicated id(s): {shown}; prompt ids must "
                         "be unique (pairs are built per prompt_id)")
    for n, messages in enumerate(table["messages"].to_pylist(), 1):  # chat rows: the conversation itself
        if messages is not None:
            check_messages(messages, f"{source}: row {n}")
    empty = pc.sum(pc.equal(pc.utf8_trim_whitespace(table["prompt"]), "")).as_py() or 0
    if empty:
        raise ValueError(f"{source}: column 'prompt' has {empty} empty or whitespace-only prompt(s)")
    too_long = pc.sum(pc.greater(pc.utf8_length(table["prompt"]), cfg.sample.max_prompt_chars)).as_py() or 0
    if too_long:
        raise ValueError(f"{source}: column 'prompt' has {too_long} prompt(s) longer than sample.max_prompt_chars="
                         f"{cfg.sample.max_prompt_chars} characters (raise the limit or shorten them)")
    splits = Counter(table["split"].to_pylist())
    for split in ("train", "eval"):
        if not splits.get(split):
            raise ValueError(f"{source}: column 'split' has no '{split}' rows")
    try:
        draw_size(cfg.sample, splits["train"], warn=False)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    return table


def check_settings(cfg: LoopConfig) -> list[str]:
    """Warnings (logged once per process) for settings that are valid but cannot take effect; returns them."""
    found = []
    routing = [f"label.min_margin_over_std={cfg.label.min_margin_over_std}"] * (cfg.label.min_margin_over_std > 0) \
        + [f"label.min_agreement={cfg.label.min_agreement}"] * (cfg.label.min_agreement > 0)
    ens = cfg.ensemble
    counts = {ens.scorers} | ({len(ens.pretrained)} if ens.pretrained else set())  # trained; iteration 0
    if 1 in counts and cfg.label.labeler == "ensemble" and routing and cfg.label.judge.backend == "none":
        found.append(f"ensemble.members={ens.members} with {len(ens.frozen_paths)} frozen and "
                     f"{len(ens.pretrained)} ensemble.pretrained reward model(s): a single scorer's margin std is "
                     f"0 and its agreement 1, so no pair is ever uncertain and {' and '.join(routing)} route "
                     "nothing (no judge call, no human queue); use >= 2 scorers (ensemble.members + frozen "
                     "pretrained) for uncertainty routing, or set label.judge (with one scorer it judges the pairs "
                     "of smallest |margin|), or set the thresholds to 0 to silence this")
    for msg in found:
        if msg not in _warned:
            _warned.add(msg)
            log.warning("%s", msg)
    return found
