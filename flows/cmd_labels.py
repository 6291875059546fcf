"""Label commands: bring completed human reviews back into the loop.

    alignloop labels import reviewed.jsonl --workspace workspace
    alignloop labels queue                      # what is waiting for review, what was imported

The review queue files and the import format are documented in components/human_queue.py. An import is
validated as a whole (unknown or already-imported pair ids, duplicates, bad choices stop it with FILE:LINE)
before anything is written; the next iteration's preferences include its labels with label_source = human.
"""

from __future__ import annotations

from pathlib import Path

import typer

from flows.common import WorkspaceOpt, console, workspace_dir


def import_(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Reviewed JSONL file."),
            workspace: Path = WorkspaceOpt):
    """Validate FILE against the exported queue and queue its labels for the next iteration."""
    from components.human_queue import import_labels
    from components.workspace import Workspace

    ws = Workspace.at(workspace_dir(workspace))
    try:
        ref, counts = import_labels(ws, file)
    except ValueError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    where = f" as preferences {ref.short}" if ref else ""
    console.print(f"imported {counts['labels']} human label(s){where}, skipped {counts['skipped']} unreviewed;"
                  " the next iteration adds them with label_source=human")


def queue(workspace: Path = WorkspaceOpt):
    """Pairs exported for review per iteration, and the imports not yet used by an iteration."""
    from components.human_queue import pending_imports
    from components.workspace import Workspace

    ws = Workspace.at(workspace_dir(workspace))
    files = sorted((ws.root / "human_queue").glob("iter-*.jsonl"))
    for f in files:
        console.print(f"{f}: {sum(1 for _ in f.open())} pair(s)")
    consumed = {h["sha256"] for d in ws.ledgers() for h in d.get("start", {}).get("human_labels", [])}
    pending = pending_imports(ws, consumed)
    console.print(f"{len(files)} queue file(s); {sum(r.meta.get('rows', 0) for r in pending)} imported label(s)"
                  " waiting for the next iteration")
