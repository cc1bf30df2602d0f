"""Train on a workspace's split (``dataset/{train,val,test}`` + ``labels.txt``).

Augments the train split, keeps the best epoch by val accuracy, stops early when
val accuracy stops improving, can fine-tune from a user's own checkpoint, and
ends with a test-split report. The batch size is fitted to the memory there is,
and an out-of-memory becomes one TrainError line with the batch size to try.

The splits are loaded into memory as numpy arrays once: batches are slices of
them, so there are no DataLoader workers and nothing forks on a small device.
Every file written into ``out`` is atomic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgewire import fsutil
from edgewire.errors import ConfigError, DataError
from edgewire.train.choices import MODEL_NAMES, OPTIMIZERS
from edgewire.train.local import EventHandler, evaluate, run_epoch

if TYPE_CHECKING:
    from edgewire.data.datasets import Dataset
    from edgewire.train.trainer import Trainer

CHECKPOINT, LAST, ONNX = "checkpoint.safetensors", "last.safetensors", "model.onnx"
HISTORY, REPORT = "history.jsonl", "report.json"
CONFUSION_TXT, CONFUSION_PNG = "confusion.txt", "confusion.png"
#: The files a run folder may hold, in the order a remote client downloads them.
RESULT_FILES = (CHECKPOINT, LAST, ONNX, HISTORY, REPORT, CONFUSION_TXT, CONFUSION_PNG)
_MAX_EPOCHS = 100_000
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]{1,2})?")
_MAX_BUDGET_MB = 1 << 24  # 16 TB: anything larger is a typo


@dataclass(frozen=True, kw_only=True)
class FolderOptions:
    """How to train on a split folder; validated on construction."""

    model: str = "resnet_small"
    epochs: int = 10
    batch_size: int | None = None  # None: the largest that fits memory_budget_mb
    lr: float = 1e-3
    optimizer: str = "adam"
    image_size: int = 64
    augment: bool = True
    flip: bool = True  # horizontal flips in the augmentation (off for digits or text)
    patience: int | None = 5  # early stopping on val accuracy; None: off
    seed: int = 0
    memory_budget_mb: int | None = None  # None: what the machine has available
    device: str = "auto"

    def __post_init__(self) -> None:
        _choice("model", self.model, MODEL_NAMES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _int("epochs", self.epochs, 1, _MAX_EPOCHS)
        _int("batch_size", self.batch_size, 1, 65_536, optional=True)
        _int("image_size", self.image_size, 4, 1024)
        _int("patience", self.patience, 1, _MAX_EPOCHS, optional=True)
        _int("seed", self.seed, 0, 2**63 - 1)
        _int("memory_budget_mb", self.memory_budget_mb, 1, _MAX_BUDGET_MB, optional=True)
        for name in ("augment", "flip"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"train option {name!r} must be true or false, got {getattr(self, name)!r}"
                )
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float):
            raise ConfigError(f"train option 'lr' must be a number, got {self.lr!r}")
        if not 0.0 < float(self.lr) <= 1e3:
            raise ConfigError(f"train option 'lr' must be in (0, 1000], got {self.lr!r}")
        object.__setattr__(self, "lr", float(self.lr))
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ConfigError(
                f"train option 'device' must be auto, cpu, cuda or cuda:N; got {self.device!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that ``from_dict`` turns back into equal options."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FolderOptions:
        """Options from untrusted input: unknown or ill-typed keys are a ConfigError.

        Every field has a default, so no key is required.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"train options must be a mapping, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in d if key not in names]
        if unknown:
            raise ConfigError(
                f"unknown train option(s) {', '.join(repr(k) for k in unknown)}; "
                f"known: {', '.join(names)}"
            )
        return cls(**d)


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(
            f"train option {name!r} must be one of {', '.join(choices)}; got {value!r}"
        )


