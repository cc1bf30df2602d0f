"""``edgewire export``: ONNX with scores and metadata, and fp16 / int8 variants, measured."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edgewire.cli.common import console


def export_command(
    source: Path = typer.Argument(
        ..., metavar="CHECKPOINT|RUN", help="A checkpoint or a run folder."
    ),
    out: Path = typer.Option(Path("model.onnx"), "--out", "-o", help="The fp32 model's path."),
    fp16: bool = typer.Option(False, "--fp16", help="Also OUT.fp16.onnx (float16 weights)."),
    int8: bool = typer.Option(
        False, "--int8", help="Also OUT.int8.onnx, calibrated on the val split."
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (13..21)."),
    names: str = typer.Option(
        "input_0,output_0",
        "--names",
        help="Input and output names (jetson-inference's imagenet.py: input_0,output_0).",
    ),
    data: str | None = typer.Option(None, help=r"The training data \[default: the checkpoint's]."),
    triton_repo: Path | None = typer.Option(
        None, "--triton-repo", help="Also write a Triton model repository here (NAME/1/model.onnx)."
    ),
    triton_name: str | None = typer.Option(
        None, "--triton-name", help=r"The model's name there \[default: the run's name]."
    ),
    max_batch: int = typer.Option(32, "--max-batch", help="Triton's max_batch_size."),
) -> None:
    """Export; print each variant's held-out accuracy, size, CPU latency and difference from PyTorch."""
    from edgewire.project.export import export_model
    from edgewire.project.triton import check_triton_args, write_triton_repo

    name = triton_name or (source.stem if source.is_file() else source.name)
    if triton_repo is not None:  # a bad name or size is refused before the export runs
        check_triton_args(name=name, max_batch=max_batch)
    variants = export_model(source, out, fp16=fp16, int8=int8, opset=opset, names=names, data=data)
    table = Table(title=f"export of {source.name}")
    for column in (
        "variant",
        f"{variants[0].measured_on} accuracy",
        "size",
        "CPU ms (batch 1)",
        "max |diff| vs PyTorch",
    ):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for v in variants:
        table.add_row(v.kind, f"{100 * v.accuracy:.1f}%", f"{v.size / 1024:,.0f} KiB",
                      f"{v.latency_ms:.3f}", f"{v.max_abs_diff:.2e}")  # fmt: skip
    console.print(table)
    for v in variants:
        console.print(f"{v.kind}: {v.path}", markup=False, highlight=False, soft_wrap=True)
    if triton_repo is not None:
        folder = write_triton_repo(out, triton_repo, name=name, max_batch=max_batch)
        console.print(
            f"Triton repository: {folder} (tritonserver --model-repository {triton_repo})",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
