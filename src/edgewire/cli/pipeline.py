"""``edgewire pipeline``: capture → split → train → export → deploy → run, resumable.

Each step runs as the ``edgewire`` command a user would type (shown before it
runs), in a child process, so its progress bars, errors and exit codes are those
of the command itself. See ``edgewire.project.pipeline`` for the settings.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import typer
from rich.table import Table

from edgewire.cli.common import console, err_console
from edgewire.errors import ConfigError


def pipeline_command(
    start: str | None = typer.Option(None, "--from", help="Start at this step (it runs)."),
    stop: str | None = typer.Option(None, "--to", help="Stop after this step."),
    force: bool = typer.Option(False, "--force", help="Run every step, up to date or not."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would run and what is up to date; run nothing."
    ),
    workspace: Path = typer.Option(Path("."), "--workspace", "-w", help="The workspace folder."),
) -> None:
    """Run the workspace's steps in order, skipping those whose outputs are up to date."""
    from edgewire.project.pipeline import State, plan, step_range
    from edgewire.project.workspace import Workspace

    names = step_range(start, stop)
    ws = Workspace.open(workspace)
    state = State.load(ws)
    table = Table(title=f"pipeline of {ws.name}", show_header=True)
    for column in ("step", "what happened"):
        table.add_column(column)
    for name in names:
        # Planned again before each step: its inputs are what the steps before it made.
        step = next(s for s in plan(ws) if s.name == name)
        if step.skip_reason is not None:
            table.add_row(name, f"nothing to do: {step.skip_reason}")
            continue
        if not (force or name == start) and state.fresh(step):
            table.add_row(name, "up to date")
            continue
        if dry_run:
            table.add_row(name, "would run: " + "; ".join(_shown(c) for c in step.commands))
            continue
        for command in step.commands:
            console.rule(f"[bold]{name}[/]: {_shown(command)}", align="left")
            _run(name, command)
        state.record(step)
        table.add_row(name, "done")
    console.print(table)


def _stop(child: subprocess.Popen[bytes]) -> None:
    """A Ctrl-C at the terminal reached the child too: give it time to clean up. A
    SIGINT sent to the pipeline alone did not: pass it on. Then, if need be, kill it."""
    for signal_to_send, wait in ((None, 5.0), (signal.SIGINT, 30.0), (signal.SIGKILL, 10.0)):
        if signal_to_send is not None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal_to_send)
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _shown(command: list[str]) -> str:
    return "edgewire " + shlex.join(command)


def _run(name: str, command: list[str]) -> None:
    argv = [sys.executable, "-m", "edgewire.cli", *command]
    try:
        child = subprocess.Popen(argv, env=os.environ.copy())
    except OSError as exc:
        raise ConfigError(f"cannot start the {name} step ({exc})") from None
    try:
        code = child.wait()
    except KeyboardInterrupt:
        _stop(child)
        err_console.print(
            f"interrupted in step {name}; `edgewire pipeline` starts again there "
            "(the steps before it are up to date)",
            highlight=False,
        )
        raise typer.Exit(130) from None
    if code != 0:
        # The command printed why; the pipeline exits with its code, so scripts see it.
        err_console.print(
            f"step {name} failed (exit {code}); fix what it printed above and run "
            f"`edgewire pipeline` again (it starts at {name})",
            highlight=False,
        )
        raise typer.Exit(code)
