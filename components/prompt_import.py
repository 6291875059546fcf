"""Bring your own prompts: read prompt rows from a file, validate them, and write (or extend) a prompt pool.

    alignloop prompts import prompts.jsonl --out data/prompts/mine.parquet --eval-fraction 0.1 --seed 0
    alignloop prompts import today.jsonl --out data/prompts/mine.parquet --append     (the daily new prompts)

Sources, by extension: `.jsonl`/`.ndjson` (one object a line, blank lines skipped), `.json` (a list of objects),
`.csv` (a header row; a `messages` cell holds JSON text), `.parquet`, or a directory written by `datasets`'
`save_to_disk` (a Dataset, or a DatasetDict whose splits are read in turn). Each row has exactly one of
- `prompt`: a non-empty string (TRL's standard format), or
- `messages`: a conversation `[{role, content}, ...]` (system/user/assistant turns, ending on a user turn).
A row may carry both only when `prompt` is `chat.as_text(messages)` (a pool written here, read back). Optional
`source` (a non-empty string; default: the source file's stem) and `split` ("train" or "eval"); other fields
are ignored. A bad row stops the import with `FILE:LINE` (JSONL, CSV) or `FILE: row N` (1-based; JSON, Parquet,
datasets) and the field, and nothing is written.

`prompt_id` is a content id, sha256 of `chat.key(prompt)` + "\\n0" (the toy pool's rule for a text's first
occurrence), so the same prompt gets the same id on every import; repeats are skipped, within the file and, when
appending, against what the pool already holds (by id and by content). A row without a `split` goes to eval when
a seeded hash of its prompt_id falls under `eval_fraction`: appending never moves a prompt between splits, and
the same file imported twice gives the same pool. A pool of >= 2 rows gets at least one train and one eval row
(the new row with the lowest / highest hash moves). The pool is written atomically (temporary file, then
os.replace): an error leaves an existing POOL byte for byte as it was.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components import chat
from components.schemas import MESSAGES, SchemaError, conform

SPLITS = ("train", "eval")
MAX_ERRORS = 10  # errors listed in one message (the count says how many more)


@dataclass
class ImportResult:
    """What an import did (the CLI prints it)."""

    out: Path
    read: int = 0            # rows read from the source
    added: int = 0           # new prompts written
    duplicates: int = 0      # rows skipped: same prompt earlier in the file or already in the pool
    existing: int = 0        # rows the pool held before (append)
    splits: dict[str, int] = field(default_factory=dict)  # rows per split in the written pool
    md5: str = ""            # md5 of the written file (what `dvc add` records)
    ignored_fields: list[str] = field(default_factory=list)


def prompt_id(prompt: chat.Prompt) -> str:
    """Stable content id of a prompt (same text / conversation -> same id, on every import)."""
    return hashlib.sha256(f"{chat.key(prompt)}\n0".encode()).hexdigest()


def file_md5(path: str | Path) -> str:
    """md5 of a file's bytes (what `dvc add` writes into the .dvc file for a single file), or of a directory's
    files (relative names and contents, in sorted order)."""
    p = Path(path)
    h = hashlib.md5()
    for f in sorted(x for x in ([p] if p.is_file() else p.rglob("*")) if x.is_file()):
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode())
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def pool_version(path: str | Path) -> dict:
    """The pool file's version as lineage records it: md5 (= its .dvc md5) and row count."""
    return {"md5": file_md5(path), "rows": pq.ParquetFile(path).metadata.num_rows}


# ---- reading ------------------------------------------------------------------------------------------
def read_rows(src: Path) -> list[tuple[str, object]]:
    """(where, row) for every row of `src`; `where` is `FILE:LINE` or `FILE: row N`. ValueError for an unreadable
    source or unknown format."""
    if src.is_dir():
        return _read_dataset_dir(src)
    if not src.is_file():
        raise ValueError(f"{src}: no such file or directory")
    ext = src.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
               ".parquet": _read_parquet, ".pq": _read_parquet}
    if ext not in readers:
        raise ValueError(f"{src}: unknown file type {ext or '(no extension)'!r}; expected .jsonl, .json, "
                         ".csv, .parquet or a datasets save_to_disk directory")
    try:
        return readers[ext](src)
    except UnicodeDecodeError as err:
        raise ValueError(f"{src}: not UTF-8 text ({err})") from None


