"""Disk retention for the artifact store (`alignloop gc`, `retention:` in the loop config).

An 8B loop writes ~100 GB a night, nearly all of it checkpoints (a candidate policy, K reward-model members). gc
deletes what no later iteration, registry alias or person is likely to load again, and keeps:
  * the champion and every other registry alias (champion / previous / candidate of both models: `rollback` needs
    `previous`), and everything the ledger of the iteration that made the champion references;
  * the initial policy, and every table the loop versions or reads back (ALWAYS_KEPT_KINDS: pools and sampled
    prompts, rollouts, preferences, evaluation reports and samples; train_reward retrains on every preference
    table, `alignloop repair` re-tracks a lost data repo from the store, `report`/`lineage` read them): megabytes,
    where a checkpoint is gigabytes. What goes: candidate policies, reward models, judge transcripts, scores;
  * everything the ledgers of the last `keep_iterations` iterations (and of the last finished one) reference, or
    those iterations produced;
  * the last `keep_candidates` candidate policies (by iteration, whatever the gate said);
  * everything of an unfinished (resumable) iteration and later: its stage outputs are not in its ledger yet, only
    in Prefect's result cache, so nothing it may have produced is touched.
An artifact belongs to the iteration its `meta.iteration` names, else to the one whose ledger outputs (or stored
evaluation report) name it, else to the latest iteration among its parents; an artifact that belongs to none
(e.g. an imported human-label table) is kept.

Every deletion is first appended to <workspace>/gc-log.jsonl, then the artifact is moved into the store's staging
area (one rename: it disappears whole), its sidecar and stat-cache entry removed. `alignloop verify` reads the log
to report an artifact a crashed gc left half-deleted as "deleted by gc", not as lost. With an S3 mirror
(ALIGNLOOP_ARTIFACT_REMOTE) only the local copies are deleted: the store re-fetches one on use; expire old objects
with the bucket's lifecycle rules. The data repo (workspace/data) keeps its own copies of each iteration's tables.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from components.artifacts import ArtifactRef
    from components.workspace import Workspace

GC_LOG = "gc-log.jsonl"
ALWAYS_KEPT_KINDS = ("prompts", "rollouts", "preferences", "eval_report", "eval_samples")
CLOSED = ("finished", "failed")  # ledger statuses of a closed iteration; anything else may resume
_SHA = re.compile(r"^[0-9a-f]{64}$")


class RetentionConfig(BaseModel):
    """`alignloop gc`: which checkpoints the artifact store keeps (components/retention.py). Always kept besides:
    the champion and every registry alias, the initial policy, every versioned table (prompts, rollouts,
    preferences, evaluation reports and samples), and an unfinished iteration's artifacts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_candidates: int = Field(3, ge=0, description="The last N candidate policy checkpoints (by iteration).")
    keep_iterations: int = Field(
        3, ge=1, description="Everything the ledgers of the last M iterations reference, or those iterations made.")


@dataclass(frozen=True)
class Doomed:
    """An artifact gc deletes: its ref, the iteration it belongs to and its size on local disk."""

    ref: ArtifactRef
    iteration: int
    bytes: int = 0


def _shas(doc: Any, skip: tuple[str, ...] = ("record",)) -> set[str]:
    """Every sha256 string anywhere in a ledger (refs, parents, the stored report's artifact ids), except under
    `skip` (the record lists every registered version ever: it references everything)."""
    if isinstance(doc, dict):
        return set().union(*(_shas(v, skip) for k, v in doc.items() if k not in skip))
    if isinstance(doc, (list, tuple)):
        return set().union(*(_shas(v, skip) for v in doc))
    return {doc} if isinstance(doc, str) and _SHA.match(doc) else set()


def _sha(d: dict, *path: str) -> str | None:
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d if isinstance(d, str) else (d.get("sha256") if isinstance(d, dict) else None)


def owners(refs: list[ArtifactRef], ledgers: list[dict]) -> dict[str, int]:
    """sha -> the iteration an artifact belongs to (module docstring); -1 for the initial policy."""
    owner: dict[str, int] = {}
    for r in refs:
        it = r.meta.get("iteration")
        if isinstance(it, int) and not isinstance(it, bool):
            owner[r.sha256] = it
    named: dict[str, int] = {}
    for d in ledgers:
        for s in _shas({"outputs": d.get("outputs", {}), "report": d.get("report", {})}):
            named[s] = max(named.get(s, -1), d["iteration"])
    for s, it in named.items():
        owner.setdefault(s, it)
    changed = True
    while changed:  # lineage: an artifact made from iteration i's artifacts belongs to i (a DAG: this ends)
        changed = False
        for r in refs:
            if r.sha256 in owner:
                continue
            known = [owner[p] for p in r.parents if p in owner]
            if known:
                owner[r.sha256], changed = max(known), True
    return owner


def champion(ledgers: list[dict]) -> str | None:
    """The champion policy the last finished iteration left (a later promote/rollback: the registry knows)."""
    finished = [d for d in ledgers if d.get("status") == "finished"]
    if not finished:
        return None
    last = finished[-1]
    promoted = bool(last.get("decision", {}).get("promote"))
    return _sha(last, "outputs", "candidate") if promoted else _sha(last, "start", "champion")


def in_use(ledgers: list[dict]) -> set[str]:
    """The champion policy and the reward model the last finished iteration left in use, and every alias its
    record names."""
    finished = [d for d in ledgers if d.get("status") == "finished"]
    if not finished:
        return set()
    last = finished[-1]
    out = {champion(ledgers), _sha(last, "outputs", "reward_model")}
    rec = last.get("record", {})
    for name, aliases in rec.get("aliases", {}).items():
        versions = rec.get("registry", {}).get(name, {})
        out |= {versions.get(str(v), {}).get("sha") for v in aliases.values()}
    return {s for s in out if s}


