"""`alignloop` command line (typer + rich). Heavy libraries are imported inside commands, so `--help` and
`status` start fast.

    alignloop run --config configs/tiny.yaml --iterations 3
    alignloop status
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Continual online RLHF as a gated pipeline.")
console = Console(width=None if sys.stdout.isatty() else 190)  # logs/pipes: don't squash the table to 80

WorkspaceOpt = typer.Option(None, "--workspace", "-w", envvar="ALIGNLOOP_WORKSPACE",
                            help="Where everything a run writes goes (default ./workspace).")


@app.callback()
def _load_env_file(env_file: Path = typer.Option(
        Path(".env"), "--env-file", envvar="ALIGNLOOP_ENV_FILE",
        help="Read secrets and settings (S3 keys, judge API keys, MLFLOW_TRACKING_URI, ...) from this file into the "
             "environment when it exists; variables already set win. Keep it git-ignored.")) -> None:
    if env_file.is_file():
        from dotenv import load_dotenv

        load_dotenv(env_file, override=False)


def quiet_env(workspace: Path) -> None:
    """Offline, telemetry off, CPU threads that don't thrash; Prefect results persisted in the workspace."""
    defaults = {
        "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", "TOKENIZERS_PARALLELISM": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PREFECT_LOGGING_LEVEL": "WARNING",
        # the rich progress display replaces library progress bars and load reports
        "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "MLFLOW_LOGGING_LEVEL": "WARNING",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        # torch's default of one thread per core was ~10x slower for tiny models on 2-core VMs
        "OMP_NUM_THREADS": "1",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    os.environ["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] = "true"
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(workspace / "prefect")


def _workspace(path: Path | None) -> Path:
    return (path or Path("workspace")).expanduser().resolve()


def iteration_table(ledgers: list[dict]) -> Table:
    table = Table(title="alignloop iterations (champion after the gate; win rates: candidate vs champion, 95% CI)")
    for col in ("iter", "gold", "proxy", "KL to ref", "mean len", "win rate proxy", "win rate held-out", "gate",
                "pairs kept rm/judge/gold/human", "judge calls", "seconds"):
        table.add_column(col, justify="right")
    first = next((d for d in ledgers if d.get("status") == "finished"), None)
    if first:  # the policy the loop started from, as evaluated in the first iteration
        start = first["report"]["champion"]
        gold = "-" if start["gold_reward"] is None else f"{start['gold_reward']:+.3f}"
        table.add_row("start", gold, f"{start['proxy_reward']:+.3f}", f"{start['kl']:.2f}",
                      f"{start['mean_tokens']:.1f}", "-", "-", "-", "-", "-", "-")
    for d in ledgers:
        if d.get("status") != "finished":
            table.add_row(str(d["iteration"]), *["-"] * 6, d.get("status", "?"), "-", "-", "-")
            continue
        rep, promoted = d["report"], d["decision"]["promote"]
        mix = d["outputs"]["preferences"].get("meta", {}).get("label", {})
        champ = rep["candidate"] if promoted else rep["champion"]

        def wr(key, rep=rep):
            w = rep.get(key)
            return f"{w['value']:.2f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}]" if w else "-"

        gold = "-" if champ["gold_reward"] is None else f"{champ['gold_reward']:+.3f}"
        table.add_row(str(d["iteration"]), gold, f"{champ['proxy_reward']:+.3f}", f"{champ['kl']:.2f}",
                      f"{champ['mean_tokens']:.1f}", wr("proxy_win_rate"), wr("heldout_win_rate"),
                      "[green]promote[/]" if promoted else "[red]reject[/]",
                      "/".join(str(int(mix.get(f"kept/{s}", 0))) for s in ("rm_ensemble", "judge", "gold", "human")),
                      str(int(mix.get("judge_calls", 0))),
                      f"{sum(d['timings'].values()):.0f}")
    return table


@app.command()
def run(config: list[Path] = typer.Option([Path("configs/tiny.yaml")], "--config", "-c",
                                         help="Loop config YAML; repeat to layer an experiment file on top."),
        iterations: int = typer.Option(1, "--iterations", "-n", min=1, help="Iterations to run now."),
        set_: list[str] = typer.Option([], "--set", help="Override a config key: --set train_policy.beta=0.2"),
        workspace: Path = WorkspaceOpt, verbose: bool = typer.Option(False, "--verbose", help="Prefect logs.")):
    """Run iterations of the loop (resuming an unfinished one first)."""
    from components.config import ConfigError, load_config

    ws = _workspace(workspace)
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

        it._listeners.append(listen)
        try:
            with it.in_process_run():
                it.continual_flow([str(c) for c in config], list(set_), str(ws), iterations)
        finally:
            it._listeners.remove(listen)
            lock.close()
    console.print(iteration_table(Workspace.at(ws).ledgers()))


@app.command()
def status(workspace: Path = WorkspaceOpt):
    """Iterations so far, the champion version, and the last gate decisions."""
    from components.workspace import Workspace

    ws = Workspace.at(_workspace(workspace))
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


from flows import cmd_registry  # noqa: E402

cmd_registry.register(app)
from flows import cmd_labels  # noqa: E402

cmd_labels.register(app)
from flows import cmd_service  # noqa: E402

cmd_service.register(app)


def main() -> None:  # pragma: no cover
    app(prog_name="alignloop")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
