"""Training a split student from its teacher, in the two stages of sc2-benchmark.

1. Head-network distillation: the head, encoder and decoder learn to reproduce
   the teacher's features at the cut (mean squared error); the tail is frozen.
2. Knowledge-distillation fine-tuning: the whole student learns the teacher's
   softened outputs (KL divergence at temperature T) and the labels.

Inputs are uint8 N×C×H×W images, scaled to 0..1 here, as the trainer does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from edgewire.split.model import SplitModel, stages

Progress = Callable[[str, int, float], None]
"""Called after each batch with (stage, batch number, loss)."""


@dataclass(frozen=True, kw_only=True)
class DistillPlan:
    head_epochs: int = 3
    kd_epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-3
    temperature: float = 4.0
    #: Weight of the KL term against the label cross-entropy in stage 2.
    kd_weight: float = 0.7
    #: Weight of the rate penalty (the mean bottleneck value, pushing codes towards 0,
    #: which the entropy coder then codes in fewer bits), in both stages.
    rate_weight: float = 0.0
    seed: int = 0


def _batches(n: int, size: int, rng: np.random.Generator) -> list[NDArray[np.intp]]:
    order = rng.permutation(n)
    return [order[i : i + size] for i in range(0, n, size)]


def _tensor(x: NDArray[np.uint8]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32) / 255.0


def teacher_features(teacher: nn.Module, at: str, x: torch.Tensor) -> torch.Tensor:
    """The teacher's feature map after stage ``at``."""
    for name, stage in stages(teacher):
        x = stage(x)
        if name == at:
            return x
    raise KeyError(at)


def distill(
    teacher: nn.Module,
    student: SplitModel,
    x: NDArray[np.uint8],
    y: NDArray[np.int64],
    *,
    plan: DistillPlan | None = None,
    progress: Progress | None = None,
) -> None:
    """Train ``student`` from ``teacher`` on (x, y) in place; the teacher is not changed."""
    plan = plan or DistillPlan()
    torch.manual_seed(plan.seed)
    rng = np.random.default_rng(plan.seed)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    at = student.spec.at
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))

    # Stage 1: head-network distillation, tail frozen.
    for p in student.tail.parameters():
        p.requires_grad_(False)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=plan.lr)
    student.train()
    student.tail.eval()
    step = 0
    for _ in range(plan.head_epochs):
        for idx in _batches(len(x), plan.batch_size, rng):
            xb = _tensor(x[idx])
            with torch.no_grad():
                target = teacher_features(teacher, at, xb)
            z = student.bottleneck(xb)
            loss = F.mse_loss(student.features(xb, z), target) + plan.rate_weight * z.mean()
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            step += 1
            if progress is not None:
                progress("head", step, loss.item())

    # Stage 2: knowledge distillation on the teacher's outputs, everything trainable.
    for p in student.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(student.parameters(), lr=plan.lr / 2)
    student.train()
    t = plan.temperature
    step = 0
    for _ in range(plan.kd_epochs):
        for idx in _batches(len(x), plan.batch_size, rng):
            xb = _tensor(x[idx])
            with torch.no_grad():
                soft = F.log_softmax(teacher(xb) / t, dim=1)
            z = student.bottleneck(xb)
            logits = student.tail(student.features(xb, z))
            kd = F.kl_div(
                F.log_softmax(logits / t, dim=1), soft, log_target=True, reduction="batchmean"
            )
            loss = (
                plan.kd_weight * kd * t * t
                + (1 - plan.kd_weight) * F.cross_entropy(logits, labels[idx])
                + plan.rate_weight * z.mean()
            )
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            step += 1
            if progress is not None:
                progress("kd", step, loss.item())
    student.eval()


def accuracy(
    model: nn.Module, x: NDArray[np.uint8], y: NDArray[np.int64], *, batch: int = 256
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 images."""
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            pred = model(_tensor(x[i : i + batch])).argmax(dim=1).numpy()
            correct += int((pred == y[i : i + batch]).sum())
    model.train(was)
    return correct / max(len(x), 1)