def protected(refs: list[ArtifactRef], ledgers: list[dict], aliased: Iterable[str], champ: str | None,
              keep_iters: set[int], keep_candidates: int) -> set[str]:
    """The shas gc never deletes (module docstring); `champ`: the champion policy's sha (None: the ledgers')."""
    champ = champ or champion(ledgers)
    keep = set(aliased) | in_use(ledgers) | ({champ} if champ else set())
    for d in ledgers:
        if d["iteration"] in keep_iters or d.get("status") not in CLOSED:
            keep |= _shas(d)
        keep |= {s for s in (_sha(d, "start", "initial"), _sha(d, "start", "pool"),
                             _sha(d, "outputs", "preferences")) if s}
        keep |= {h["sha256"] for h in d.get("start", {}).get("human_labels", []) if isinstance(h, dict)}
    for d in ledgers:  # the champion's own iteration: what it was trained and judged from
        if champ and _sha(d, "outputs", "candidate") == champ:
            keep |= _shas(d)
    candidates = sorted((r for r in refs if r.kind == "policy" and isinstance(r.meta.get("iteration"), int)
                         and r.meta["iteration"] >= 0), key=lambda r: r.meta["iteration"], reverse=True)
    keep |= {r.sha256 for r in candidates[:keep_candidates]}
    return keep


def to_delete(refs: list[ArtifactRef], ledgers: list[dict], aliased: Iterable[str], cfg: RetentionConfig,
              champ: str | None = None) -> list[tuple[ArtifactRef, int]]:
    """(ref, iteration) of every stored artifact the retention policy `cfg` no longer keeps, given the store's
    refs, the ledgers (any order), the shas the registry's aliases name and the champion policy's (None: the one
    the ledgers say). Pure: reads and deletes nothing."""
    ledgers = sorted(ledgers, key=lambda d: d["iteration"])
    if not ledgers:
        return []
    iters = [d["iteration"] for d in ledgers]
    unfinished = [d["iteration"] for d in ledgers if d.get("status") not in CLOSED]
    horizon = min(unfinished) if unfinished else max(iters) + 1  # from here on: may still be in use
    finished = [d["iteration"] for d in ledgers if d.get("status") == "finished"]
    keep_iters = set(iters[-cfg.keep_iterations:]) | set(finished[-1:])  # the last finished one always
    keep = protected(refs, ledgers, aliased, champ, keep_iters, cfg.keep_candidates)
    owner = owners(refs, ledgers)
    out = []
    for r in refs:
        it = owner.get(r.sha256)
        if it is None or it < 0 or it >= horizon or it in keep_iters or r.sha256 in keep:
            continue
        if r.kind in ALWAYS_KEPT_KINDS or "hub_id" in r.meta:
            continue
        out.append((r, it))
    return sorted(out, key=lambda x: (x[1], x[0].kind, x[0].sha256))


# ---- applying it --------------------------------------------------------------------------------------------------
def read_ledgers(ws: Workspace) -> list[dict]:
    """Every ledger; one that cannot be read stops gc (what it references is unknown)."""
    out = []
    for p in sorted((ws.root / "ledger").glob("iter-*.json")):
        try:
            d = json.loads(p.read_text())
            int(d["iteration"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{p}: unreadable ledger ({type(err).__name__}): gc needs to know what every "
                             "iteration references; restore it from backup first") from None
        out.append(d)
    return out


def size(path) -> int:
    if not path.exists():
        return 0
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def collect(ws: Workspace, cfg: RetentionConfig, aliased: Iterable[str] = (), champ: str | None = None
            ) -> list[Doomed]:
    """What `alignloop gc` would delete from `ws`'s local store now, with sizes (`to_delete`'s arguments)."""
    from components.artifacts import ArtifactStore

    store = ArtifactStore(ws.store, remote="")
    refs = list(store.refs())
    return [Doomed(r, it, size(store.root / r.uri))
            for r, it in to_delete(refs, read_ledgers(ws), aliased, cfg, champ)]


def delete(ws: Workspace, doomed: list[Doomed]) -> int:
    """Delete `doomed` from the local store (module docstring: logged first, then one rename each); the caller holds
    the workspace lock. Returns the bytes freed."""
    from components.artifacts import ArtifactStore

    store, freed = ArtifactStore(ws.store, remote=""), 0
    log = ws.root / GC_LOG
    for item in doomed:
        ref = item.ref
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kind": ref.kind,
                 "sha256": ref.sha256, "uri": ref.uri, "iteration": item.iteration, "bytes": item.bytes}
        with log.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        data = store.root / ref.uri
        with store.staging_dir() as d:
            if data.exists():
                os.rename(data, d / "x")  # gone whole; the bytes are removed with the staging dir
        (store.root / f"{ref.kind}/{ref.sha256}.ref.json").unlink(missing_ok=True)
        (store.root / ".verified" / ref.kind / f"{ref.sha256}.json").unlink(missing_ok=True)
        freed += item.bytes
    return freed


def deleted(ws: Workspace) -> dict[str, dict]:
    """sha -> the gc log's entry, for every artifact `alignloop gc` deleted from this workspace."""
    log = ws.root / GC_LOG
    if not log.exists():
        return {}
    out = {}
    for line in log.read_text().splitlines():
        try:
            e = json.loads(line)
            out[e["sha256"]] = e
        except (ValueError, KeyError, TypeError):  # a line torn by a crash: its deletion never started
            continue
    return out
