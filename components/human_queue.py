"""The human review queue: uncertain pairs out as JSONL, completed labels back in as preferences.

    alignloop labels import reviewed.jsonl --workspace workspace

Export: `<workspace>/human_queue/iter-NNNN.jsonl`, one pair per line, shaped like a Label Studio task (the
fields a labeling config shows live under "data", extra facts under "meta"; `jq -s . iter-0003.jsonl` gives a
task list for its JSON import, which assigns its own numeric ids: the pair id also travels as data.pair_id):

    {"id":        str,    the pair's id = preferences.pair_id(prompt, response_a, response_b)
     "iteration": int,    the iteration whose rollouts it came from
     "data":      {"pair_id": str, "prompt": str, "response_a": str, "response_b": str},
                          response_a is the side the reward-model ensemble (weakly) preferred
     "meta":      {"rm_margin": float, "rm_uncertainty": float, "rm_agreement": float,
                   "reason": "inconsistent" | "over_budget" | "not_judged"},   why no label was taken
     "choice":    null}   the reviewer writes "a" or "b" (or "skip"; null = not reviewed yet)

Label Studio: `alignloop labels export --format label-studio --out DIR` writes the queue as tasks for its
Pairwise template, and its JSON export imports as is (formats: components.label_studio).

Import: a JSONL file whose lines carry at least {"id", "choice"} (a reviewed export file works as is), or a
Label Studio JSON export (a JSON array). Every id must be in some exported queue file and not imported before,
each at most once per file; a bad line or task stops the import with `FILE:LINE: reason` and nothing is written.
The labels become a preferences table (label_source = human) in the artifact store, recorded in
`<workspace>/human_labels/imports.jsonl`; the next iteration's label stage adds every import no earlier
iteration consumed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa

from components.artifacts import ArtifactRef, ArtifactStore
from components.preferences import pair_id
from components.workspace import Workspace

CHOICES = {"a", "b", "skip", None}


def queue_path(ws: Workspace, iteration: int) -> Path:
    return ws.human_queue(iteration)


def _imports_log(ws: Workspace) -> Path:
    return ws.root / "human_labels" / "imports.jsonl"


def queue_records(prompt, response_a, response_b, margin, margin_std, agreement, reason, iteration: int
                  ) -> list[dict]:
    return [{"id": pair_id(p, a, b), "iteration": iteration,
             "data": {"pair_id": pair_id(p, a, b), "prompt": p, "response_a": a, "response_b": b},
             "meta": {"rm_margin": float(m), "rm_uncertainty": float(s), "rm_agreement": float(g), "reason": r},
             "choice": None}
            for p, a, b, m, s, g, r in zip(prompt, response_a, response_b, margin, margin_std, agreement, reason)]


def write_queue(ws: Workspace, iteration: int, records: list[dict]) -> Path:
    """Write (replace: a re-run of the iteration exports the same pairs) one iteration's queue file."""
    path = queue_path(ws, iteration)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    tmp.replace(path)
    return path


def _imports(ws: Workspace) -> list[dict]:
    p = _imports_log(ws)
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def queued_records(ws: Workspace) -> dict[str, dict]:
    """Every pair ever exported for review, by pair id (a later iteration's file wins a repeated pair)."""
    queued = {}
    for q in sorted(ws.human_queue_dir.glob("iter-*.jsonl")):
        for line in q.read_text().splitlines():
            rec = json.loads(line)
            queued[rec["id"]] = rec
    return queued


def imported_ids(ws: Workspace) -> dict[str, str]:
    """Pair id -> the file it was imported from."""
    return {i: imp["file"] for imp in _imports(ws) for i in imp["ids"]}


def _read_jsonl(file: Path, text: str) -> list[tuple[str, str, str | None]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file}:{n}"
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err})") from None
        if not isinstance(doc, dict) or "id" not in doc or "choice" not in doc:
            raise ValueError(f"{where}: each line needs the fields 'id' and 'choice'")
        if not isinstance(doc["id"], str):
            raise ValueError(f"{where}: 'id' must be a string (the pair id from the queue), got {doc['id']!r}")
        if not (doc["choice"] is None or isinstance(doc["choice"], str)) or doc["choice"] not in CHOICES:
            raise ValueError(f"{where}: choice must be 'a', 'b', 'skip' or null, got {doc['choice']!r}")
        out.append((where, doc["id"], doc["choice"]))
    return out


def _label_row(rec: dict, choice: str) -> dict:
    d, m = rec["data"], rec["meta"]
    sign = 1.0 if choice == "a" else -1.0
    chosen, rejected = (d["response_a"], d["response_b"]) if choice == "a" else (d["response_b"], d["response_a"])
    return {"pair_id": pair_id(d["prompt"], chosen, rejected), "prompt": d["prompt"], "chosen": chosen,
            "rejected": rejected, "margin": sign * m["rm_margin"], "uncertainty": m["rm_uncertainty"],
            "agreement": m["rm_agreement"] if choice == "a" else 1.0 - m["rm_agreement"],
            "label_source": "human", "iteration": rec["iteration"], "_id": rec["id"]}


def _validate(ws: Workspace, entries, queued: dict[str, dict]) -> tuple[list[dict], dict[str, int]]:
    done = imported_ids(ws)
    seen: dict[str, str] = {}
    rows, counts = [], {"labels": 0, "skipped": 0, "conflicting": 0}
    for where, pid, choice in entries:
        if not isinstance(pid, str):
            raise ValueError(f"{where}: the pair id must be a string, got {pid!r}")
        if pid not in queued:
            raise ValueError(f"{where}: unknown pair id {pid!r} (not in any {ws.human_queue_dir}/iter-*.jsonl)")
        if pid in seen:
            raise ValueError(f"{where}: duplicate pair id {pid!r} (first at {seen[pid]})")
        if pid in done:
            raise ValueError(f"{where}: pair id {pid!r} was already imported from {done[pid]}")
        seen[pid] = where
        if choice == "conflict":
            counts["conflicting"] += 1
        elif choice in ("skip", None):
            counts["skipped"] += 1
        else:
            rows.append(_label_row(queued[pid], choice))
    counts["labels"] = len(rows)
    return rows, counts


def import_labels(ws: Workspace, file: Path) -> tuple[ArtifactRef | None, dict[str, int]]:
    """Validate `file` (the queue's JSONL, or Label Studio's JSON export: components.label_studio) against the
    exported queue and earlier imports; store its labels (see module doc). Any error: nothing is written."""
    from components import label_studio

    try:
        text = Path(file).read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{file}: not a text file (expected the queue's JSONL or Label Studio's JSON export)"
                         ) from None
    queued = queued_records(ws)
    entries = (label_studio.read_export(file, text, queued) if label_studio.is_export(text)
               else _read_jsonl(file, text))
    rows, counts = _validate(ws, entries, queued)
    if not rows:
        return None, counts
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "_id"} for r in rows])
    ref = ArtifactStore(ws.store).put_table("preferences", table, meta={"human_import": str(file)})
    log = _imports_log(ws)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(json.dumps({"ref": ref.model_dump(), "file": str(Path(file).resolve()),
                             "ids": [r["_id"] for r in rows], "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
                 + "\n")
    return ref, counts


def pending_imports(ws: Workspace, consumed: set[str]) -> list[ArtifactRef]:
    """Imported human-label tables whose sha is not in `consumed` (those earlier iterations already used)."""
    return [ArtifactRef(**imp["ref"]) for imp in _imports(ws) if imp["ref"]["sha256"] not in consumed]
