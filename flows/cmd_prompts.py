"""Prompt pool commands: bring your own prompts in (components/prompt_import.py has the formats and rules).

    alignloop prompts import prompts.jsonl --out data/prompts/pool-mine.parquet --eval-fraction 0.1 --seed 0
    alignloop prompts import new-today.jsonl --out data/prompts/pool-mine.parquet --append

Inside a DVC repository each write is `dvc add`ed, so every import and append is a new DVC-tracked version of the
pool (POOL.dvc updated; commit it with git); the next iteration samples from the file as it is then, and its
lineage (`alignloop lineage`) names that version's md5 and row count.
"""

from __future__ import annotations

from pathlib import Path

import typer

from flows.common import console, fail


def _dvc_root(path: Path) -> Path | None:
    """The DVC repository holding `path` (the nearest parent with a .dvc directory), or None."""
    for parent in path.absolute().parents:
        if (parent / ".dvc").is_dir():
            return parent
    return None


def _check_dvc_trackable(root: Path, out: Path) -> None:
    """Refuse, before anything is written, a POOL that `dvc add` cannot track: a dvc.yaml pipeline output."""
    from dvc.exceptions import OutputNotFoundError
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        try:
            outs = repo.find_outs_by_path(str(out.absolute()))
        except OutputNotFoundError:
            return
    stage = next((o.stage for o in outs if getattr(o.stage, "cmd", None)), None)
    if stage is not None:
        fail(f"{out}: an output of the DVC pipeline stage {stage.addressing!r} (dvc.yaml), which `dvc add` cannot "
             "track: import into another file (e.g. data/prompts/pool-mine.parquet) and set prompt_pool to it")


def _dvc_add(root: Path, out: Path) -> Path:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.scm_context.quiet = True  # our own hint below (autostage, if configured, still stages)
        repo.add([str(out.absolute())])
    return out.with_name(out.name + ".dvc")


def import_(src: Path = typer.Argument(..., help="JSONL, JSON, CSV or Parquet file, or a datasets save_to_disk "
                                                 "directory, with a 'prompt' or 'messages' field per row."),
            out: Path = typer.Option(..., "--out", "-o", help="The pool Parquet file to write (or extend)."),
            eval_fraction: float = typer.Option(0.1, "--eval-fraction", help="Share of rows without a 'split' "
                                                "that go to the held-out eval split (by a seeded hash of the "
                                                "prompt id: stable across imports and appends)."),
            seed: int = typer.Option(0, "--seed", help="Seed of the split assignment."),
            append: bool = typer.Option(False, "--append", help="Add the new prompts to the existing POOL (its "
                                        "rows, order and splits unchanged; prompts it holds are skipped)."),
            overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing POOL."),
            source: str | None = typer.Option(None, "--source", help="'source' of rows without one (default: "
                                              "SRC's file name without extension).")):
    """Validate SRC in full and write its prompts as a prompt pool (nothing is written on any bad row)."""
    from components.prompt_import import import_prompts

    if out.exists() and not (append or overwrite):
        fail(f"{out}: already exists: pass --append to add the new prompts to it, or --overwrite to replace it")
    if out.exists() and out.is_dir():
        fail(f"{out}: a directory; --out names the pool's Parquet file")
    root = _dvc_root(out)
    if root is not None:
        _check_dvc_trackable(root, out)
    try:
        res = import_prompts(src, out, eval_fraction=eval_fraction, seed=seed, append=append, source=source)
    except ValueError as err:
        fail(str(err))
    _summary(res, append)
    if root is not None:
        dvc_file = _dvc_add(root, out)
        console.print(f"dvc add: {dvc_file} records md5 {res.md5}; version it with `git add {dvc_file} "
                      f"{out.parent / '.gitignore'} && git commit` (and `dvc push`)", soft_wrap=True)


def _summary(res, append: bool) -> None:
    from rich.table import Table

    table = Table(title=f"prompt pool {res.out}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    if append:
        table.add_row("rows already in the pool", str(res.existing))
    for what, value in (("rows read", res.read), ("prompts added", res.added),
                        ("duplicates skipped", res.duplicates), ("train rows", res.splits.get("train", 0)),
                        ("eval rows", res.splits.get("eval", 0)), ("md5", res.md5)):
        table.add_row(what, str(value))
    console.print(table)
    if res.ignored_fields:
        console.print(f"ignored field(s): {', '.join(res.ignored_fields)}", soft_wrap=True)
    missing = [s for s in ("train", "eval") if not res.splits.get(s)]
    if missing:
        console.print(f"[yellow]warning:[/] the pool has no {' or '.join(missing)} rows; a run needs both",
                      soft_wrap=True)
