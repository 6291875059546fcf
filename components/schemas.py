"""Arrow schemas of every table artifact, with a version each; validated on write and on read.

Columns are written down once here (shapes and meaning), so stages only talk through documented tables.
"""

from __future__ import annotations

import pyarrow as pa


class SchemaError(ValueError):
    """A table does not match its documented schema; the message names the source and the column."""


_S, _I, _F = pa.string(), pa.int64(), pa.float64()
# a conversation in TRL's conversational format: [{role, content}, ...] (system/user/assistant turns)
MESSAGES = pa.list_(pa.struct([("role", _S), ("content", _S)]))
_IDS = pa.list_(pa.int32())
# columns a table may lack or hold nulls in (filled with nulls on write and read): chat structure and token ids
# exist only for chat prompts / HF-sampled rollouts, and tables written before they existed stay readable
OPTIONAL = {"messages", "completion_ids", "finish_reason", "chosen_ids", "rejected_ids"}

SCHEMAS: dict[str, tuple[int, pa.Schema]] = {
    # the pool (DVC-tracked) and each iteration's draw from it
    "prompts": (2, pa.schema([
        ("prompt_id", _S),      # content id of the prompt row
        ("prompt", _S),         # plain prompt: the text fed to the policy; chat prompt: its turns as text (display)
        ("messages", MESSAGES), # chat prompt: the conversation the policy's chat template renders; null = plain
        ("source", _S),         # stratum (toy: the topic)
        ("split", _S),          # "train" | "eval"
    ])),
    # K completions per prompt from one policy version
    "rollouts": (2, pa.schema([
        ("rollout_id", _S),     # sha of (policy sha, prompt_id, sample index, seed)
        ("prompt_id", _S),
        ("prompt", _S),
        ("messages", MESSAGES),
        ("completion", _S),     # decoded continuation (plain prompts: starts with a space)
        ("completion_ids", _IDS),  # the sampled token ids, eos included when it stopped (null: not recorded)
        ("finish_reason", _S),  # "stop" (an eos id ended it) | "length" (max_new_tokens reached)
        ("num_tokens", _I),     # generated tokens up to and including eos
        ("policy_version", _S), # sha of the policy artifact that sampled it
        ("seed", _I),
        ("temperature", _F),
        ("top_p", _F),
    ])),
    # every completion's score from every scorer
    "scores": (1, pa.schema([
        ("rollout_id", _S),
        ("scorer", _S),         # e.g. "rm-0@<sha12>", "ensemble:mean", "gold"
        ("score", _F),
    ])),
    # preference pairs; chosen/rejected are TRL's column names
    "preferences": (2, pa.schema([
        ("pair_id", _S),
        ("prompt", _S),
        ("messages", MESSAGES),
        ("chosen", _S),
        ("rejected", _S),
        ("chosen_ids", _IDS),   # the policy's sampled tokens of chosen/rejected (null: imported or judge text)
        ("rejected_ids", _IDS),
        ("margin", _F),         # aggregate reward(chosen) - reward(rejected)
        ("uncertainty", _F),    # ensemble std of that margin (0 for oracle labels)
        ("agreement", _F),      # share of ensemble members preferring chosen (1 for oracle labels)
        ("label_source", _S),   # rm_ensemble | judge | human | gold
        ("iteration", _I),
    ])),
    # per-completion evaluation records (candidate and champion on held-out prompts)
    "eval_samples": (2, pa.schema([
        ("model", _S),          # "candidate" | "champion"
        ("prompt_id", _S),
        ("prompt", _S),
        ("messages", MESSAGES),
        ("completion", _S),
        ("finish_reason", _S),
        ("num_tokens", _I),
        ("proxy_reward", _F),   # ensemble aggregate
        ("gold_reward", _F),    # NaN where no gold oracle exists
        ("logp_policy", _F),    # log π(y|x) summed over completion tokens
        ("logp_ref", _F),       # log π_ref(y|x)
    ])),
}


def schema_of(kind: str) -> tuple[int, pa.Schema]:
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise SchemaError(f"no schema for table kind {kind!r}; known: {sorted(SCHEMAS)}") from None


def conform(table: pa.Table, kind: str, source: str) -> pa.Table:
    """Return `table` with exactly the schema of `kind` (column order, safe casts), or raise naming the column."""
    _, schema = schema_of(kind)
    missing = [f.name for f in schema if f.name not in table.column_names and f.name not in OPTIONAL]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {missing} for {kind} table (have {table.column_names})")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        if col.null_count and field.name not in OPTIONAL:
            raise SchemaError(f"{source}: column {field.name!r} has {col.null_count} null value(s)")
        try:
            columns.append(col.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise SchemaError(f"{source}: column {field.name!r} is {col.type}, expected {field.type}: {err}") from None
    return pa.Table.from_arrays(columns, schema=schema)
