"""Workspace integrity commands: check the artifact store byte by byte, and repair a workspace whose record
(mlflow.db, the data repo) no longer matches its ledgers.

    alignloop verify                 # every artifact's content hash; exit 1 if any is corrupt or missing
    alignloop verify --repair        # ... and replace bad copies from the S3 mirror or the DVC cache/remote
    alignloop repair                 # re-register MLflow versions and re-tag the data repo from ledger + store
    alignloop gc --dry-run           # what the retention policy (`retention:`) would delete from the store

Also what `alignloop status` needs to print on any workspace a run can leave (`registry_lines`, `shown_ledgers`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from flows.common import WorkspaceOpt, console, fail, quiet_env, take_lock, workspace_dir


def verify(repair: bool = typer.Option(False, "--repair", help="replace corrupt or missing artifacts from the S3 "
                                                               "mirror or the data repo's DVC cache/remote"),
           workspace: Path = WorkspaceOpt):
    """Check every artifact in the store against its content hash (reads every byte)."""
    from components.artifacts import ArtifactStore
    from components.integrity import verify_store
    from components.workspace import Workspace

    ws = Workspace.at(workspace_dir(workspace))
    if not ws.store.is_dir():
        console.print(f"[red]error:[/] {ws.store}: no artifact store here")
        raise typer.Exit(2)
    quiet_env(ws.root)
    checked = verify_store(ws, ArtifactStore(ws.store), repair=repair)
    from components.retention import deleted

    gone = deleted(ws)
    for c in checked:  # half-deleted by a gc that was stopped: deleted on purpose, not lost (`alignloop gc` ends it)
        if c.state == "missing" and c.ref.sha256 in gone:
            c.state, c.detail = "deleted-by-gc", f"{ws.root / 'gc-log.jsonl'}"
    counts: dict[str, int] = {}
    for c in checked:
        counts[c.state] = counts.get(c.state, 0) + 1
        if c.state not in ("ok", "remote-only", "deleted-by-gc"):
            colour = "green" if c.state == "repaired" else "red"
            console.print(f"[{colour}]{c.state}[/] {c.ref.kind} {c.ref.sha256} {c.path}: {c.detail}",
                          soft_wrap=True)
    console.print(f"{len(checked)} artifacts: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if gone:
        console.print(f"{len(gone)} artifacts were deleted by `alignloop gc` (retention; {ws.root / 'gc-log.jsonl'})")
    if any(c.bad for c in checked):
        if not repair:
            console.print("run `alignloop verify --repair` to replace them from a good copy")
        raise typer.Exit(1)


def repair(workspace: Path = WorkspaceOpt):
    """Re-create what the ledgers recorded and the workspace lost: the data repo's iterations and tags (from the
    store), the MLflow experiment, iteration runs and registry versions in version order, and the aliases."""
    from components import record
    from components.workspace import Workspace

    ws = Workspace.at(workspace_dir(workspace))
    quiet_env(ws.root)
    lock = ws.lock()
    try:
        done = record.repair(ws)
    except (record.WorkspaceRecordError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/] {err}", soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        lock.close()
    for line in done:
        console.print(line, soft_wrap=True)
    console.print("nothing to repair" if not done else f"repaired {ws.root}: {len(done)} change(s)")


def gc(dry_run: bool = typer.Option(False, "--dry-run", help="list what would be deleted, delete nothing"),
       config: list[Path] = typer.Option([Path("configs/tiny.yaml")], "--config", "-c",
                                         help="Loop config YAML whose `retention:` applies (repeat to layer)."),
       set_: list[str] = typer.Option([], "--set", help="Override a config key: --set retention.keep_candidates=1"),
       workspace: Path = WorkspaceOpt):
    """Delete old checkpoints (candidate policies, reward models) and scratch (scores, judge transcripts) that the
    retention policy (`retention:`) no longer keeps: the champion, registry aliases, the initial policy, versioned
    tables, the last candidates and iterations, and an unfinished iteration stay."""
    from components import retention
    from components.config import ConfigError, load_config
    from components.workspace import Workspace

    try:
        cfg = load_config(config, set_)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    ws = Workspace.at(workspace_dir(workspace))
    if not ws.store.is_dir():
        fail(f"{ws.store}: no artifact store here: pass --workspace DIR")
    quiet_env(ws.root)
    lock = None if dry_run else take_lock(ws.root)  # no run may write the store while gc deletes from it
    try:
        doomed = retention.collect(ws, cfg.retention, *registry_shas(ws))
        console.print(_gc_table(doomed, dry_run))
        freed = 0 if dry_run else retention.delete(ws, doomed)
    except ValueError as err:
        fail(str(err))
    finally:
        if lock is not None:
            lock.close()
    total = _human(sum(d.bytes for d in doomed))
    console.print(f"would delete {len(doomed)} artifacts, {total} (run without --dry-run to delete them)" if dry_run
                  else f"deleted {len(doomed)} artifacts, {_human(freed)} freed (logged in {ws.root / 'gc-log.jsonl'})")


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def _gc_table(doomed, dry_run: bool):
    from rich.table import Table

    table = Table(title=f"alignloop gc: {'would delete' if dry_run else 'deleting'} (retention)")
    for col, justify in (("iter", "right"), ("kind", "left"), ("artifact", "left"), ("size", "right"),
                         ("path", "left")):
        table.add_column(col, justify=justify)
    for d in doomed:
        table.add_row(str(d.iteration), d.ref.kind, d.ref.short, _human(d.bytes), d.ref.uri)
    table.add_row("", "[b]total[/]", f"{len(doomed)}", f"[b]{_human(sum(d.bytes for d in doomed))}[/]", "")
    return table


def registry_shas(ws) -> tuple[set[str], str | None]:
    """(the artifacts every alias of `policy` and `reward-model` names in the live registry, the champion policy's)
    (empty, None without a registry: the ledgers' record is read too, components.retention.in_use)."""
    if not os.environ.get("MLFLOW_TRACKING_URI") and not (ws.root / "mlflow.db").exists():
        return set(), None
    from mlflow.exceptions import MlflowException

    from components.lineage import POLICY, REWARD_MODEL, TAG_SHA, _client

    client, out, champ = _client(ws.tracking_uri), set(), None
    for name in (POLICY, REWARD_MODEL):
        try:
            aliases = client.get_registered_model(name).aliases
        except MlflowException:  # not registered (yet)
            continue
        shas = {a: client.get_model_version(name, v).tags.get(TAG_SHA) for a, v in aliases.items()}
        out |= set(shas.values())
        champ = shas.get("champion") if name == POLICY else champ
    return {s for s in out if s}, champ


# ---- for `alignloop status` -------------------------------------------------------------------------------------
def registry_lines(ws) -> list[str]:
    """`name: alias=vN, ...` per model, without creating a tracking store or failing on a missing model."""
    if not os.environ.get("MLFLOW_TRACKING_URI") and not (ws.root / "mlflow.db").exists():
        return [f"registry: no tracking store ({ws.root / 'mlflow.db'} does not exist)"]
    from components.lineage import POLICY, REWARD_MODEL, _client

    lines = []
    try:
        client = _client(ws.tracking_uri)  # first: it sets MLflow's environment defaults before the import
        from mlflow.exceptions import MlflowException

        for name in (POLICY, REWARD_MODEL):
            try:  # e.g. a workspace whose only iteration failed before a reward model was registered
                aliases = client.get_registered_model(name).aliases
            except MlflowException:
                lines.append(f"{name}: not registered")
                continue
            lines.append(f"{name}: " + (", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())) or "no aliases"))
    except Exception as err:  # status reports what it can, never a traceback
        lines.append(f"registry: unavailable ({type(err).__name__}: {str(err)[:200]})")
    return lines


def shown_ledgers(ws) -> tuple[list[dict], list[str]]:
    """The ledgers as the iteration table can show them (an unreadable or incomplete one as its bare status),
    and notes on those that could not be read in full."""
    from flows.common import _iteration_row, _start_row, iteration_records

    docs, notes = [], []
    for p in sorted((ws.root / "ledger").glob("iter-*.json")):
        try:
            d = json.loads(p.read_text())
            int(d["iteration"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            notes.append(f"{p.name}: unreadable ledger ({type(err).__name__})")
            continue
        try:
            _iteration_row(iteration_records([d])[0])
            _start_row([d])
            if d.get("status") == "finished":
                _ = d["decision"]["reasons"]  # shown below the table
        except (KeyError, TypeError, ValueError, AttributeError):
            notes.append(f"{p.name}: incomplete {d.get('status', '?')} ledger")
            d = {"iteration": d["iteration"], "status": f"{d.get('status', '?')}?", "timings": {}}
        docs.append(d)
    return docs, notes
