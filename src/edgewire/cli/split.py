"""``edgewire split build | profile | suggest``: split computing, from a trained model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from edgewire.cli.common import console
from edgewire.cli.split_run import split_run_command
from edgewire.errors import ConfigError
from edgewire.split.codec import DEFAULT_LEVELS

if TYPE_CHECKING:
    from edgewire.split.build import BuildResult
    from edgewire.split.profile import Candidate, Profile

split_app = typer.Typer(no_args_is_help=True)

SOURCE_HELP = "A checkpoint (.safetensors, from edgewire train run --checkpoint) or a run folder."
PROFILE_FILE = Path("profile.json")


def _bars(*extra: TextColumn) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        *extra,
        console=console,
        transient=False,
    )


def _path_line(label: str, path: Path | str, out: Console) -> None:
    # Never cut or folded: the path can be copied whole.
    out.print(f"{label}: {path}", markup=False, highlight=False, soft_wrap=True)


@split_app.command("build", help="Cut a trained model at --at, distill the student, export ONNX.")
def build_command(
    source: Path = typer.Argument(..., metavar="CHECKPOINT|RUN", help=SOURCE_HELP),
    at: str = typer.Option(..., "--at", help="The stage after which to cut (see split profile)."),
    channels: int = typer.Option(4, "--bottleneck-channels", help="Channels of the bottleneck."),
    quant: str = typer.Option("uint8", "--quant", help="Bottleneck quantisation (uint8 only)."),
    levels: int = typer.Option(
        DEFAULT_LEVELS, "--levels", min=2, max=256, help="Quantisation levels of each code."
    ),
    rate_weight: float | None = typer.Option(
        None, "--rate-weight", min=0.0, help="Weight of the rate penalty (smaller codes)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for head.onnx, tail.onnx, full.onnx."),
    data: str | None = typer.Option(
        None, help=r"Training data \[default: the data the checkpoint was trained on]."
    ),
    image_size: int | None = typer.Option(None, min=4, help="Resize folder images to this size."),
    limit: int | None = typer.Option(None, min=1, help="Use only this many samples."),
    val_fraction: float = typer.Option(0.1, min=0.01, max=0.9, help="Held-out share."),
    head_epochs: int | None = typer.Option(None, min=0, help="Epochs of head distillation."),
    kd_epochs: int | None = typer.Option(None, min=0, help="Epochs of KD fine-tuning."),
    batch_size: int | None = typer.Option(None, min=1),
    lr: float | None = typer.Option(None, min=0.0),
    seed: int = typer.Option(0),
) -> None:
    from edgewire.split.build import BuildOptions, plan_build, run_build
    from edgewire.split.distill import DistillPlan

    plan = DistillPlan(seed=seed)
    plan = replace(
        plan,
        head_epochs=plan.head_epochs if head_epochs is None else head_epochs,
        kd_epochs=plan.kd_epochs if kd_epochs is None else kd_epochs,
        batch_size=plan.batch_size if batch_size is None else batch_size,
        lr=plan.lr if lr is None else lr,
        rate_weight=plan.rate_weight if rate_weight is None else rate_weight,
    )
    options = BuildOptions(
        at=at, channels=channels, levels=levels, quant=quant, data=data, image_size=image_size, limit=limit,
        val_fraction=val_fraction, seed=seed, plan=plan,
    )  # fmt: skip
    job = plan_build(source, out, options)
    steps = job.steps
    with _bars(TextColumn("loss {task.fields[loss]}")) as bars:
        tasks = {
            "head": bars.add_task("head distillation", total=steps["head"], loss="-"),
            "kd": bars.add_task("KD fine-tuning", total=steps["kd"], loss="-"),
        }

        def progress(stage: str, step: int, loss: float) -> None:
            bars.update(tasks[stage], completed=step, loss=f"{loss:.4f}")

        result = run_build(job, progress=progress)
    print_build(result)


def print_build(result: BuildResult, out: Console | None = None) -> None:
    out = out or console
    s = result.summary
    table = Table(title=f"split at {s['at']}", show_header=False)
    table.add_row("teacher accuracy (held-out)", f"{100 * s['teacher_acc']:.1f}%")
    table.add_row("student accuracy (held-out)", f"{100 * s['student_acc']:.1f}%")
    table.add_row("bottleneck", f"{'×'.join(map(str, s['bottleneck_shape']))} uint8")
    sizes = s["bytes_per_sample"]
    table.add_row("bytes per sample: input", f"{sizes['input']:,}")
    for coder in ("raw", "zstd", "rans"):
        table.add_row(f"bytes per sample: {coder}", f"{sizes[coder]:,.1f}")
    out.print(table)
    for label, path in (("head", result.head), ("tail", result.tail), ("full model", result.full),
                        ("summary", result.summary_path)):  # fmt: skip
        _path_line(label, path, out)


@split_app.command(
    "profile", help="Measure each split point: head time, bytes crossing, tail time."
)
def profile_command(
    source: Path = typer.Argument(..., metavar="CHECKPOINT|RUN", help=SOURCE_HELP),
    out: Path = typer.Option(PROFILE_FILE, "--out", help="Where the profile (JSON) goes."),
    channels: int = typer.Option(4, "--bottleneck-channels", help="Channels of the bottleneck."),
    at: list[str] | None = typer.Option(
        None, "--at", help=r"Only this split point (repeat for more) \[default: all]."
    ),
    repeats: int = typer.Option(50, min=1, help="Timed runs of each model (the median counts)."),
    threads: int = typer.Option(1, min=1, help="ONNX Runtime intra-op threads."),
) -> None:
    from edgewire.split.build import input_shape, load_teacher
    from edgewire.split.profile import check_points, profile

    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a folder; give a file name")
    trainer, _, _ = load_teacher(source)
    points = check_points(trainer.model, input_shape(trainer), at or None, channels=channels)
    with _bars() as bars:
        task = bars.add_task("profiling", total=len(points) + 1)  # the cuts, then the whole model

        def progress(name: str) -> None:
            bars.update(task, advance=1, description=f"profiled {name}")

        result = profile(
            trainer.model, input_shape(trainer), channels=channels, points=points,
            repeats=repeats, threads=threads, model=trainer.spec.model, progress=progress,
        )  # fmt: skip
    result.save(out)
    print_profile(result)
    _path_line("profile", out, console)


def print_profile(result: Profile, out: Console | None = None) -> None:
    out = out or console
    table = Table(title=f"{result.model} {'×'.join(map(str, result.input_shape))}, batch 1, "
                        f"{result.threads} thread(s), median of {result.repeats}")  # fmt: skip
    for name in ("candidate", "head ms", "bytes up", "bytes down", "tail ms", "bottleneck"):
        table.add_column(name, justify="left" if name in ("candidate", "bottleneck") else "right")
    for c in result.candidates:
        shape = "×".join(map(str, c.bottleneck_shape)) if c.bottleneck_shape else ""
        table.add_row(c.name, f"{c.head_ms:.3f}", f"{c.request_bytes:,}", f"{c.response_bytes:,}",
                      f"{c.tail_ms:.3f}", shape)  # fmt: skip
    out.print(table)


def _number(flag: str, text: str, unit: str) -> float:
    """A flag's number, or one clear line (typer's own message is a boxed usage error)."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a number of {unit}, got {text!r}") from None


