"""Workspace integrity commands: check the artifact store byte by byte, and repair a workspace whose record
(mlflow.db, the data repo) no longer matches its ledgers.

    alignloop verify                 # every artifact's content hash; exit 1 if any is corrupt or missing
    alignloop verify --repair        # ... and replace bad copies from the S3 mirror or the DVC cache/remote
    alignloop repair                 # re-register MLflow versions and re-tag the data repo from ledger + store

Also what `alignloop status` needs to print on any workspace a run can leave (`registry_lines`, `shown_ledgers`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from flows.common import WorkspaceOpt, console, quiet_env, workspace_dir


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
    counts: dict[str, int] = {}
    for c in checked:
        counts[c.state] = counts.get(c.state, 0) + 1
        if c.state not in ("ok", "remote-only"):
            colour = "green" if c.state == "repaired" else "red"
            console.print(f"[{colour}]{c.state}[/] {c.ref.kind} {c.ref.sha256} {c.path}: {c.detail}",
                          soft_wrap=True)
    console.print(f"{len(checked)} artifacts: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
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
    from flows.common import _iteration_row, _start_row

    docs, notes = [], []
    for p in sorted((ws.root / "ledger").glob("iter-*.json")):
        try:
            d = json.loads(p.read_text())
            int(d["iteration"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            notes.append(f"{p.name}: unreadable ledger ({type(err).__name__})")
            continue
        try:
            _iteration_row(d)
            _start_row([d])
            if d.get("status") == "finished":
                _ = d["decision"]["reasons"]  # shown below the table
        except (KeyError, TypeError, ValueError, AttributeError):
            notes.append(f"{p.name}: incomplete {d.get('status', '?')} ledger")
            d = {"iteration": d["iteration"], "status": f"{d.get('status', '?')}?", "timings": {}}
        docs.append(d)
    return docs, notes
