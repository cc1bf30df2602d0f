"""The ``edgewire`` command."""

from __future__ import annotations

import logging
import sys

import typer
from rich.markup import escape

from edgewire import __version__
from edgewire.cli.agent import agent_command
from edgewire.cli.bench import bench_command
from edgewire.cli.common import err_console
from edgewire.cli.data import data_app
from edgewire.cli.demo import demo_command
from edgewire.cli.deploy import delete_command, deploy_command, models_command
from edgewire.cli.export import export_command
from edgewire.cli.infer import infer_command
from edgewire.cli.jobs import jobs_command
from edgewire.cli.pipeline import pipeline_command
from edgewire.cli.project import project_app
from edgewire.cli.run import run_command, runs_command
from edgewire.cli.split import split_app
from edgewire.cli.train import train_app
from edgewire.errors import EXIT_CODES, EdgewireError, codes_by_exit_code


def exit_code_lines() -> list[str]:
    """One exit code a line, with the error codes that exit with it (the texts contain ";")."""
    codes = codes_by_exit_code()
    lines = ["Exit codes (and the error codes behind them):"]
    for exit_code, text in EXIT_CODES.items():
        names = ", ".join(codes.get(exit_code, []))
        lines.append(f"  {exit_code:>3}  {names + ': ' if names else ''}{text.rstrip('.')}")
    return lines


_EPILOG = "\n".join(exit_code_lines())


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"edgewire {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="edgewire",
    help="Machine learning at the edge: stream training, deploy and serve models over the network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    epilog=_EPILOG,
)
app.command("agent", help="Run the device agent (native port, HTTP, legacy ports).")(agent_command)
app.command("demo", help="The end-to-end demo on loopback.")(demo_command)
app.command("deploy", help="Upload a model (ONNX, TFLite) to agents and serve it.")(deploy_command)
app.command("models", help="List the models on an agent.")(models_command)
app.command("delete", help="Delete a model version, alias or model on an agent.")(delete_command)
app.command("jobs", help="List an agent's automation jobs (webhooks, polling), or show one.")(
    jobs_command
)
app.command("export", help="ONNX with scores and metadata; fp16 and int8 too, measured.")(
    export_command
)
app.command("infer", help="Run files through a model served by an agent.")(infer_command)
app.command(
    "pipeline", help="A workspace's steps in order: capture … run, skipping what is up to date."
)(pipeline_command)
app.command("run", help="Run a model on an agent's camera or video, driving pins.")(run_command)
app.command("runs", help="List an agent's live runs, or stop one.")(runs_command)
app.command("bench", help="Load an agent with many concurrent clients.")(bench_command)
app.add_typer(train_app, name="train", help="Train on a device over the network, or locally.")
app.add_typer(split_app, name="split", help="Cut a model into a device head and a server tail.")
app.add_typer(project_app, name="project", help="A workspace: classes, images, the split.")
app.add_typer(data_app, name="data", help="Write the bundled data sets as files (MNIST IDX).")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        expose_value=True,
        help="Print the version and exit.",
    ),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    try:
        app()
    except EdgewireError as exc:
        # The message is plain text ("[Errno 111] ..." must not be read as markup).
        err_console.print(
            f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True
        )
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
