"""``edgewire infer``: classify image or .npy files with a model served by an agent.

Inputs are scaled the same way whatever the file: 8-bit pixels, from an image or
a uint8 ``.npy`` array, are multiplied by the model's ``preprocessing.scale``
(1/255 unless the model says otherwise); float arrays are sent as they are. The
answer is shown as the predicted class and its probability: the model's outputs
when they already are probabilities, else their softmax.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import typer
from rich.table import Table

from edgewire.cli.common import console, run
from edgewire.errors import DataError, ModelError
from edgewire.ports import DEFAULT_NATIVE_PORT, parse_address

if TYPE_CHECKING:
    from edgewire.client.native import Client

#: How far from 1 a row of non-negative outputs may sum and still be read as probabilities.
PROBABILITY_TOLERANCE = 1e-3


def load_input(path: Path, info: dict[str, Any], scale: float) -> np.ndarray[Any, Any]:
    """One file as one row of the model input: images resized, 8-bit values times ``scale``."""
    shape = [d for d in info["shape"][1:]]
    if path.suffix == ".npy":
        return _load_npy(path, info, scale)
    if None in shape:
        raise DataError(f"cannot turn an image into input shape {info['shape']}; pass a .npy file")
    flat = len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]
    if flat:  # e.g. MNIST models that take 784 values: a square grayscale image
        shape = [1, math.isqrt(shape[0]), math.isqrt(shape[0])]
    if len(shape) != 3:
        raise DataError(f"cannot turn an image into input shape {info['shape']}; pass a .npy file")
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if channels == 1 else "RGB").resize((width, height))
            pixels = np.asarray(image, dtype=np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {str(path)!r}: {exc}") from exc
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    row = (pixels * scale)[None].astype(info["dtype"])
    return row.reshape(1, -1) if flat else row


def probabilities(scores: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """``scores`` if they already are probabilities (non-negative, summing to 1 within
    PROBABILITY_TOLERANCE), else their softmax."""
    z = np.asarray(scores, dtype=np.float64).reshape(-1)
    if z.size == 0 or (np.all(z >= 0) and abs(z.sum() - 1.0) <= PROBABILITY_TOLERANCE):
        return z
    e = np.exp(z - z.max())
    return e / e.sum()  # type: ignore[no-any-return]


def _load_npy(path: Path, info: dict[str, Any], scale: float) -> np.ndarray[Any, Any]:
    """A .npy file as one row of the model input; anything unusable is a DataError.

    uint8 arrays are pixels and are scaled as images are; other arrays are sent as
    they are (a float array is taken to be scaled already)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        # ValueError: not a .npy file, a bad header, or an object array (pickled data).
        raise DataError(f"cannot read {str(path)!r} as a .npy array: {exc}") from exc
    if not isinstance(loaded, np.ndarray):
        raise DataError(f"{str(path)!r} is not a .npy array (an .npz archive?)")
    if loaded.dtype == np.uint8 and np.dtype(info["dtype"]).kind == "f":
        loaded = loaded.astype(np.float32) * np.float32(scale)
    try:
        array: np.ndarray[Any, Any] = loaded.astype(info["dtype"])
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{str(path)!r} holds {loaded.dtype} values that cannot become {info['dtype']}: {exc}"
        ) from exc
    wanted = (1, *[d if d is not None else -1 for d in info["shape"][1:]])
    try:
        return array.reshape(wanted)
    except ValueError:
        expected = "x".join("?" if d is None else str(d) for d in info["shape"])
        raise DataError(
            f"{str(path)!r} has shape {'x'.join(map(str, array.shape))} "
            f"({array.size} values); the model takes {expected}"
        ) from None


def infer_command(
    files: list[Path] = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="Images, or .npy arrays of one input row. 8-bit pixels (images, uint8 arrays) "
        "are scaled by the model's preprocessing (1/255 by default); float arrays are sent "
        "as they are.",
    ),
    to: str = typer.Option(
        f"127.0.0.1:{DEFAULT_NATIVE_PORT}", "--to", help="Agent HOST:PORT (native port)."
    ),
    model: str = typer.Option(..., "--model", help="Model name on the agent."),
    top: int = typer.Option(3, min=1, help="Classes to show per file, most likely first."),
    token: str | None = typer.Option(
        None, help=r"The agent's token, sent in the hello \[env: EDGEWIRE_TOKEN]."
    ),
) -> None:
    """Print each file's predicted class and its probability (the model's outputs when
    they are probabilities, else their softmax), with the model's labels when it has them."""
    host, port = parse_address(to, default_port=DEFAULT_NATIVE_PORT)
    rows = run(_infer(host, port, model, files, top, token=token))
    table = Table(title=f"{model} on {host}:{port}")
    for column in ("file", "class", "probability", f"top {top}", "queue ms", "compute ms"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def describe(scores: npt.NDArray[Any], labels: list[str] | None, top: int) -> tuple[str, str, str]:
    """(predicted class, its probability, the ``top`` classes with theirs) as text."""
    probs = probabilities(scores)
    best = [int(i) for i in np.argsort(-probs, kind="stable")[:top]]
    names = [labels[i] if labels and i < len(labels) else str(i) for i in best]
    ranked = ", ".join(f"{name} {probs[i]:.3f}" for name, i in zip(names, best, strict=True))
    return names[0], f"{probs[best[0]]:.3f}", ranked


async def served_model(client: Client, model: str) -> tuple[dict[str, Any], float]:
    """The hello's description of ``model`` and the scale its 8-bit inputs take;
    ModelError naming what is served when it is not."""
    hello = await client.hello()
    info = next((m for m in hello.get("models", []) if m["name"] == model), None)
    if info is None:
        served = ", ".join(m["name"] for m in hello.get("models", [])) or "none"
        raise ModelError(f"model {model!r} is not served there (served: {served})")
    return info, float((info.get("preprocessing") or {}).get("scale", 1 / 255))


async def _infer(
    host: str, port: int, model: str, files: list[Path], top: int, *, token: str | None = None
) -> list[list[str]]:
    from edgewire.client.native import Client

    async with await Client.connect(host, port, token=token) as client:
        info, scale = await served_model(client, model)
        labels = info.get("labels")
        rows = []
        for path in files:
            x = load_input(path, info["inputs"][0], scale)
            answer = await client.infer(model, [x])
            scores = next(iter(answer.outputs.values())).reshape(-1)
            rows.append([
                path.name, *describe(scores, labels, top),
                f"{answer.queue_ms:.2f}", f"{answer.compute_ms:.2f}",
            ])  # fmt: skip
        return rows
