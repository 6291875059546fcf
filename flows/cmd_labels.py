"""Label commands: bring completed human reviews back into the loop.

    alignloop labels import reviewed.jsonl --workspace workspace
    alignloop labels queue                      # what is waiting for review, what was imported
    alignloop labels export --format label-studio --out review/   # tasks.json + labeling-config.xml
    alignloop labels import review/export.json  # Label Studio's JSON export works as well

The review queue files and the import format are documented in components/human_queue.py, the Label Studio
tasks and export in components/label_studio.py. An import is
validated as a whole (unknown or already-imported pair ids, duplicates, bad choices stop it with FILE:LINE)
before anything is written; the next iteration's preferences include its labels with label_source = human.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from flows.common import WorkspaceOpt, console, fail, take_lock, workspace_dir


def import_(file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                        help="Reviewed JSONL file, or Label Studio's JSON export."),
            workspace: Path = WorkspaceOpt):
    """Validate FILE against the exported queue and queue its labels for the next iteration."""
    from components.human_queue import import_labels
    from components.workspace import Workspace

    ws = Workspace.at(workspace_dir(workspace))
    with contextlib.closing(take_lock(ws.root)):  # not while a run reads the pending imports
        try:
            ref, counts = import_labels(ws, file)
        except ValueError as err:
            fail(str(err))
    where = f" as preferences {ref.short}" if ref else ""
    conflicting = f", {counts['conflicting']} where annotators disagreed" if counts.get("conflicting") else ""
    console.print(f"imported {counts['labels']} human label(s){where}, skipped {counts['skipped']} unreviewed"
                  f"{conflicting}; the next iteration adds them with label_source=human")


def export(fmt: str = typer.Option("label-studio", "--format", help="Only 'label-studio' for now."),
           out: Path = typer.Option(..., "--out", file_okay=False, help="Writes tasks.json, labeling-config.xml."),
           iteration: int | None = typer.Option(None, "--iteration", help="Only this iteration's queue."),
           include_imported: bool = typer.Option(False, "--include-imported", help="Also pairs already imported."),
           workspace: Path = WorkspaceOpt):
    """Write the review queue as Label Studio tasks (Pairwise template) plus its labeling config."""
    from components import label_studio
    from components.human_queue import imported_ids, queued_records
    from components.workspace import Workspace

    if fmt != "label-studio":
        console.print(f"[red]error:[/] unknown --format {fmt!r} (supported: label-studio)")
        raise typer.Exit(2)
    ws = Workspace.at(workspace_dir(workspace))
    done = set() if include_imported else set(imported_ids(ws))
    recs = [r for r in queued_records(ws).values()
            if r["id"] not in done and (iteration is None or r["iteration"] == iteration)]
    tasks, config = label_studio.write_export(recs, out)
    console.print(f"wrote {len(recs)} task(s) to {tasks} and the labeling config to {config}; in Label Studio: "
                  "create a project with that config, import the tasks, annotate, export as JSON, then "
                  "`alignloop labels import EXPORT.json`")


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
