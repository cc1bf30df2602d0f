"""``edgewire train stream`` (train on a device) and ``edgewire train run`` (train here)."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edgewire.cli.common import console, err_console, run
from edgewire.cli.progress import TrainDisplay
from edgewire.errors import ConfigError, ConnectError, ProtocolError
from edgewire.ports import DEFAULT_NATIVE_PORT, parse_address
from edgewire.project.workspace import LATEST, RUNS
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


@train_app.command(
    "run", help="Train here: on a workspace's split (-w, the default) or on --data; export ONNX."
)
def run_command(
    data: str | None = typer.Option(
        None, help=f"{DATA_HELP} Default: the workspace's dataset/, else mnist5k."
    ),
    workspace: Path | None = typer.Option(
        None, "--workspace", "-w", help="Workspace to train on (default: .), into WS/runs/RUN-ID/."
    ),
    model: str | None = typer.Option(
        None,
        help="mnist_cnn, lenet5, resnet_small or resnet18 (default: mnist_cnn with --data, "
        "resnet_small for a workspace, the --init checkpoint's model with --init).",
    ),
    batch_size: int | None = typer.Option(
        None, min=1, help="Default: 32 with --data; for a workspace, the largest that fits memory."
    ),
    epochs: int | None = typer.Option(
        None, min=1, help="Default: 1 with --data, 10 for a workspace."
    ),
    lr: float = typer.Option(1e-3, min=0.0),
    optimizer: str = typer.Option("adam", help="adam or sgd."),
    val_fraction: float = typer.Option(0.1, min=0.0, max=0.9, help="--data only."),
    limit: int | None = typer.Option(None, min=1, help="--data only."),
    image_size: int | None = typer.Option(
        None, "--size", "--image-size", min=4, help="Image side in pixels (workspace default: 64)."
    ),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Workspace: augment train."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Workspace: horizontal flips too."),
    patience: int = typer.Option(
        5, min=0, help="Workspace: stop after N epochs without a better val accuracy (0: off)."
    ),
    init: Path | None = typer.Option(
        None, "--init", help="Workspace: fine-tune from this checkpoint file (no downloads)."
    ),
    memory_budget: int | None = typer.Option(
        None,
        "--memory-budget",
        min=1,
        help="Workspace: MB the batch size must fit (default: free memory).",
    ),
    run_id: str | None = typer.Option(
        None, "--run-id", help="Workspace: the run folder's name (default: MODEL-YYYYmmdd-HHMMSS)."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="--data: where the ONNX model goes (default: model.onnx)."
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="--data: also save the trained model here (for edgewire split build).",
    ),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
    on: str | None = typer.Option(
        None, "--on", help="Workspace: train on this agent (HOST:PORT, its HTTP port) instead."
    ),
    token: str | None = typer.Option(
        None,
        envvar="EDGEWIRE_TOKEN",
        show_envvar=False,
        help=r"--on: the agent's token, if it has one \[env: EDGEWIRE_TOKEN].",
    ),
) -> None:
    from edgewire.project.workspace import CONFIG_FILE, DATASET

    root = workspace or Path(".")
    if data is None and ((root / DATASET).is_dir() or workspace is not None):
        if not (root / DATASET).is_dir():
            hint = (
                "run `edgewire project split` first"
                if (root / CONFIG_FILE).is_file()
                else ("is it a workspace? (edgewire project init)")
            )
            raise ConfigError(f"workspace {str(root)!r} has no {DATASET}/ folder; {hint}")
        data_only = {"--output": output, "--checkpoint": checkpoint, "--limit": limit}
        given = [flag for flag, value in data_only.items() if value is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} only go with --data; a workspace run writes WS/runs/RUN-ID/"
            )
        from edgewire.train.folder import FolderOptions

        options = FolderOptions(
            model=model or (init_model(init) if init is not None else "resnet_small"),
            epochs=epochs or 10, batch_size=batch_size, lr=lr, optimizer=optimizer,
            image_size=image_size or 64, augment=augment, flip=flip,
            patience=patience or None, seed=seed, memory_budget_mb=memory_budget, device=device,
        )  # fmt: skip
        if on is not None:  # remote training: cli/train_remote.py
            from edgewire.cli.train_remote import remote_run

            remote_run(on, root, options, init=init, token=token, as_json=as_json,
                       run_id=new_run_dir(root, run_id, options.model).name)  # fmt: skip
            return
        run_workspace(root, options, init=init, run_id=run_id, as_json=as_json)
        return
    workspace_only = {"--init": init, "--memory-budget": memory_budget, "--run-id": run_id}
    given = [flag for flag, value in workspace_only.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} only go with a workspace (-w WS), not with --data")
    run_data(
        data or "mnist5k", model=model or "mnist_cnn", batch_size=batch_size or 32,
        epochs=epochs or 1, lr=lr, optimizer=optimizer, val_fraction=val_fraction, limit=limit,
        image_size=image_size, output=output or Path("model.onnx"), checkpoint=checkpoint,
        seed=seed, device=device, as_json=as_json,
    )  # fmt: skip


def run_data(
    data: str, *, model: str, batch_size: int, epochs: int, lr: float, optimizer: str,
    val_fraction: float, limit: int | None, image_size: int | None, output: Path,
    checkpoint: Path | None, seed: int, device: str, as_json: bool,
) -> None:  # fmt: skip
    """``train run --data``: train on a named set or a path, write ONNX (and a checkpoint)."""
    from edgewire.train.checkpoint import save_checkpoint
    from edgewire.train.local import train_local
    from edgewire.train.trainer import Trainer, TrainSpec

    check_choices(model=model, optimizer=optimizer)
    train, val = load_splits(
        data, val_fraction=val_fraction, limit=limit, image_size=image_size, seed=seed
    )
    spec = spec_for(train, model=model, optimizer=optimizer, lr=lr, seed=seed)
    trainer = Trainer(TrainSpec.from_dict({**spec, "device": device}))
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


# -- training on a workspace ---------------------------------------------------------

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def init_model(path: Path) -> str:
    """The model name an --init checkpoint holds (so --model may be left out)."""
    from edgewire.train.checkpoint import load_checkpoint

    trainer, _ = load_checkpoint(path, device="cpu")
    return trainer.spec.model


def new_run_dir(root: Path, run_id: str | None, model: str) -> Path:
    """``WS/runs/RUN-ID`` for a new run; a clear line for a bad or taken id."""
    run_id = run_id or f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not _RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"--run-id {run_id!r} must be letters, digits, '_', '.', '-' (at most 128)"
        )
    path = root / RUNS / run_id
    if path.exists():
        raise ConfigError(f"run {run_id!r} exists already ({path}); pick another --run-id")
    return path


class _Display:
    """A TrainDisplay made once the batch size is known (it sizes the progress bar)."""

    def __init__(self, *, epochs: int, as_json: bool) -> None:
        self.epochs, self.as_json = epochs, as_json
        self.display: TrainDisplay | None = None

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "batch_size" and self.display is None:
            per_epoch = math.ceil(int(data.get("train_samples", 1)) / int(data["batch_size"]))
            self.display = TrainDisplay(
                console=console, total=self.epochs * per_epoch, epochs=self.epochs,
                as_json=self.as_json,
            ).__enter__()  # fmt: skip
            if not self.as_json:
                console.print(
                    f"batch size {data['batch_size']}: {data['reason']}",
                    highlight=False,
                    soft_wrap=True,
                )
        if self.display is not None:
            self.display(kind, data)
        elif self.as_json:
            print_json_event(kind, data)
        elif kind == "init":
            console.print(
                f"fine-tuning from {data['path']}: {data['loaded']} tensors loaded"
                + (", a new classifier head" if data.get("new_head") else ""),
                markup=False, highlight=False,
            )  # fmt: skip
        if kind == "early_stop" and not self.as_json:
            console.print(
                f"early stop after epoch {data['epoch'] + 1}: no better val accuracy in "
                f"{data['patience']} epoch(s); keeping epoch {data['best_epoch'] + 1}",
                highlight=False,
            )

    def close(self) -> None:
        if self.display is not None:
            self.display.__exit__(None, None, None)


def print_json_event(kind: str, data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"event": kind, **data}) + "\n")
    sys.stdout.flush()


def run_workspace(
    root: Path, options: Any, *, init: Path | None, run_id: str | None, as_json: bool
) -> dict[str, Any]:
    """Train on ``root/dataset`` into ``root/runs/RUN-ID``, point ``runs/LATEST`` at it,
    and print the report (or, with ``--json``, end with a ``done`` event)."""
    from edgewire.cli.train_report import print_files, print_report
    from edgewire.fsutil import atomic_write_bytes
    from edgewire.project.workspace import DATASET
    from edgewire.train.folder import train_folder

    check_choices(model=options.model, optimizer=options.optimizer)
    run_dir = new_run_dir(root, run_id, options.model)
    display = _Display(epochs=options.epochs, as_json=as_json)
    try:
        summary = train_folder(root / DATASET, run_dir, options, init=init, on_event=display)
    finally:
        display.close()
    atomic_write_bytes(root / RUNS / LATEST, f"{run_dir.name}\n".encode())
    if as_json:
        print_json_event("done", {"run_id": run_dir.name, "run_dir": str(run_dir), **summary})
        return summary
    print_report(summary["report"], console)
    for note in summary["notes"]:
        console.print(note, markup=False, highlight=False)
    print_files(summary["files"], console)
    console.print(
        f"run {run_dir.name} (WS/{RUNS}/{LATEST} names it)", markup=False, highlight=False
    )
    return summary


@train_app.command("attach", help="Follow a run on a remote agent and download it (-w WS).")
def attach_command(
    run_id: str = typer.Argument(..., help="The run's id (train run --on printed it)."),
    on: str = typer.Option(..., "--on", help="The agent (HOST:PORT, its HTTP port)."),
    workspace: Path = typer.Option(Path("."), "--workspace", "-w", help="Where runs/ is."),
    token: str | None = typer.Option(
        None,
        envvar="EDGEWIRE_TOKEN",
        show_envvar=False,
        help=r"The agent's token, if it has one \[env: EDGEWIRE_TOKEN].",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    from edgewire.cli.train_remote import attach

    attach(on, workspace, run_id, token=token, as_json=as_json)