@split_app.command("suggest", help="Pick the split point with the lowest predicted latency.")
def suggest_command(
    profile_path: Path = typer.Option(
        PROFILE_FILE, "--profile", help="From edgewire split profile."
    ),
    bandwidth: str = typer.Option(..., "--bandwidth", metavar="MBIT", help="Mbit/s each way."),
    rtt: str = typer.Option(..., "--rtt", metavar="MS", help="Round-trip time in ms."),
    slowdown: str = typer.Option(
        "1", "--device-slowdown", metavar="K", help="How many times slower the device is than here."
    ),
    hop_ms: str = typer.Option(
        "1.0", "--hop-ms", metavar="MS", help="Cost of each agent a request passes."
    ),
    call_ms: str = typer.Option(
        "0.3", "--call-ms", metavar="MS", help="Cost of a model call beyond the model's own time."
    ),
    link_ms: str = typer.Option(
        "1.0", "--link-ms", metavar="MS", help="Cost of a round trip beyond rtt and serialisation."
    ),
) -> None:
    """The defaults of --hop-ms, --call-ms and --link-ms are typical of agents on a desktop
    CPU and a userspace-emulated link; benchmarks/split.py measures them."""
    from edgewire.split.profile import Profile
    from edgewire.split.suggest import Overheads, check_link, suggest

    mbit = _number("--bandwidth", bandwidth, "Mbit/s")
    rtt_ms = _number("--rtt", rtt, "ms")
    k = _number("--device-slowdown", slowdown, "times")
    check_link(mbit=mbit, rtt_ms=rtt_ms, slowdown=k)
    prof = Profile.load(profile_path)
    overheads = Overheads(
        hop_ms=_number("--hop-ms", hop_ms, "ms"),
        call_ms=_number("--call-ms", call_ms, "ms"),
        link_ms=_number("--link-ms", link_ms, "ms"),
    )
    best, predictions = suggest(prof, mbit=mbit, rtt_ms=rtt_ms, slowdown=k, overheads=overheads)
    print_suggestion(best, predictions, mbit=mbit, rtt_ms=rtt_ms, slowdown=k)


def print_suggestion(
    best: Candidate, predictions: list[tuple[Candidate, float]], *, mbit: float, rtt_ms: float,
    slowdown: float, out: Console | None = None,
) -> None:  # fmt: skip
    out = out or console
    table = Table(title=f"{mbit:g} Mbit/s, {rtt_ms:g} ms RTT, device {slowdown:g}× slower")
    for name in ("candidate", "device ms", "link ms", "server ms", "predicted ms", ""):
        table.add_column(name, justify="left" if name in ("candidate", "") else "right")
    for c, ms in predictions:
        device_ms, server_ms = slowdown * c.head_ms, c.tail_ms
        table.add_row(c.name, f"{device_ms:.2f}", f"{ms - device_ms - server_ms:.2f}",
                      f"{server_ms:.2f}", f"{ms:.2f}", "← pick" if c is best else "")  # fmt: skip
    out.print(table)
    best_ms = next(ms for c, ms in predictions if c is best)
    out.print(f"pick: {best.name} (predicted {best_ms:.2f} ms)", highlight=False, markup=False)


split_app.command(
    "run", help="Classify files through a split head on a device agent, with the timing breakdown."
)(split_run_command)
