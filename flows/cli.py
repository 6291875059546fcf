"""`alignloop` command line (typer + rich). The commands live in flows/cmd_*.py (what they share in
flows/common.py); this module only builds the app. Heavy libraries are imported inside commands, so `--help` and
`status` start fast.

    alignloop run --config configs/tiny.yaml --iterations 3
    alignloop status
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from flows import cmd_labels, cmd_loop, cmd_prompts, cmd_registry, cmd_service, cmd_workspace

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Continual online RLHF as a gated pipeline.")


@app.callback()
def _load_env_file(env_file: Path = typer.Option(
        Path(".env"), "--env-file", envvar="ALIGNLOOP_ENV_FILE",
        help="Read secrets and settings (S3 keys, judge API keys, MLFLOW_TRACKING_URI, ...) from this file into the "
             "environment when it exists; variables already set win. Keep it git-ignored.")) -> None:
    if env_file.is_file():
        from dotenv import load_dotenv

        load_dotenv(env_file, override=False)


app.command("run")(cmd_loop.run)
app.command("status")(cmd_loop.status)
app.command("verify")(cmd_workspace.verify)
app.command("repair")(cmd_workspace.repair)
app.command("gc")(cmd_workspace.gc)

app.command("promote")(cmd_registry.promote)
app.command("rollback")(cmd_registry.rollback)
app.command("lineage")(cmd_registry.lineage)
app.command("report")(cmd_registry.report)

labels = typer.Typer(no_args_is_help=True, help="Human review queue: export for review, import completed labels.")
app.add_typer(labels, name="labels")
labels.command("import")(cmd_labels.import_)
labels.command("queue")(cmd_labels.queue)
labels.command("export")(cmd_labels.export)

prompts = typer.Typer(no_args_is_help=True, help="The prompt pool: import your own prompts.")
app.add_typer(prompts, name="prompts")
prompts.command("import")(cmd_prompts.import_)

stack = typer.Typer(no_args_is_help=True, help="The local service stack (loopback only).")
app.add_typer(stack, name="stack")
stack.command("up")(cmd_service.stack_up)
stack.command("down")(cmd_service.stack_down)
stack.command("status")(cmd_service.stack_status)
app.command("deploy")(cmd_service.deploy)


def main() -> None:  # pragma: no cover
    app(prog_name="alignloop")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
