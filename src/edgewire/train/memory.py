"""Batch sizes that fit the memory a small device has, and out-of-memory as one line.

On a GPU one forward+backward at two small batch sizes is measured
(``max_memory_allocated``), giving a fixed cost and a cost per sample. On a CPU
the same two figures are estimated without running anything: parameters,
gradients and Adam's two moments, plus every module's output (kept for the
backward pass, and its gradient) counted by forward hooks on the meta device.
The largest power of two that fits the budget is chosen, and the reason said.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgewire.errors import ConfigError, TrainError

if TYPE_CHECKING:
    import torch

    from edgewire.train.trainer import Trainer

#: The largest batch size chosen when none is asked for (beyond it, on the small data
#: sets of a workspace, an epoch is too few steps to learn from).
MAX_BATCH = 64
#: A chosen batch leaves at least this many batches an epoch, unless that would make
#: it smaller than ``MIN_BATCH``.
MIN_STEPS, MIN_BATCH = 8, 8
#: Share of the free memory a fitted batch may use: the rest is for the
#: allocator's slack, the evaluation chunks and whatever else the device runs.
SAFETY = 0.6
#: Bytes per sample beyond the model: the batch as uint8, float32 and augmented copies.
_INPUT_COPIES = 3


@dataclass(frozen=True, slots=True)
class Fit:
    """The batch size chosen, why, and the figures it came from."""

    batch_size: int
    reason: str
    fixed_bytes: int
    per_sample_bytes: int
    budget_bytes: int


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free bytes, or the host's MemAvailable."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available_bytes()


def host_available_bytes() -> int:
    """MemAvailable from /proc/meminfo (free plus reclaimable cache), else all pages."""
    import os

    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError):  # pragma: no cover - not POSIX
        return 1 << 30


def step_cost(trainer: Trainer) -> tuple[int, int]:
    """(fixed bytes, bytes per sample) of one training step of ``trainer``."""
    if next(trainer.model.parameters()).device.type == "cuda":
        return _measure_cuda(trainer)
    return _estimate_cpu(trainer)


def _input_bytes(trainer: Trainer) -> int:
    spec = trainer.spec
    return spec.in_channels * spec.height * spec.width * 4 * _INPUT_COPIES


def _estimate_cpu(trainer: Trainer) -> tuple[int, int]:
    import torch

    spec = trainer.spec
    params = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    # weights + gradients + Adam's exp_avg and exp_avg_sq (SGD keeps one buffer).
    fixed = params * (4 if spec.optimizer == "adam" else 3)
    probe = copy.deepcopy(trainer.model).to("meta")
    outputs = 0

    def count(_module: object, _inputs: object, output: object) -> None:
        nonlocal outputs
        if isinstance(output, torch.Tensor):
            outputs += output.numel() * output.element_size()

    # Leaf modules only: a container's output is its last child's, counted already.
    leaves = [m for m in probe.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            probe(torch.empty(1, spec.in_channels, spec.height, spec.width, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    # Each output is kept for backward and gets a gradient of the same size.
    return fixed, 2 * outputs + _input_bytes(trainer)


def _measure_cuda(trainer: Trainer) -> tuple[int, int]:
    import torch
    import torch.nn.functional as F

    spec = trainer.spec
    device = next(trainer.model.parameters()).device
    # A copy, so that batch norm's running statistics in the real model stay as they were.
    probe = copy.deepcopy(trainer.model).train()
    peaks = []
    small = 2
    with torch.random.fork_rng(devices=[device.index or 0]):
        for n in (small, 2 * small):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            x = torch.rand(n, spec.in_channels, spec.height, spec.width, device=device)
            y = torch.zeros(n, dtype=torch.long, device=device)
            torch.autograd.backward(F.cross_entropy(probe(x), y))
            probe.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
            del x, y
    per_sample = max((peaks[1] - peaks[0]) // small, 1) + _input_bytes(trainer)
    params = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    # The probe's peak holds its own gradients; Adam's moments come on the first step.
    fixed = max(peaks[0] - small * per_sample, 0) + params * 2
    del probe
    torch.cuda.empty_cache()
    return fixed, per_sample


def fit_batch_size(
    trainer: Trainer, *, asked: int | None, budget_bytes: int | None, n_train: int
) -> Fit:
    """The batch size to train with: ``asked`` if it fits, else the largest power of two
    (≤ ``asked``, or ≤ ``MAX_BATCH`` leaving ``MIN_STEPS`` batches an epoch) that fits ``budget_bytes`` (default: a share of the
    free memory). A TrainError in one line when not even one sample fits."""
    import torch

    device = torch.device(trainer.device)
    fixed, per_sample = step_cost(trainer)
    if budget_bytes is None:
        free = available_bytes(device)
        budget = int(free * SAFETY)
        where = f"{SAFETY:.0%} of the {free / 2**20:,.0f} MB free on {device}"
    else:
        budget = budget_bytes
        where = f"the {budget / 2**20:,.0f} MB memory budget"
    need = f"~{fixed / 2**20:,.1f} MB + {per_sample / 2**20:,.2f} MB a sample"

    def fits(batch: int) -> bool:
        return fixed + batch * per_sample <= budget

    if asked is not None and fits(asked):
        return Fit(asked, f"asked for, fits {where} ({need})", fixed, per_sample, budget)
    cap = asked if asked is not None else min(MAX_BATCH, max(MIN_BATCH, n_train // MIN_STEPS))
    batch = 1 << (cap.bit_length() - 1)
    while batch >= 1 and not fits(batch):
        batch //= 2
    if batch < 1:
        raise TrainError(
            f"out of memory: model {trainer.spec.model!r} at "
            f"{trainer.spec.height}×{trainer.spec.width} needs {need} but has {where}; "
            "use a smaller --size or model, or raise --memory-budget"
        )
    if asked is not None:
        reason = f"asked for {asked}, but only {batch} fits {where} ({need})"
    else:
        reason = (
            f"the largest power of two ≤ {cap} (at most {MAX_BATCH}, {MIN_STEPS}+ batches "
            f"an epoch) that fits {where} ({need})"
        )
    return Fit(batch, reason, fixed, per_sample, budget)


def check_data_size(images: int, image_size: int, max_bytes: int) -> int:
    """The bytes ``images`` images at ``image_size`` take once loaded (uint8, three
    channels at most), counted ``_INPUT_COPIES`` times for the copies training makes;
    a ConfigError naming the cap (``max_train_data_bytes``) if that is over it."""
    need = images * 3 * image_size * image_size * _INPUT_COPIES
    if need > max_bytes:
        raise ConfigError(
            f"{images:,} images at image_size {image_size} take about {need / 2**20:,.0f} MiB "
            f"in memory, over the agent's cap of {max_bytes / 2**20:,.0f} MiB "
            "(max_train_data_bytes); use a smaller image_size or fewer images"
        )
    return need


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's or the host's out-of-memory error."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is there whenever we train
        return False
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    # The CPU allocator raises a bare RuntimeError: its text is all that tells it apart.
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def out_of_memory_error(*, batch_size: int, device: str) -> TrainError:
    """The one line a user sees for an out-of-memory at ``batch_size`` on ``device``."""
    if batch_size > 1:
        hint = f"try --batch-size {batch_size // 2}"
    else:
        hint = "use a smaller --size or model"
    return TrainError(f"out of memory at batch size {batch_size} on {device}; {hint}")


@contextlib.contextmanager
def oom_as_one_line(batch_size: int, device: str) -> Iterator[None]:
    """Raise an out-of-memory of the block as ``out_of_memory_error``; others pass."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory_error(batch_size=batch_size, device=device) from exc
