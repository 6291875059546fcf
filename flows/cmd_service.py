"""Service commands: schedule the loop on a Prefect server, and run the local team stack.

    alignloop stack up [--dir workspace/stack] [--no-auth]   # Prefect + MLflow(PostgreSQL, S3) + S3 on loopback
    set -a; . ./.env; . workspace/stack/stack.env; set +a
    alignloop deploy --config configs/tiny.yaml --workspace workspace --cron "0 2 * * *"
    prefect worker start --pool alignloop
    alignloop stack status | down
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

console = Console()
StackDir = typer.Option(Path("workspace/stack"), "--dir", help="Where the stack keeps pids, logs and data.")


def stack_up(dir: Path = StackDir, env_file: Path = typer.Option(Path(".env"), help="Secrets file."),
             auth: bool = typer.Option(True, help="MLflow basic auth and a Prefect API auth string, credentials "
                                                  "generated into the secrets file (--no-auth: open servers).")):
    """Start Prefect server, PostgreSQL, MLflow server and the S3 endpoint; print how to use them."""
    from infra import stack

    settings = stack.up(dir, env_file, auth)
    for k, v in settings.items():
        console.print(f"{k}={v}")
    console.print(f"[dim]written to {dir.resolve() / 'stack.env'}; secrets stay in {env_file}"
                  f"{' (MLflow and Prefect require the credentials there)' if auth else ' (no server auth)'}[/]")


def stack_down(dir: Path = StackDir):
    """Stop, by pid, everything `stack up` started."""
    from infra import stack

    stopped = stack.down(dir.resolve())
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


def stack_status(dir: Path = StackDir):
    """Which stack services are running (pid), and the settings to use them."""
    from infra import stack

    alive = stack.running(dir.resolve())
    if not alive:
        console.print(f"no stack running in {dir}")
        raise typer.Exit(1)
    for name, pid in alive.items():
        console.print(f"{name}: pid {pid}")
    env = dir / "stack.env"
    if env.exists():
        console.print(env.read_text().rstrip())


def deploy(config: list[Path] = typer.Option([Path("configs/tiny.yaml")], "--config", "-c",
                                            help="Loop config YAML (repeat to layer)."),
           set_: list[str] = typer.Option([], "--set", help="Config override, as for `run`."),
           workspace: Path = typer.Option(Path("workspace"), "--workspace", "-w", envvar="ALIGNLOOP_WORKSPACE"),
           name: str = typer.Option("nightly", help="Deployment name."),
           cron: str = typer.Option("0 2 * * *", help="Cron schedule (default: nightly at 02:00)."),
           timezone: str = typer.Option("UTC"),
           pool: str = typer.Option("alignloop", "--pool", help="Process work pool (created if missing)."),
           on_collision: str = typer.Option("enqueue", help="A trigger while an iteration runs: enqueue | "
                                                            "cancel_new."),
           paused: bool = typer.Option(False, help="Create the schedule paused.")):
    """Create/update a Prefect deployment running one iteration per schedule tick (needs PREFECT_API_URL)."""
    from pydantic import ValidationError

    from components.config import ConfigError, load_config
    from flows.deploy import ScheduleConfig

    try:
        load_config(config, set_)  # bad config fails now, not at 02:00
        sched = ScheduleConfig(name=name, cron=cron, timezone=timezone, work_pool=pool,
                               on_collision=on_collision, paused=paused)
    except (ConfigError, ValidationError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    if not os.environ.get("PREFECT_API_URL"):
        console.print("[red]error:[/] PREFECT_API_URL is not set: deployments need a Prefect server "
                      "(`alignloop stack up`, then source its stack.env)")
        raise typer.Exit(2)
    from flows.deploy import deploy as make

    ws = workspace.expanduser().resolve()
    dep = make(config, ws, list(set_), sched)
    console.print(f"deployment alignloop-scheduled/{sched.name} ({dep}): cron '{sched.cron}' {sched.timezone}, "
                  f"pool {sched.work_pool}, one iteration at a time ({sched.on_collision}), workspace {ws}")
    console.print(f"start a worker: prefect worker start --pool {sched.work_pool}")
