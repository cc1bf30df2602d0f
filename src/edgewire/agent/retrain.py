"""Retraining for automation's data rules: train on an artifact, then score the new model
and the served one on the same held-out data, so the deploy gate can compare them.

Runs in the agent's training thread; torch is imported only here, when a job needs it.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgewire.errors import ConfigError, DataError, DependencyMissing, TrainError, require
from edgewire.fsutil import atomic_write_bytes, sha256_file
from edgewire.serve.model import ModelVersion, RuntimeOptions

if TYPE_CHECKING:
    from edgewire.data.datasets import Dataset

_EVAL_BATCH = 256


def retrain(
    data_path: Path,
    train: Mapping[str, Any],
    current: ModelVersion | None,
    out: Path,
    *,
    halt: threading.Event,
    say: Callable[[str], None],
    max_model_bytes: int,
    run_id: str = "automation",
) -> dict[str, Any]:
    """Train on the data at ``data_path``, export ``out`` and score it and ``current`` on
    the same held-out data (runs in the training thread; ``halt`` stops it between batches).

    With ``train_on`` the training runs on that agent instead, as run ``run_id`` (resumed
    if it exists, so a job tried again continues it), and the model comes back in the
    run's summary."""
    fit, held = _split(data_path, train)
    epochs = int(train["epochs"])
    where = f" on {train['train_on']}" if train.get("train_on") else ""

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if halt.is_set():  # a remote run stays at its last checkpoint, for the retry
            raise TrainError("interrupted: the agent stopped, or the job lost its lease")
        if kind == "epoch":
            say(f"epoch {data['epoch'] + 1}/{epochs}{where}: train accuracy "
                f"{data['train']['accuracy']:.4f}")  # fmt: skip

    if where:
        say(f"training {train['arch']} on {len(fit)} samples for {epochs} epoch(s){where} "
            f"(run {run_id})")  # fmt: skip
        _train_remote(fit, train, out, on_event=on_event, run_id=run_id)
    else:
        say(f"training {train['arch']} on {len(fit)} samples for {epochs} epoch(s)")
        _train_here(fit, train, out, on_event=on_event, max_model_bytes=max_model_bytes)
    scores: dict[str, Any] = {
        "new_accuracy": accuracy(_candidate(out), held),
        "current_accuracy": None if current is None else accuracy(current, held),
        "holdout": len(held),
        "trained_on": len(fit),
    }
    if where:
        scores["trained_at"] = str(train["train_on"])
    return scores


Events = Callable[[str, dict[str, Any]], None]


def _split(data_path: Path, train: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    from edgewire.data.datasets import load_dataset

    data = load_dataset(str(data_path), limit=train["limit"])
    if train["holdout"]:
        return data, load_dataset(str(train["holdout"]))
    return data.split(val_fraction=train["val_fraction"], seed=train["seed"])


def _train_here(
    fit: Dataset, train: Mapping[str, Any], out: Path, *, on_event: Events, max_model_bytes: int
) -> None:
    try:
        require("torch", extra="train")
    except DependencyMissing as exc:  # a data rule on an agent that cannot train
        raise ConfigError(f"this agent cannot retrain: {exc}") from None
    from edgewire.train.local import train_local
    from edgewire.train.stream_client import spec_for
    from edgewire.train.trainer import Trainer, TrainSpec, check_model_size

    spec = TrainSpec.from_dict(
        spec_for(fit, model=train["arch"], lr=train["lr"], seed=train["seed"])
    )
    check_model_size(spec, max_model_bytes)
    trainer = Trainer(spec)
    train_local(trainer, fit, None, epochs=int(train["epochs"]),
                batch_size=int(train["batch_size"]), seed=int(train["seed"]),
                on_event=on_event)  # fmt: skip
    trainer.export_onnx(out)


def _train_remote(
    fit: Dataset, train: Mapping[str, Any], out: Path, *, on_event: Events, run_id: str
) -> None:
    """Stream the data to the training agent ``train_on`` and keep the model it sends back."""
    from edgewire.ports import DEFAULT_NATIVE_PORT, parse_address
    from edgewire.train.stream_client import StreamOptions, spec_for, stream_training

    host, port = parse_address(str(train["train_on"]), default_port=DEFAULT_NATIVE_PORT)
    env = train.get("train_token_env")
    token = os.environ.get(str(env)) if env else None
    if env and not token:
        raise ConfigError(f"the training agent's token variable {env} is not set")
    options = StreamOptions(
        run_id=run_id,
        spec=spec_for(fit, model=train["arch"], lr=train["lr"], seed=train["seed"]),
        epochs=int(train["epochs"]), batch_size=int(train["batch_size"]),
        seed=int(train["seed"]), resume=True, token=token, return_model=True,
    )  # fmt: skip
    summary = asyncio.run(stream_training(host, port, fit, None, options, on_event=on_event))
    model = summary.get("model")
    if not isinstance(model, bytes):
        reason = summary.get("model_not_sent", "it sent no model")
        raise TrainError(f"the training agent {host}:{port} kept the model: {reason}")
    atomic_write_bytes(out, model, what="write the retrained model")


def score_both(
    model: Path, current: ModelVersion | None, holdout: str
) -> tuple[float, float | None]:
    """The accuracy of a delivered model file and of the served version on ``holdout``
    (a data set name or path): the gate of a model delivery whose rule names one."""
    from edgewire.data.datasets import load_dataset

    held = load_dataset(holdout)
    return accuracy(_candidate(model), held), None if current is None else accuracy(current, held)


def _candidate(path: Path) -> ModelVersion:
    """A model file not (yet) in the store, described as a stored version would be."""
    from edgewire.serve.backends import detect

    backend = detect(path)
    info = backend.inspect(path)
    return ModelVersion(
        name="candidate", version=0, path=path.parent, format=backend.name, file=path.name,
        sha256=sha256_file(path), size=path.stat().st_size, created=time.time(),
        inputs=info.inputs, outputs=info.outputs,
    )  # fmt: skip


def accuracy(version: ModelVersion, data: Dataset) -> float:
    """The share of ``data`` that ``version`` classifies right, run by its serving backend
    on the CPU (inputs as training sees them: float32 in 0..1, reshaped to the model's)."""
    from edgewire.serve.backends import backend

    if not version.inputs or not version.outputs:
        raise DataError(f"{version.label} has no inputs or outputs to score")
    tensor = version.inputs[0]
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in tensor.shape]
    row = math.prod(shape[1:]) if all(d > 0 for d in shape[1:]) else -1
    if row != math.prod(data.shape):
        raise DataError(
            f"{version.label} takes {list(tensor.shape)} but the data's images are "
            f"{list(data.shape)}; the gate cannot compare them"
        )
    options = RuntimeOptions(providers=("CPUExecutionProvider",), max_batch_size=_EVAL_BATCH)
    session = backend(version.format).load(version, options)
    batch = 1 if shape[0] == 1 else _EVAL_BATCH
    x = data.x.astype(np.float32) / np.float32(255.0)
    correct = 0
    for start in range(0, len(data), batch):
        rows = x[start : start + batch]
        out = session.run({tensor.name: rows.reshape(len(rows), *shape[1:])})
        scores = out[version.outputs[0].name]
        if scores.ndim != 2 or scores.shape[1] != data.num_classes:
            raise DataError(
                f"{version.label} gives {list(scores.shape[1:])} scores a row; the data has "
                f"{data.num_classes} classes"
            )
        correct += int((scores.argmax(axis=1) == data.y[start : start + batch]).sum())
    return correct / len(data)