def _int(name: str, value: object, lo: int, hi: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        none = " or null" if optional else ""
        raise ConfigError(
            f"train option {name!r} must be an integer in {lo}..{hi}{none}, got {value!r}"
        )


def train_folder(
    dataset: Path,
    out: Path,
    options: FolderOptions,
    *,
    init: Path | None = None,
    on_event: EventHandler | None = None,
    should_stop: Callable[[], bool] | None = None,
    recorded_as: str | None = None,
) -> dict[str, Any]:
    """Train on the split folder ``dataset`` into ``out``; a JSON-safe summary.

    ``init`` is a checkpoint file to fine-tune from (tensors whose name and shape
    match are loaded; a different class count gets a new head). ``should_stop()``
    is polled between batches: a stop ends the epoch there, keeps the best
    checkpoint so far and writes the report as usual (an exception it raises ends
    the run at once, with no report). ``recorded_as`` is what the checkpoints' meta
    names the data set by (default: its absolute path; a path relative to the
    workspace, as a remote run gives, is resolved by ``export``), and ``init`` by its
    file name then: no path of this machine goes into them.
    """
    from edgewire.train.checkpoint import load_checkpoint, save_checkpoint
    from edgewire.train.memory import fit_batch_size, oom_as_one_line

    emit = on_event or (lambda kind, data: None)
    dataset = Path(dataset).resolve()
    out = Path(out)
    train, val, test = _load_splits(dataset, options.image_size)
    trainer = _make_trainer(train, options)
    if init is not None:
        emit("init", _init_from(trainer, Path(init)))
    budget = None if options.memory_budget_mb is None else options.memory_budget_mb << 20
    # Measuring on a GPU runs a small step, which can itself run out of memory.
    with oom_as_one_line(options.batch_size or 2, trainer.device):
        fit = fit_batch_size(
            trainer, asked=options.batch_size, budget_bytes=budget, n_train=len(train)
        )
    batch_size = fit.batch_size
    emit(
        "batch_size", {"batch_size": batch_size, "reason": fit.reason, "train_samples": len(train)}
    )
    transform = _augment(options) if options.augment else None
    with _made_dir(out):
        named = str(dataset) if recorded_as is None else recorded_as
        init_named = None
        if init is not None:
            init_named = str(Path(init).resolve()) if recorded_as is None else Path(init).name
        meta: dict[str, Any] = {
            "dataset": named, "data": named, "splits": True,
            "image_size": options.image_size, "classes": list(train.classes), "seed": options.seed,
            "model": options.model, "epochs": options.epochs, "options": options.to_dict(),
            "init": init_named,
        }  # fmt: skip
        history: list[dict[str, Any]] = []
        best_acc, best_epoch, stale = -1.0, -1, 0
        stopped_early = stopped = False
        samples = 0
        started = time.perf_counter()
        with oom_as_one_line(batch_size, trainer.device):
            for epoch in range(options.epochs):
                stats = run_epoch(
                    trainer, train, epoch=epoch, batch_size=batch_size, seed=options.seed,
                    emit=emit, transform=transform, should_stop=should_stop,
                )  # fmt: skip
                samples += stats["samples"]
                stopped = bool(stats.pop("stopped", False))
                if stopped and stats["samples"] == 0 and history:
                    break  # stopped before this epoch's first batch: nothing new to keep
                summary: dict[str, Any] = {
                    "epoch": epoch,
                    "train": stats,
                    "val": evaluate(trainer, val, batch_size=batch_size),
                    "seconds": time.perf_counter() - started,
                }
                improved = summary["val"]["accuracy"] > best_acc
                summary["best"] = improved
                history.append(summary)
                _append_history(out / HISTORY, history)
                emit("epoch", summary)
                if improved:
                    best_acc, best_epoch, stale = summary["val"]["accuracy"], epoch, 0
                    save_checkpoint(trainer, out / CHECKPOINT, meta={**meta, "best_epoch": epoch,
                                    "val_accuracy": best_acc})  # fmt: skip
                else:
                    stale += 1
                save_checkpoint(trainer, out / LAST, meta={**meta, "best_epoch": best_epoch,
                                "last_epoch": epoch})  # fmt: skip
                if stopped:
                    break
                if options.patience is not None and stale >= options.patience:
                    stopped_early = True
                    emit("early_stop", {
                        "epoch": epoch, "best_epoch": best_epoch, "best_val_accuracy": best_acc,
                        "patience": options.patience,
                    })  # fmt: skip
                    break
        seconds = time.perf_counter() - started
        best, _ = load_checkpoint(out / CHECKPOINT, device=trainer.device)
        report = _report(best, test, batch_size)
        report["best_epoch"] = best_epoch
        emit("report", report)
        files, notes = _write_outputs(best, report, out)
        return {
            "samples_seen": samples,
            "seconds": seconds,
            "samples_per_s": samples / max(seconds, 1e-9),
            "history": history,
            "final": history[-1] if history else None,
            "best_epoch": best_epoch,
            "best_val_accuracy": best_acc,
            "stopped_early": stopped_early,
            "stopped": stopped,
            "batch_size": batch_size,
            "batch_size_reason": fit.reason,
            "device": trainer.device,
            "report": report,
            "files": files,
            "notes": notes,
        }


def _load_splits(dataset: Path, image_size: int) -> tuple[Dataset, Dataset, Dataset]:
    from edgewire.data.datasets import load_dataset
    from edgewire.data.images import LABELS_FILE

    if not (dataset / LABELS_FILE).is_file():
        raise DataError(
            f"{str(dataset)!r} is not a split folder (no {LABELS_FILE}); "
            "run `edgewire project split` first"
        )
    splits = {
        name: load_dataset(str(dataset), image_size=image_size, split=name)
        for name in ("train", "val", "test")
    }
    train = splits["train"]
    for name in ("val", "test"):
        if splits[name].classes != train.classes or splits[name].shape != train.shape:
            raise DataError(f"{str(dataset)!r}: the {name} split does not match the train split")
    return train, splits["val"], splits["test"]


def _make_trainer(train: Dataset, options: FolderOptions) -> Trainer:
    from edgewire.train.stream_client import spec_for
    from edgewire.train.trainer import Trainer, TrainSpec

    spec = spec_for(train, model=options.model, optimizer=options.optimizer, lr=options.lr,
                    seed=options.seed)  # fmt: skip
    return Trainer(TrainSpec.from_dict({**spec, "device": options.device}))


def _init_from(trainer: Trainer, path: Path) -> dict[str, Any]:
    """Copy the tensors of checkpoint ``path`` whose name and shape match into ``trainer``."""
    from edgewire.train.checkpoint import load_checkpoint

    source, _ = load_checkpoint(path, device="cpu")
    if source.spec.model != trainer.spec.model:
        raise ConfigError(
            f"--init {str(path)!r} holds a {source.spec.model!r} model, not "
            f"{trainer.spec.model!r}; pass --model {source.spec.model}"
        )
    saved = source.model.state_dict()
    current = trainer.model.state_dict()
    loaded = {k: v for k, v in saved.items() if k in current and v.shape == current[k].shape}
    fresh = sorted(set(current) - set(loaded))
    if not loaded:
        raise ConfigError(
            f"--init {str(path)!r} shares no weights with this model (another input size "
            "or channel count?); train it at the checkpoint's --size"
        )
    trainer.model.load_state_dict({**current, **loaded}, strict=True)
    return {"path": str(path), "loaded": len(loaded), "new": fresh,
            "new_head": source.spec.num_classes != trainer.spec.num_classes}  # fmt: skip


def _augment(options: FolderOptions) -> Callable[[Any, int, int], Any]:
    from edgewire.train.augment import Augment

    return Augment(flip=options.flip, seed=options.seed)


@contextmanager
def _made_dir(out: Path) -> Iterator[None]:
    """Make ``out``; if the run fails before writing anything, remove it again."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):  # not empty: keep what was written whole
                out.rmdir()
        raise


def _append_history(path: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole each epoch: a crash leaves the previous complete file.
    text = "".join(json.dumps(h, allow_nan=False) + "\n" for h in history)
    fsutil.atomic_write_bytes(path, text.encode())


def _report(trainer: Trainer, test: Dataset, batch_size: int) -> dict[str, Any]:
    import numpy as np

    from edgewire.train.report import classification_report

    parts = [trainer.predict(test.x[i : i + batch_size]).argmax(axis=1)
             for i in range(0, len(test), batch_size)]  # fmt: skip
    return classification_report(test.y, np.concatenate(parts), test.classes)


def _write_outputs(
    trainer: Trainer, report: dict[str, Any], out: Path
) -> tuple[dict[str, str], list[str]]:
    from edgewire.train.report import confusion_text, write_confusion_png

    trainer.export_onnx(out / ONNX)
    fsutil.atomic_write_bytes(out / REPORT, (json.dumps(report, indent=2) + "\n").encode())
    fsutil.atomic_write_bytes(out / CONFUSION_TXT, confusion_text(report).encode())
    names = {"checkpoint": CHECKPOINT, "last": LAST, "onnx": ONNX, "history": HISTORY,
             "report": REPORT, "confusion_txt": CONFUSION_TXT}  # fmt: skip
    notes = []
    skipped = write_confusion_png(report, out / CONFUSION_PNG)
    if skipped is None:
        names["confusion_png"] = CONFUSION_PNG
    else:
        notes.append(skipped)
    return {key: str(out / name) for key, name in names.items()}, notes
