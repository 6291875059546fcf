"""What the `alignloop` commands share (flows/cli.py registers them; flows/cmd_*.py define them): the console, the
--workspace option, the process environment of a run, and the iteration table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from components.env import apply_defaults

console = Console(width=None if sys.stdout.isatty() else 190)  # logs/pipes: don't squash the table to 80

WorkspaceOpt = typer.Option(None, "--workspace", "-w", envvar="ALIGNLOOP_WORKSPACE",
                            help="Where everything a run writes goes (default ./workspace).")


def quiet_env(workspace: Path, offline: bool = False) -> None:
    """Telemetry off, quiet libraries (components.env), + offline with one CPU thread when `offline` (the embedded
    default only: `components.env.offline_for(cfg)`); Prefect results persisted in the workspace."""
    apply_defaults(offline=offline, quiet=True)
    os.environ["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] = "true"
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(workspace / "prefect")


def workspace_dir(path: Path | None) -> Path:
    return (path or Path("workspace")).expanduser().resolve()


def _start_row(ledgers: list[dict]) -> list[str] | None:
    """The policy the loop started from, as evaluated in the first finished iteration."""
    first = next((d for d in ledgers if d.get("status") == "finished"), None)
    if not first:
        return None
    start = first["report"]["champion"]
    gold = "-" if start["gold_reward"] is None else f"{start['gold_reward']:+.3f}"
    return ["start", gold, f"{start['proxy_reward']:+.3f}", f"{start['kl']:.2f}", f"{start['mean_tokens']:.1f}",
            "-", "-", "-", "-", "-", "-"]


def _iteration_row(d: dict) -> list[str]:
    if d.get("status") != "finished":
        return [str(d["iteration"]), *["-"] * 6, d.get("status", "?"), "-", "-", "-"]
    rep, promoted = d["report"], d["decision"]["promote"]
    mix = d["outputs"]["preferences"].get("meta", {}).get("label", {})
    champ = rep["candidate"] if promoted else rep["champion"]

    def wr(key):
        w = rep.get(key)
        return f"{w['value']:.2f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}]" if w else "-"

    gold = "-" if champ["gold_reward"] is None else f"{champ['gold_reward']:+.3f}"
    return [str(d["iteration"]), gold, f"{champ['proxy_reward']:+.3f}", f"{champ['kl']:.2f}",
            f"{champ['mean_tokens']:.1f}", wr("proxy_win_rate"), wr("heldout_win_rate"),
            "[green]promote[/]" if promoted else "[red]reject[/]",
            "/".join(str(int(mix.get(f"label/kept/{s}", 0))) for s in ("rm_ensemble", "judge", "gold", "human")),
            str(int(mix.get("label/judge_calls", 0))),
            f"{sum(d['timings'].values()):.0f}"]


def iteration_table(ledgers: list[dict]) -> Table:
    table = Table(title="alignloop iterations (champion after the gate; win rates: candidate vs champion, 95% CI)")
    for col in ("iter", "gold", "proxy", "KL to ref", "mean len", "win rate proxy", "win rate held-out", "gate",
                "pairs kept rm/judge/gold/human", "judge calls", "seconds"):
        table.add_column(col, justify="right")
    start = _start_row(ledgers)
    if start:
        table.add_row(*start)
    for d in ledgers:
        table.add_row(*_iteration_row(d))
    return table


def take_lock(root: Path):
    """The workspace lock (components.workspace.Workspace.lock) for a command that writes the workspace, with the
    user's mistakes as one-line errors (exit 2): a path that is a file, a directory this user cannot write, a
    workspace another alignloop process holds. Taking it also removes a killed command's staging leftovers."""
    from components.workspace import Workspace

    try:
        return Workspace.at(root).lock()
    except (FileExistsError, NotADirectoryError):
        fail(f"{root}: not a directory (a file is in the way): pass --workspace DIR")
    except PermissionError:
        fail(f"{root}: not writable by this user: fix its permissions or pass another --workspace")
    except RuntimeError as err:  # held by another process
        fail(f"{err}: wait for it to finish (or stop it) and try again")


def fail(message: str, code: int = 2):
    """`error: <what>: <what to do>` and exit `code` (no traceback: a user error)."""
    from rich.markup import escape

    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)
