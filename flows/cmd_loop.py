"""Loop commands: run iterations, and show where the loop stands.

    alignloop run --config configs/tiny.yaml --iterations 3
    alignloop status
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import typer

from flows.common import WorkspaceOpt, console, fail, iteration_table, quiet_env, take_lock, workspace_dir


def run(config: list[Path] = typer.Option([Path("configs/tiny.yaml")], "--config", "-c",
                                         help="Loop config YAML; repeat to layer an experiment file on top."),
        iterations: int = typer.Option(1, "--iterations", "-n", min=1, help="Iterations to run now."),
        set_: list[str] = typer.Option([], "--set", help="Override a config key: --set train_policy.beta=0.2"),
        workspace: Path = WorkspaceOpt, verbose: bool = typer.Option(False, "--verbose", help="Prefect logs.")):
    """Run iterations of the loop (resuming an unfinished one first)."""
    from components.config import ConfigError, load_config
    from components.env import offline_for

    ws = workspace_dir(workspace)
    try:  # bad input stops here, before the workspace is touched (the config module imports nothing heavy)
        cfg = load_config(config, set_)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    quiet_env(ws, offline=offline_for(cfg))  # environment only, before prefect/transformers are imported
    if verbose:
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
        os.environ["TRANSFORMERS_VERBOSITY"] = "warning"
    else:
        warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from flows.iteration import validate_inputs

        validate_inputs(cfg, " + ".join(map(str, config)))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from components import interrupts
    from components.artifacts import CorruptArtifact
    from components.record import WorkspaceRecordError
    from components.workspace import Workspace
    from flows import iteration as it

    lock = take_lock(ws)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        current: dict[str, int] = {}

        def listen(stage: str, event: str, seconds: float) -> None:
            if event == "start":
                current[stage] = bar.add_task(f"{stage}", total=1)
            else:
                bar.update(current[stage], completed=1, description=f"{stage} [dim]{seconds:.1f}s[/]")

        try:
            with interrupts.handling(), it.in_process_run():
                it.continual_flow([str(c) for c in config], list(set_), str(ws), iterations, progress=listen)
        except (WorkspaceRecordError, CorruptArtifact) as err:  # what the workspace lost: say what and how to fix
            bar.stop()
            fail(str(err))
        except BaseException as err:
            if not interrupts.caused_by_interrupt(err):
                raise
            _interrupted(bar, ws, err)
        finally:
            lock.close()
    console.print(iteration_table(Workspace.at(ws).ledgers()))


def _interrupted(bar, ws: Path, err: BaseException) -> None:
    """Ctrl-C / SIGTERM: the iteration is left resumable; end the stage's child processes and exit 128+signal."""
    from components import interrupts
    from components.workspace import Workspace

    bar.stop()
    interrupts.kill_tree()
    open_iter = [d["iteration"] for d in Workspace.at(ws).ledgers() if d.get("status") == "running"]
    where = f"iteration {open_iter[0]} is" if open_iter else "the loop is"
    console.print(f"[yellow]interrupted[/]: {where} resumable: `alignloop run` again resumes it")
    raise typer.Exit(interrupts.exit_code(err))


def status(workspace: Path = WorkspaceOpt,
           as_json: bool = typer.Option(False, "--json", help="Print the iteration table as JSON (one object per "
                                        "iteration: decision, versions, candidate/champion numbers, oracle calls)")):
    """Iterations so far (gate outcome; candidate, head and champion versions; candidate vs champion numbers;
    oracle calls), the registry's aliases, and the last gate decisions."""
    from components.gating import outcome_of
    from components.workspace import Workspace
    from flows.cmd_workspace import registry_lines, shown_ledgers
    from flows.common import iteration_records

    ws = Workspace.at(workspace_dir(workspace))
    ledgers, notes = shown_ledgers(ws)
    if as_json:
        import json

        print(json.dumps({"workspace": str(ws.root), "iterations": iteration_records(ledgers), "warnings": notes},
                         indent=1, default=str))
        raise typer.Exit(0)
    if not ledgers and not notes:
        console.print(f"no iterations in {ws.root}")
        raise typer.Exit(0)
    quiet_env(ws.root)
    for line in registry_lines(ws):
        console.print(line, soft_wrap=True)
    console.print(iteration_table(ledgers))
    for d in ledgers[-3:]:
        if d.get("status") == "finished":
            reasons = d["decision"]["reasons"]
            console.print(f"iter {d['iteration']}: {outcome_of(d['decision'])}"
                          + (f" — {'; '.join(reasons)}" if reasons else ""))
    from components import record

    try:
        problems = record.missing(ws)
    except Exception as err:  # status reports what it can, never a traceback
        problems = [f"could not check the workspace's record ({type(err).__name__}: {str(err)[:200]})"]
    for note in notes + problems:
        console.print(f"[yellow]warning:[/] {note}", soft_wrap=True)
    if problems:
        console.print("restore them from backup, or run `alignloop repair` (re-registers from the ledger and store)")
