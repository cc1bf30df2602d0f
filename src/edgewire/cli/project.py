"""``edgewire project init|import|split``: a workspace every later step reads."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edgewire.cli.common import console

project_app = typer.Typer(no_args_is_help=True)

WORKSPACE_HELP = "The workspace folder (default: the current one)."


@project_app.command("init", help="Make a workspace: edgewire.toml and a folder per class.")
def init_command(
    folder: Path = typer.Argument(..., help="Where the workspace goes (made if missing)."),
    classes: str = typer.Option(..., "--classes", help="Class names, comma-separated: a,b,c."),
) -> None:
    from edgewire.project.workspace import Workspace

    ws = Workspace.init(folder, classes.split(","))
    console.print(f"workspace {ws.name!r} with classes {', '.join(ws.classes)}", highlight=False)
    console.print(f"images go in: {ws.root / 'images'}", markup=False, highlight=False,
                  soft_wrap=True)  # fmt: skip


@project_app.command("import", help="Copy images (files or folders) into a class.")
def import_command(
    paths: list[Path] = typer.Argument(..., help="Image files or folders of them."),
    klass: str = typer.Option(..., "--class", help="The class they show."),
    workspace: Path = typer.Option(Path("."), "--workspace", "-w", help=WORKSPACE_HELP),
) -> None:
    from edgewire.project.workspace import Workspace, import_paths

    ws = Workspace.open(workspace)
    done = import_paths(ws, klass, paths)
    console.print(
        f"{klass}: {done.added} image(s) added, {done.duplicates} already there, "
        f"{len(done.unreadable)} unreadable skipped; {len(ws.images(klass))} in all",
        highlight=False,
    )
    for path in done.unreadable[:5]:
        console.print(f"  skipped: {path}", markup=False, highlight=False, soft_wrap=True)
    if len(done.unreadable) > 5:
        console.print(f"  ... and {len(done.unreadable) - 5} more", highlight=False)


@project_app.command("split", help="Stratified, reproducible train/ val/ test/ and labels.txt.")
def split_command(
    ratios: str = typer.Option("0.8,0.1,0.1", "--ratios", help="Train, val and test shares."),
    seed: int = typer.Option(0, "--seed", min=0),
    workspace: Path = typer.Option(Path("."), "--workspace", "-w", help=WORKSPACE_HELP),
) -> None:
    from edgewire.project.split import parse_ratios, split_workspace
    from edgewire.project.workspace import Workspace

    shares = parse_ratios(ratios)
    report = split_workspace(Workspace.open(workspace), ratios=shares, seed=seed)
    table = Table(title=f"split {ratios} (seed {seed})")
    for column in ("label", "class", "train", "val", "test"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for index, name in enumerate(report.labels):
        train, val, test = report.counts[name]
        table.add_row(str(index), name, str(train), str(val), str(test))
    console.print(table)
    console.print(f"data set: {report.folder} (train with --data {report.folder})",
                  markup=False, highlight=False, soft_wrap=True)  # fmt: skip


@project_app.command("capture", help="Frames from a camera, stream, video or folder into a class.")
def capture_command(
    klass: str = typer.Option(..., "--class", help="The class the frames show."),
    source: str = typer.Option(
        "0",
        "--source",
        help="0 or /dev/videoN (camera), an MJPEG/RTSP URL, a video file, a folder.",
    ),
    count: int | None = typer.Option(None, "--count", min=1, help="Stop after this many frames."),
    duration: float | None = typer.Option(
        None, "--duration", min=0.0, help="Stop after S seconds."
    ),
    every: float = typer.Option(0.0, "--every", min=0.0, help="At most one frame each S seconds."),
    size: str | None = typer.Option(None, "--size", help="Resize frames to WIDTHxHEIGHT."),
    workspace: Path = typer.Option(Path("."), "--workspace", "-w", help=WORKSPACE_HELP),
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from edgewire.project.capture import capture, parse_size
    from edgewire.project.workspace import Workspace

    wanted = parse_size(size)
    ws = Workspace.open(workspace)
    with Progress(
        f"[bold]{klass}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bars:
        task = bars.add_task("capture", total=count)
        done = capture(
            ws, klass, source, count=count, duration=duration, every=every, size=wanted,
            on_frame=lambda saved: bars.update(task, completed=saved),
        )  # fmt: skip
    console.print(
        f"{klass}: {done.saved} frame(s) saved ({done.duplicates} already there, "
        f"{done.seen} read); {len(ws.images(klass))} in all",
        highlight=False,
    )
