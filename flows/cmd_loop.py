"""Loop commands: run iterations, and show where the loop stands.

    alignloop run --config configs/tiny.yaml --iterations 3
    alignloop status
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import typer

from flows.common import WorkspaceOpt, console, iteration_table, quiet_env, workspace_dir


def run(config: list[Path] = typer.Option([Path("configs/tiny.yaml")], "--config", "-c",
                                         help="Loop config YAML; repeat to layer an experiment file on top."),
        iterations: int = typer.Option(1, "--iterations", "-n", min=1, help="Iterations to run now."),
        set_: list[str] = typer.Option([], "--set", help="Override a config key: --set train_policy.beta=0.2"),
        workspace: Path = WorkspaceOpt, verbose: bool = typer.Option(False, "--verbose", help="Prefect logs.")):
    """Run iterations of the loop (resuming an unfinished one first)."""
    from components.config import ConfigError, load_config

    ws = workspace_dir(workspace)
    quiet_env(ws)  # environment only, before prefect/transformers are imported
    if verbose:
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
        os.environ["TRANSFORMERS_VERBOSITY"] = "warning"
    else:
        warnings.filterwarnings("ignore", category=FutureWarning)
    try:  # bad input stops here, before the workspace is touched
        cfg = load_config(config, set_)
        from flows.iteration import validate_inputs

        validate_inputs(cfg, " + ".join(map(str, config)))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from components.workspace import Workspace
    from flows import iteration as it

    lock = Workspace.at(ws).lock()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        current: dict[str, int] = {}

        def listen(stage: str, event: str, seconds: float) -> None:
            if event == "start":
                current[stage] = bar.add_task(f"{stage}", total=1)
            else:
                bar.update(current[stage], completed=1, description=f"{stage} [dim]{seconds:.1f}s[/]")

        try:
            with it.in_process_run():
                it.continual_flow([str(c) for c in config], list(set_), str(ws), iterations, progress=listen)
        finally:
            lock.close()
    console.print(iteration_table(Workspace.at(ws).ledgers()))


def status(workspace: Path = WorkspaceOpt):
    """Iterations so far, the champion version, and the last gate decisions."""
    from components.workspace import Workspace

    ws = Workspace.at(workspace_dir(workspace))
    ledgers = ws.ledgers()
    if not ledgers:
        console.print(f"no iterations in {ws.root}")
        raise typer.Exit(0)
    quiet_env(ws.root)
    from components.lineage import POLICY, REWARD_MODEL, _client

    client = _client(ws.tracking_uri)
    for name in (POLICY, REWARD_MODEL):
        aliases = client.get_registered_model(name).aliases
        console.print(f"{name}: " + ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())))
    console.print(iteration_table(ledgers))
    for d in ledgers[-3:]:
        if d.get("status") == "finished":
            reasons = d["decision"]["reasons"]
            console.print(f"iter {d['iteration']}: {'promote' if d['decision']['promote'] else 'reject'}"
                          + (f" — {'; '.join(reasons)}" if reasons else ""))
