"""In-process training on the host: ``edgewire train run`` and the benchmark baseline.

It feeds the same batches, in the same order, through the same Trainer as a
streaming run does, so the two can be compared one for one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgewire.data.datasets import batch_order

if TYPE_CHECKING:
    import numpy as np

    from edgewire.data.datasets import Dataset
    from edgewire.train.trainer import Trainer

#: (kind, data) with kind "feedback" or "epoch", as in a streaming run.
EventHandler = Callable[[str, dict[str, Any]], None]
#: (images, epoch, seq) -> images to train on (augmentation); labels are unchanged.
BatchTransform = Callable[["np.ndarray", int, int], "np.ndarray"]


def train_local(
    trainer: Trainer,
    train: Dataset,
    val: Dataset | None,
    *,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    on_event: EventHandler | None = None,
) -> dict[str, Any]:
    emit = on_event or (lambda kind, data: None)
    history: list[dict[str, Any]] = []
    samples = 0
    started = time.perf_counter()
    for epoch in range(epochs):
        stats = run_epoch(trainer, train, epoch=epoch, batch_size=batch_size, seed=seed, emit=emit)
        samples += stats["samples"]
        summary: dict[str, Any] = {
            "epoch": epoch,
            "train": stats,
            "val": evaluate(trainer, val, batch_size=batch_size) if val is not None else None,
            "seconds": time.perf_counter() - started,
        }
        history.append(summary)
        emit("epoch", summary)
    return {
        "samples_seen": samples,
        "seconds": time.perf_counter() - started,
        "history": history,
        "final": history[-1] if history else None,
    }


def run_epoch(
    trainer: Trainer,
    train: Dataset,
    *,
    epoch: int,
    batch_size: int,
    seed: int,
    emit: EventHandler,
    transform: BatchTransform | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train one epoch in ``batch_order``; ``{"loss", "accuracy", "samples"}`` of the
    batches it ran, plus ``"stopped": True`` when ``should_stop()`` ended it early."""
    loss_sum, correct, count = 0.0, 0, 0
    stopped = False
    for seq, idx in enumerate(
        batch_order(len(train), batch_size=batch_size, epoch=epoch, seed=seed)
    ):
        if should_stop is not None and should_stop():
            stopped = True
            break
        x = train.x[idx]
        if transform is not None:
            x = transform(x, epoch, seq)
        step = trainer.train_step(x, train.y[idx])
        loss_sum += step.loss * step.count
        correct += step.correct
        count += step.count
        emit("feedback", {
            "seq": seq, "epoch": epoch, "split": "train", "loss": step.loss,
            "accuracy": step.correct / step.count, "count": step.count,
            "step_ms": step.step_ms, "memory_bytes": step.memory_bytes,
        })  # fmt: skip
    stats: dict[str, Any] = {
        "loss": loss_sum / max(count, 1),
        "accuracy": correct / max(count, 1),
        "samples": count,
    }
    if stopped:
        stats["stopped"] = True
    return stats


def evaluate(trainer: Trainer, data: Dataset, *, batch_size: int) -> dict[str, float]:
    loss_sum, correct, count = 0.0, 0, 0
    for start in range(0, len(data), batch_size):
        result = trainer.evaluate(
            data.x[start : start + batch_size], data.y[start : start + batch_size]
        )
        loss_sum += result.loss_sum
        correct += result.correct
        count += result.count
    n = max(count, 1)
    return {"loss": loss_sum / n, "accuracy": correct / n, "samples": count}
