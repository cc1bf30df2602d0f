"""``edgewire split build``: a trained teacher in; a head, a tail and the whole model out.

Two steps, so that bad input is refused before anything is written:

1. :func:`plan_build` reads the checkpoint (a file, or a run folder holding
   ``checkpoint.safetensors``), the data (``--data``, else the name the
   checkpoint's meta saved) and checks the split point, the bottleneck width,
   the quantisation and the output folder. It writes nothing.
2. :func:`run_build` distills the student (head-network distillation, then KD
   fine-tuning), measures both models on the held-out split, measures the
   coder's prior on the student's uint8 codes of the training split, and writes
   into the output folder:

   - ``head.onnx`` and ``tail.onnx``, both carrying the prior (``PRIOR_KEY``)
     beside the split's own metadata;
   - ``full.onnx``, the teacher, for a device to fall back on;
   - ``split.json``, the summary (see :func:`summary`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from edgewire import fsutil
from edgewire.data.datasets import Dataset, load_dataset
from edgewire.errors import CheckpointError, ConfigError, DataError
from edgewire.split import codec
from edgewire.split.codec import DEFAULT_LEVELS
from edgewire.split.distill import DistillPlan, Progress, accuracy, distill
from edgewire.split.export import HEAD_FILE, TAIL_FILE, export_split
from edgewire.split.model import ZERO_POINT, SplitModel, SplitSpec
from edgewire.train.checkpoint import load_checkpoint
from edgewire.train.session import CHECKPOINT_NAME
from edgewire.train.trainer import Trainer

QUANTS = ("uint8",)
FULL_FILE, SUMMARY_FILE = "full.onnx", "split.json"
FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """What to build; ``data``/``image_size`` of None take the checkpoint's meta."""

    at: str
    channels: int = 4
    levels: int = DEFAULT_LEVELS
    quant: str = "uint8"
    data: str | None = None
    image_size: int | None = None
    limit: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    plan: DistillPlan = field(default_factory=DistillPlan)


@dataclass(frozen=True, kw_only=True)
class BuildJob:
    """Everything :func:`run_build` needs, checked; nothing written yet."""

    checkpoint: Path
    out: Path
    options: BuildOptions
    trainer: Trainer
    student: SplitModel
    data: str
    train: Dataset
    val: Dataset

    @property
    def steps(self) -> dict[str, int]:
        """Batches of each distillation stage ("head", "kd"), for progress bars."""
        plan = self.options.plan
        per_epoch = math.ceil(len(self.train) / plan.batch_size)
        return {"head": plan.head_epochs * per_epoch, "kd": plan.kd_epochs * per_epoch}


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    head: Path
    tail: Path
    full: Path
    summary_path: Path
    summary: dict[str, Any]
    student: SplitModel
    prior: codec.Prior


def resolve_checkpoint(source: Path) -> Path:
    """The checkpoint file ``source`` names: itself, or a run folder's checkpoint."""
    source = Path(source)
    if source.is_dir():
        path = source / CHECKPOINT_NAME
        if not path.is_file():
            raise CheckpointError(
                f"{str(source)!r} is a folder without {CHECKPOINT_NAME}; "
                "give a checkpoint file or a training run's folder"
            )
        return path
    if not source.is_file():
        raise CheckpointError(f"no checkpoint file or run folder at {str(source)!r}")
    return source


def load_teacher(source: Path) -> tuple[Trainer, dict[str, Any], Path]:
    """(trainer on the CPU with its model in eval mode, the checkpoint's meta, its path)."""
    path = resolve_checkpoint(source)
    trainer, meta = load_checkpoint(path, device="cpu")
    trainer.model.eval()
    return trainer, meta, path


def input_shape(trainer: Trainer) -> tuple[int, int, int]:
    spec = trainer.spec
    return (spec.in_channels, spec.height, spec.width)


