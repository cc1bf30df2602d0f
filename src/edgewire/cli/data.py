"""``edgewire data``: the bundled data sets as files other tools read.

``export-idx`` writes MNIST's four IDX files (big-endian headers; magic 2051 for
u8 images N×rows×cols, 2049 for u8 labels N), so that tools written for MNIST,
such as the JettyLink sender, run on the real digits edgewire ships::

    edgewire data export-idx mnist5k mnist/
    python -m edgewire.bench.jettylink 127.0.0.1 9000 mnist/train-images.idx3-ubyte \
        mnist/train-labels.idx1-ubyte
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from edgewire.cli.common import console
from edgewire.errors import DataError

data_app = typer.Typer(no_args_is_help=True)

#: File names in the dotted spelling of the copies most tools (and the JettyLink seed) use;
#: edgewire's IDX loader also reads the dashed one.
IDX_FILES = {
    "train": ("train-images.idx3-ubyte", "train-labels.idx1-ubyte"),
    "t10k": ("t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte"),
}
_MAX_LABELS = 256  # labels are u8


@data_app.command("export-idx")
def export_idx_command(
    dataset: str = typer.Argument(
        ..., help="mnist5k (5,000 real MNIST digits, 28×28) or digits (sklearn's 8×8)."
    ),
    out: Path = typer.Argument(..., file_okay=False, help="Folder for the four files."),
    test_fraction: float = typer.Option(
        0.2, min=0.0, max=0.9, help="Share of each class that goes to the t10k files."
    ),
    size: int | None = typer.Option(
        None, min=1, help="Resize to SIZE×SIZE (e.g. 28 for digits, as MNIST tools expect)."
    ),
    seed: int = typer.Option(0, min=0, help="Which samples go to t10k."),
) -> None:
    """Write train/t10k images and labels as MNIST IDX files, each one atomically."""
    for path in export_idx(dataset, out, test_fraction=test_fraction, size=size, seed=seed):
        console.print(str(path), highlight=False)


def export_idx(
    dataset: str, out: Path, *, test_fraction: float = 0.2, size: int | None = None, seed: int = 0
) -> list[Path]:
    """The four IDX files of ``dataset`` in ``out`` (created if missing); their paths."""
    from edgewire.data.datasets import load_dataset
    from edgewire.data.idx import write_idx

    data = load_dataset(dataset, image_size=size)
    if data.shape[0] != 1:
        raise DataError(f"{dataset!r} has {data.shape[0]} channels; IDX image files hold one")
    if data.num_classes > _MAX_LABELS:
        raise DataError(f"{dataset!r} has {data.num_classes} classes; IDX u8 labels hold 256")
    if test_fraction > 0:
        parts = dict(zip(IDX_FILES, data.split(val_fraction=test_fraction, seed=seed), strict=True))
    else:
        parts = {"train": data}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, (images_name, labels_name) in IDX_FILES.items():
        if split not in parts:
            continue
        part = parts[split]
        write_idx(out / images_name, np.ascontiguousarray(part.x[:, 0]))
        write_idx(out / labels_name, part.y.astype(np.uint8))
        written += [out / images_name, out / labels_name]
    return written