def _read_jsonl(src: Path) -> list[tuple[str, object]]:
    rows = []
    with open(src, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{src}:{n}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{src}:{n}: not valid JSON ({err.msg} at column {err.colno})") from None
    return rows


def _read_json(src: Path) -> list[tuple[str, object]]:
    try:
        doc = json.loads(src.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{src}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(doc, list):
        raise ValueError(f"{src}: expected a JSON list of prompt objects, got {type(doc).__name__} "
                         "(for one object a line use .jsonl)")
    return [(f"{src}: row {n}", row) for n, row in enumerate(doc, 1)]


def _read_csv(src: Path) -> list[tuple[str, object]]:
    rows = []
    with open(src, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{src}: empty CSV file (expected a header row with a prompt or messages column)")
        while True:
            line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                raise ValueError(f"{src}:{line}: not valid CSV ({err})") from None
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise ValueError(f"{src}:{line}: {len(cells)} cell(s), the header has {len(header)}")
            rows.append((f"{src}:{line}", _csv_row(dict(zip(header, cells)), f"{src}:{line}")))
    return rows


def _csv_row(row: dict[str, str], where: str) -> dict:
    """CSV has no null: an empty optional cell is an absent field; `messages` is JSON text."""
    out = {k: v for k, v in row.items() if not (v == "" and k in ("messages", "source", "split"))}
    if out.get("prompt") == "" and out.get("messages"):
        del out["prompt"]
    if "messages" in out:
        try:
            out["messages"] = json.loads(out["messages"])
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: field 'messages' is not valid JSON ({err.msg}); write the conversation "
                             'as a JSON list like [{"role": "user", "content": "..."}]') from None
    return out


def _read_parquet(src: Path) -> list[tuple[str, object]]:
    try:
        table = pq.read_table(src)
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"{src}: not a readable Parquet file ({err})") from None
    return [(f"{src}: row {n}", row) for n, row in enumerate(table.to_pylist(), 1)]


def _read_dataset_dir(src: Path) -> list[tuple[str, object]]:
    if not any((src / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise ValueError(f"{src}: a directory, but not one written by datasets' save_to_disk "
                         "(no dataset_info.json / dataset_dict.json)")
    from datasets import Dataset, load_from_disk

    try:
        ds = load_from_disk(str(src))
    except Exception as err:  # datasets raises several types for a broken directory
        raise ValueError(f"{src}: not readable with datasets.load_from_disk ({err})") from None
    parts = [("", ds)] if isinstance(ds, Dataset) else [(f"[{name}]", ds[name]) for name in ds]
    return [(f"{src}{tag}: row {n}", row) for tag, part in parts for n, row in enumerate(part.to_list(), 1)]


# ---- validation ---------------------------------------------------------------------------------------
def parse_row(where: str, row: object) -> tuple[chat.Prompt, str | None, str | None]:
    """(prompt, source or None, split or None) of one source row, or ValueError naming `where` and the field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with a 'prompt' or 'messages' field, got "
                         f"{type(row).__name__}")
    text, messages = row.get("prompt"), row.get("messages")
    if text is None and messages is None:
        present = [k for k in ("prompt", "messages") if k in row]
        if present:
            raise ValueError(f"{where}: field {present[0]!r} is null (need a non-empty 'prompt' string or a "
                             "'messages' list)")
        raise ValueError(f"{where}: no 'prompt' or 'messages' field (fields: {sorted(row)})")
    if messages is not None:
        prompt = chat.check_messages(messages, where)
        if text is not None and text != chat.as_text(prompt):
            raise ValueError(f"{where}: both 'prompt' and 'messages' are set; give one of them (a plain prompt "
                             "string or a conversation)")
    elif not isinstance(text, str):
        raise ValueError(f"{where}: field 'prompt' must be a string, got {type(text).__name__}")
    elif not text.strip():
        raise ValueError(f"{where}: field 'prompt' is empty")
    else:
        prompt = text
    source, split = row.get("source"), row.get("split")
    if source is not None and (not isinstance(source, str) or not source.strip()):
        raise ValueError(f"{where}: field 'source' must be a non-empty string, got {source!r}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"{where}: field 'split' is {split!r}; expected 'train' or 'eval' (or leave it out to "
                         "assign splits by --eval-fraction)")
    return prompt, source, split


def parse_rows(rows: list[tuple[str, object]]) -> list[tuple[chat.Prompt, str | None, str | None]]:
    """Every row parsed, or one ValueError listing the first MAX_ERRORS bad rows."""
    parsed, errors = [], []
    for where, row in rows:
        try:
            parsed.append(parse_row(where, row))
        except ValueError as err:
            errors.append(str(err))
    if errors:
        more = f"\n(+{len(errors) - MAX_ERRORS} more bad row(s))" if len(errors) > MAX_ERRORS else ""
        raise ValueError("\n".join(errors[:MAX_ERRORS]) + more + "\nnothing was written")
    return parsed


# ---- pool ---------------------------------------------------------------------------------------------
def split_hash(pid: str, seed: int) -> float:
    """A prompt's place in [0, 1) for split assignment: fixed by its id and the seed."""
    return int(hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest()[:15], 16) / 16 ** 15


def _assign_splits(ids: list[str], given: list[str | None], seed: int, eval_fraction: float,
                   existing: list[str]) -> list[str]:
    """Given splits kept; others by hash; then at least one train and one eval row in the pool (>= 2 rows),
    moving only a new hash-assigned row."""
    out = [g or ("eval" if split_hash(p, seed) < eval_fraction else "train") for p, g in zip(ids, given)]
    free = [i for i, g in enumerate(given) if g is None]
    if len(existing) + len(out) >= 2 and free:
        for want, pick in (("eval", min), ("train", max)):  # the row nearest the threshold moves
            if want not in existing and want not in out:  # all rows are in the other split: >= 1 stays there
                out[pick(free, key=lambda i: split_hash(ids[i], seed))] = want
    return out


def read_pool(path: Path) -> pa.Table:
    """An existing pool, conformed to the prompts schema (ValueError naming the file otherwise)."""
    try:
        return conform(pq.read_table(path), "prompts", source=str(path))
    except SchemaError:
        raise
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"{path}: not a readable Parquet prompt pool ({err})") from None


def build_pool(src: Path, out: Path, *, eval_fraction: float = 0.1, seed: int = 0, append: bool = False,
               source: str | None = None) -> tuple[pa.Table, ImportResult]:
    """The pool table `out` should hold after importing `src` (nothing written); see the module docstring."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    rows = read_rows(src)
    parsed = parse_rows(rows)
    old = read_pool(out) if append and out.exists() else conform(pa.table({
        "prompt_id": pa.array([], pa.string()), "prompt": pa.array([], pa.string()),
        "source": pa.array([], pa.string()), "split": pa.array([], pa.string())}), "prompts", str(out))
    seen = set(old["prompt_id"].to_pylist()) | {chat.key(p) for p in chat.prompts_of(old)}
    res = ImportResult(out=out, read=len(rows), existing=old.num_rows)
    res.ignored_fields = sorted({k for _, r in rows if isinstance(r, dict) for k in r}
                                - {"prompt", "messages", "source", "split"})
    new: list[tuple[str, chat.Prompt, str, str | None]] = []
    for prompt, row_source, split in parsed:
        pid, k = prompt_id(prompt), chat.key(prompt)
        if pid in seen or k in seen:
            res.duplicates += 1
            continue
        seen.update((pid, k))
        new.append((pid, prompt, row_source or source or src.stem, split))
    ids = [n[0] for n in new]
    splits = _assign_splits(ids, [n[3] for n in new], seed, eval_fraction, old["split"].to_pylist())
    cols = chat.prompt_columns([n[1] for n in new])
    added = pa.table({"prompt_id": pa.array(ids, pa.string()), "prompt": pa.array(cols["prompt"], pa.string()),
                      "messages": pa.array(cols["messages"], MESSAGES),
                      "source": pa.array([n[2] for n in new], pa.string()), "split": pa.array(splits, pa.string())})
    table = pa.concat_tables([old, conform(added, "prompts", str(src))])
    res.added = added.num_rows
    res.splits = {s: table["split"].to_pylist().count(s) for s in SPLITS}
    return table, res


def write_pool(table: pa.Table, out: Path) -> str:
    """Write `table` to `out` atomically (a temporary file beside it, then os.replace); returns its md5."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return file_md5(out)


def import_prompts(src: Path, out: Path, *, eval_fraction: float = 0.1, seed: int = 0, append: bool = False,
                   source: str | None = None) -> ImportResult:
    """Validate `src` in full, then write the pool `out` (new, or extended with --append)."""
    table, res = build_pool(Path(src), Path(out), eval_fraction=eval_fraction, seed=seed, append=append,
                            source=source)
    res.md5 = write_pool(table, Path(out))
    return res
