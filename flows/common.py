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


MODEL_KEYS = ("gold_reward", "proxy_reward", "kl", "mean_tokens")


def iteration_records(ledgers: list[dict]) -> list[dict]:
    """One record per iteration (what `alignloop status --json` prints and the table shows): the gate's outcome,
    the candidate / head / champion versions after it, candidate and champion (the one it was compared with)
    held-out numbers, the win rates, the label mix, oracle calls (this iteration's labels, its gate, and the
    labels' running total), seconds."""
    from components.gating import outcome_of

    out, total = [], 0
    for d in ledgers:
        rec = {"iteration": d["iteration"], "status": d.get("status", "?")}
        if d.get("status") == "finished":
            dec, rep = d["decision"], d["report"]
            mix = d["outputs"]["preferences"].get("meta", {}).get("label", {})
            calls = int(mix.get("label/oracle_calls", mix.get("label/judge_calls", 0)))
            total += calls
            rec.update(decision=outcome_of(dec), candidate_version=dec.get("version"),
                       head_version=dec.get("head_version"), champion_version=dec.get("champion_version"),
                       **{side: {k: rep[side].get(k) for k in MODEL_KEYS} for side in ("candidate", "champion")},
                       proxy_win_rate=rep.get("proxy_win_rate"), heldout_win_rate=rep.get("heldout_win_rate"),
                       label_mix={s: int(mix.get(f"label/kept/{s}", 0)) for s in
                                  ("rm_ensemble", "judge", "gold", "human", "imported")},
                       oracle_calls=calls, oracle_calls_total=total,
                       eval_oracle_calls=int(rep.get("metrics", {}).get("evaluate/oracle_calls", 0)),
                       seconds=round(sum(d.get("timings", {}).values()), 1))
        out.append(rec)
    return out


def _start_row(ledgers: list[dict]) -> list[str] | None:
    """The policy the loop started from, as evaluated (as champion) in the first finished iteration."""
    first = next((d for d in ledgers if d.get("status") == "finished"), None)
    if not first:
        return None
    s = first["report"]["champion"]
    gold = "-" if s["gold_reward"] is None else f"{s['gold_reward']:+.3f}"
    return ["start", "-", "-", f"- | {gold}", f"- | {s['proxy_reward']:+.3f}", f"{s['kl']:.2f}",
            f"- | {s['mean_tokens']:.1f}", "-", "-", "-", "-"]


GATE_STYLE = {"promote": "[green]promote[/]", "head": "[yellow]head[/]", "discard": "[red]discard[/]"}


def _iteration_row(rec: dict) -> list[str]:
    if rec["status"] != "finished":
        return [str(rec["iteration"]), rec["status"], *["-"] * 9]
    c, ch = rec["candidate"], rec["champion"]

    def wr(w):
        return f"{w['value']:.2f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}]" if w else "-"

    def gold(x):
        return "-" if x is None else f"{x:+.3f}"

    v = [f"v{rec[k]}" if rec.get(k) else "-" for k in ("candidate_version", "head_version", "champion_version")]
    mix = rec["label_mix"]
    return [str(rec["iteration"]), GATE_STYLE.get(rec["decision"], rec["decision"]), "/".join(v),
            f"{gold(c['gold_reward'])} | {gold(ch['gold_reward'])}",
            f"{c['proxy_reward']:+.3f} | {ch['proxy_reward']:+.3f}", f"{c['kl']:.2f}",
            f"{c['mean_tokens']:.1f} | {ch['mean_tokens']:.1f}", wr(rec["heldout_win_rate"] or rec["proxy_win_rate"]),
            "/".join(str(mix[s]) for s in ("rm_ensemble", "judge", "gold", "human")),
            f"{rec['oracle_calls']} / {rec['oracle_calls_total']}", f"{rec['seconds']:.0f}"]


def iteration_table(ledgers: list[dict]) -> Table:
    table = Table(title="alignloop iterations (candidate | the champion it was compared with; versions after the "
                        "gate; win rate: candidate vs champion, held-out signal (else proxy), 95% CI)")
    for col in ("iter", "gate", "cand/head/champ", "gold", "proxy", "KL to ref", "mean len", "win rate",
                "kept rm/judge/gold/human", "oracle calls iter/total", "seconds"):
        table.add_column(col, justify="right")
    start = _start_row(ledgers)
    if start:
        table.add_row(*start)
    for rec in iteration_records(ledgers):
        table.add_row(*_iteration_row(rec))
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
