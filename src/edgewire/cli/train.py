"""``edgewire train stream`` (train on a device) and ``edgewire train run`` (train here)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edgewire.cli.common import console, err_console, run
from edgewire.cli.progress import TrainDisplay
from edgewire.errors import ConfigError, ConnectError, ProtocolError
from edgewire.ports import DEFAULT_NATIVE_PORT, parse_address
from edgewire.train.choices import MODEL_NAMES, OPTIMIZERS
from edgewire.train.stream_client import spec_for

train_app = typer.Typer(no_args_is_help=True)

DATA_HELP = "mnist5k (5,000 real MNIST digits), digits (sklearn 8×8), or a PATH: IDX folder, .npz, image folder."


def load_splits(
    data: str, *, val_fraction: float, limit: int | None, image_size: int | None, seed: int
) -> tuple[Any, Any]:
    from edgewire.data.datasets import load_dataset

    dataset = load_dataset(data, image_size=image_size, limit=limit)
    if val_fraction <= 0:
        return dataset, None
    return dataset.split(val_fraction=val_fraction, seed=seed)


def check_choices(*, model: str, optimizer: str) -> None:
    """Refuse an unknown --model or --optimizer here, before loading data or connecting."""
    if model not in MODEL_NAMES:
        raise ConfigError(f"unknown --model {model!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"unknown --optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}"
        )


def resume_hint(to: str, run_id: str) -> str:
    return (
        f"resume it with: edgewire train stream --to {to} --run-id {run_id} --resume "
        "(and the same data and model flags)"
    )


@train_app.command("stream", help="Stream a data set to an agent that trains on-device.")
def stream_command(
    to: str = typer.Option(
        f"127.0.0.1:{DEFAULT_NATIVE_PORT}", "--to", help="Agent HOST:PORT (native port)."
    ),
    data: str = typer.Option("mnist5k", help=DATA_HELP),
    model: str = typer.Option("mnist_cnn", help="mnist_cnn, lenet5, resnet_small or resnet18."),
    batch_size: int = typer.Option(32, min=1, max=65536),
    epochs: int = typer.Option(1, min=1),
    lr: float = typer.Option(1e-3, min=0.0),
    optimizer: str = typer.Option("adam", help="adam or sgd."),
    checkpoint_every: int = typer.Option(
        50, min=0, help="Checkpoint every N train batches (0: epoch ends only)."
    ),
    window: int = typer.Option(8, min=1, help="Batches in flight."),
    val_fraction: float = typer.Option(
        0.1, min=0.0, max=0.9, help="Held-out share, evaluated each epoch."
    ),
    limit: int | None = typer.Option(None, min=1, help="Use only this many samples."),
    image_size: int | None = typer.Option(None, min=4, help="Resize folder images to this size."),
    run_id: str | None = typer.Option(None, help=r"Name of the run \[default: MODEL-DATA]."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run from its last checkpoint."
    ),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(
        False, "--json", help="Write events as JSON lines instead of the live display."
    ),
    token: str | None = typer.Option(
        None,
        envvar="EDGEWIRE_TOKEN",
        show_envvar=False,
        help=r"The agent's token, if it has one \[env: EDGEWIRE_TOKEN].",
    ),
) -> None:
    from edgewire.train.stream_client import StreamOptions, plan_for, stream_training

    host, port = parse_address(to, default_port=DEFAULT_NATIVE_PORT)
    check_choices(model=model, optimizer=optimizer)
    train, val = load_splits(
        data, val_fraction=val_fraction, limit=limit, image_size=image_size, seed=seed
    )
    options = StreamOptions(
        run_id=run_id or f"{model}-{train.name}",
        spec=spec_for(train, model=model, optimizer=optimizer, lr=lr, seed=seed),
        epochs=epochs,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        window=window,
        resume=resume,
        seed=seed,
        token=token,
    )
    plan = plan_for(train, val, options)
    total = epochs * (plan["train_batches"] + plan["val_batches"])
    try:
        with TrainDisplay(
            console=console, total=total, epochs=epochs, as_json=as_json, resume=resume
        ) as display:
            summary = run(stream_training(host, port, train, val, options, on_event=display))
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted; the agent keeps run {options.run_id!r} at its last checkpoint; "
            + resume_hint(to, options.run_id),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    except (ProtocolError, ConnectError) as exc:
        if display.ready is None:
            raise  # the run never started: nothing to resume
        raise type(exc)(f"{exc.message}; {resume_hint(to, options.run_id)}") from exc
    if not as_json:
        print_summary(summary, samples_per_s=display.samples_per_s, title=f"run {options.run_id}")


@train_app.command("run", help="Train here, in-process, and export ONNX.")
def run_command(
    data: str = typer.Option("mnist5k", help=DATA_HELP),
    model: str = typer.Option("mnist_cnn", help="mnist_cnn, lenet5, resnet_small or resnet18."),
    batch_size: int = typer.Option(32, min=1),
    epochs: int = typer.Option(1, min=1),
    lr: float = typer.Option(1e-3, min=0.0),
    optimizer: str = typer.Option("adam", help="adam or sgd."),
    val_fraction: float = typer.Option(0.1, min=0.0, max=0.9),
    limit: int | None = typer.Option(None, min=1),
    image_size: int | None = typer.Option(None, min=4),
    output: Path = typer.Option(
        Path("model.onnx"), "--output", "-o", help="Where the ONNX model goes."
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Also save the trained model here (for edgewire split build)."
    ),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    from edgewire.train.checkpoint import save_checkpoint
    from edgewire.train.local import train_local
    from edgewire.train.trainer import Trainer, TrainSpec

    check_choices(model=model, optimizer=optimizer)
    train, val = load_splits(
        data, val_fraction=val_fraction, limit=limit, image_size=image_size, seed=seed
    )
    trainer = Trainer(
        TrainSpec.from_dict(spec_for(train, model=model, optimizer=optimizer, lr=lr, seed=seed))
    )
    total = epochs * math.ceil(len(train) / batch_size)
    with TrainDisplay(console=console, total=total, epochs=epochs, as_json=as_json) as display:
        display("ready", {"next_seq": 0})
        summary = train_local(
            trainer, train, val, epochs=epochs, batch_size=batch_size, seed=seed, on_event=display
        )
    summary["onnx"] = str(trainer.export_onnx(output))
    if checkpoint is not None:
        # What split build needs to load the same data again.
        meta = {"data": data, "image_size": image_size, "limit": limit, "seed": seed,
                "val_fraction": val_fraction, "epochs": epochs}  # fmt: skip
        save_checkpoint(trainer, checkpoint, meta=meta)
        summary["checkpoint"] = str(checkpoint)
    if not as_json:
        print_summary(summary, samples_per_s=display.samples_per_s, title="local run")


def print_summary(
    summary: dict[str, Any], *, samples_per_s: float, title: str, out: Console | None = None
) -> None:
    """The run's figures as a table, then the files it wrote, one whole path a line
    (a table cell would cut a long path with "…" on a narrow terminal)."""
    out = out or console
    table = Table(title=title, show_header=False)
    table.add_row("samples trained", f"{summary['samples_seen']:,}")
    table.add_row("samples/s", f"{samples_per_s:,.0f}")
    final = summary.get("final") or {}
    if final.get("train"):
        table.add_row("train accuracy (last epoch)", f"{100 * final['train']['accuracy']:.1f}%")
    if final.get("val"):
        table.add_row("held-out accuracy", f"{100 * final['val']['accuracy']:.1f}%")
    out.print(table)
    for label, key in (("ONNX model", "onnx"), ("checkpoint", "checkpoint")):
        if summary.get(key):
            out.print(
                f"{label}: {summary[key]}",
                markup=False,
                highlight=False,
                soft_wrap=True,  # never cut or folded: the path can be copied whole
            )