def plan_build(source: Path, out: Path, options: BuildOptions) -> BuildJob:
    """Check everything and load the teacher and the data; writes nothing."""
    if options.quant not in QUANTS:
        raise ConfigError(
            f"unknown --quant {options.quant!r}; the one choice now is {', '.join(QUANTS)}"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder")
    split_spec = SplitSpec(at=options.at, channels=options.channels, levels=options.levels)
    trainer, meta, path = load_teacher(source)
    shape = input_shape(trainer)
    torch.manual_seed(options.seed)
    student = SplitModel(trainer.model, split_spec, input_shape=shape)
    data = options.data or meta.get("data")
    if not isinstance(data, str) or not data:
        raise ConfigError(
            f"checkpoint {str(path)!r} does not say what it was trained on; give --data"
        )
    image_size = options.image_size
    if image_size is None and options.data is None and isinstance(meta.get("image_size"), int):
        image_size = meta["image_size"]
    dataset = load_dataset(data, image_size=image_size, limit=options.limit)
    classes = trainer.spec.num_classes
    if dataset.shape != shape or dataset.num_classes != classes:
        c, h, w = dataset.shape
        raise DataError(
            f"data {data!r} is {c}×{h}×{w} with {dataset.num_classes} classes; the teacher takes "
            f"{'×'.join(map(str, shape))} with {classes} classes (give the data it was trained on)"
        )
    train, val = dataset.split(val_fraction=options.val_fraction, seed=options.seed)
    return BuildJob(
        checkpoint=path, out=out, options=options, trainer=trainer, student=student,
        data=data, train=train, val=val,
    )  # fmt: skip


def codes(model: SplitModel, x: NDArray[np.uint8], *, batch: int = 256) -> NDArray[np.uint8]:
    """The uint8 bottleneck codes (N×C×H×W) of uint8 images, as the head computes them."""
    model.eval()
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch])).to(torch.float32) / 255
            parts.append(model.encode(xb).numpy())
    return np.concatenate(parts)


def bytes_per_sample(q: NDArray[np.uint8], prior: codec.Prior) -> dict[str, float]:
    """Mean coded size of one sample's codes, each sample coded on its own (one request)."""
    return {
        coder: float(
            np.mean([len(codec.encode(q[i : i + 1], coder, prior)) for i in range(len(q))])
        )
        for coder in codec.TENSOR_CODERS
    }


def summary(job: BuildJob, *, teacher_acc: float, student_acc: float,
            sizes: Mapping[str, float]) -> dict[str, Any]:  # fmt: skip
    """What ``split.json`` holds; ``bytes_per_sample`` has the input's size and, per coder,
    the mean size of one held-out sample's codes coded on their own (one request)."""
    student = job.student
    return {
        "format": FORMAT,
        "model": job.trainer.spec.model,
        "at": student.spec.at,
        "channels": student.spec.channels,
        "input_shape": list(student.input_shape),
        "feature_shape": list(student.feature_shape),
        "bottleneck_shape": list(student.bottleneck_shape),
        "quant": {
            "dtype": job.options.quant,
            "scale": student.scale,
            "zero_point": ZERO_POINT,
            "levels": student.spec.levels,
        },
        "classes": list(job.train.classes),
        "data": job.data,
        "train_samples": len(job.train),
        "val_samples": len(job.val),
        "teacher_acc": teacher_acc,
        "student_acc": student_acc,
        "bytes_per_sample": {"input": int(np.prod(student.input_shape)), **sizes},
        "files": {"head": HEAD_FILE, "tail": TAIL_FILE, "full": FULL_FILE},
    }


def run_build(job: BuildJob, *, progress: Progress | None = None) -> BuildResult:
    """Distill, measure and export (see the module docstring)."""
    teacher, student = job.trainer.model, job.student
    distill(teacher, student, job.train.x, job.train.y, plan=job.options.plan, progress=progress)
    teacher_acc = accuracy(teacher, job.val.x, job.val.y)
    student_acc = accuracy(student, job.val.x, job.val.y)
    prior = codec.Prior.measure(codes(student, job.train.x), levels=student.spec.levels)
    sizes = bytes_per_sample(codes(student, job.val.x), prior)
    job.out.mkdir(parents=True, exist_ok=True)
    head, tail = export_split(student, job.out, extra={codec.PRIOR_KEY: prior.to_json()})
    full = job.trainer.export_onnx(job.out / FULL_FILE)
    body = summary(job, teacher_acc=teacher_acc, student_acc=student_acc, sizes=sizes)
    summary_path = job.out / SUMMARY_FILE
    text = json.dumps(body, indent=2, allow_nan=False) + "\n"
    fsutil.atomic_write_bytes(summary_path, text.encode(), what=f"write {SUMMARY_FILE}")
    return BuildResult(
        head=head, tail=tail, full=full, summary_path=summary_path, summary=body,
        student=student, prior=prior,
    )  # fmt: skip
