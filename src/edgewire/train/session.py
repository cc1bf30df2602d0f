"""Device side of a streaming training run: state, dedupe, checkpoints and resume.

A run is a sequence of batches numbered 0, 1, 2, ... (``seq``). Each epoch is its
train batches followed by its held-out (val) batches. The device applies batch
``next_seq`` and nothing else: a batch it has already applied (a resend after a
reconnect) is acknowledged as a duplicate and not trained on; a gap is an error.
Checkpoints record ``next_seq``, so after a restart the host resumes exactly
where the last checkpoint left off and no batch is counted twice.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgewire.errors import BusyError, ConfigError, ProtocolError, TrainError
from edgewire.fsutil import atomic_write_bytes, disk_errors

if TYPE_CHECKING:
    from edgewire.train.trainer import EvalResult, Trainer, TrainSpec

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CHECKPOINT_NAME = "checkpoint.safetensors"
ONNX_NAME = "model.onnx"


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What the host promises to send, fixed for the life of a run."""

    epochs: int
    train_batches: int
    val_batches: int
    checkpoint_every: int

    @property
    def batches_per_epoch(self) -> int:
        return self.train_batches + self.val_batches

    @property
    def total(self) -> int:
        return self.epochs * self.batches_per_epoch

    @classmethod
    def from_dict(cls, d: Any) -> RunPlan:
        if not isinstance(d, dict):
            raise ConfigError("the run plan must be an object")
        try:
            plan = cls(
                epochs=_int(d, "epochs", 1, 100_000),
                train_batches=_int(d, "train_batches", 1, 10_000_000),
                val_batches=_int(d, "val_batches", 0, 10_000_000),
                checkpoint_every=_int(d, "checkpoint_every", 0, 10_000_000),
            )
        except KeyError as exc:
            raise ConfigError(f"the run plan lacks {exc.args[0]!r}") from exc
        return plan

    def locate(self, seq: int) -> tuple[int, str, int]:
        """(epoch, "train"|"val", index within that split) of batch ``seq``."""
        epoch, pos = divmod(seq, self.batches_per_epoch)
        if pos < self.train_batches:
            return epoch, "train", pos
        return epoch, "val", pos - self.train_batches


def _int(d: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = d[key]
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


@dataclass(slots=True)
class Metrics:
    """Running sums for one epoch of one split."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0

    def add(self, loss_sum: float, correct: int, count: int) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.count += count

    def summary(self) -> dict[str, float | None]:
        n = max(self.count, 1)
        return {
            "loss": _finite_or_none(self.loss_sum / n),
            "accuracy": self.correct / n,
            "samples": self.count,
        }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(slots=True)
class RunState:
    run_id: str
    run_dir: Path
    plan: RunPlan
    trainer: Trainer
    next_seq: int = 0
    samples_seen: int = 0
    train_epoch: Metrics = field(default_factory=Metrics)
    val_epoch: Metrics = field(default_factory=Metrics)
    history: list[dict[str, Any]] = field(default_factory=list)
    attached: bool = False
    started: float = field(default_factory=time.monotonic)
    detached_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.next_seq >= self.plan.total

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "plan": asdict(self.plan),
            "next_seq": self.next_seq,
            "samples_seen": self.samples_seen,
            "train_epoch": asdict(self.train_epoch),
            "val_epoch": asdict(self.val_epoch),
            "history": self.history,
        }


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    seq: int
    epoch: int
    split: str
    loss: float
    correct: int
    count: int
    step_ms: float
    memory_bytes: int
    duplicate: bool = False
    #: Samples trained in the run once this batch was applied.
    samples_seen: int = 0
    #: Set when this batch closed an epoch: that epoch's summary.
    epoch_summary: dict[str, Any] | None = None
    checkpointed: bool = False

    def feedback(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "epoch": self.epoch,
            "split": self.split,
            "loss": _finite_or_none(self.loss),  # an eval batch may overflow: JSON has no NaN
            "accuracy": self.correct / self.count if self.count else 0.0,
            "count": self.count,
            "step_ms": round(self.step_ms, 3),
            "memory_bytes": self.memory_bytes,
            "duplicate": self.duplicate,
            "samples_seen": self.samples_seen,
            "checkpointed": self.checkpointed,
        }


#: Runs held in memory at once (streaming, or left unfinished for a quick resume).
#: Past it, the run left longest ago is checkpointed to disk and let go.
MAX_LIVE_RUNS = 3


class RunRegistry:
    """The runs this agent knows; at most one stream attached to a run at a time.

    Memory is bounded: a run left before its first batch is forgotten at once
    (nothing to resume), and at most ``max_live`` runs stay in memory; an
    unfinished one beyond that is checkpointed and resumes from disk.
    """

    def __init__(self, root: Path, *, max_live: int = MAX_LIVE_RUNS) -> None:
        self.root = root
        self.max_live = max_live
        self._live: dict[str, RunState] = {}

    def run_dir(self, run_id: str) -> Path:
        if not RUN_ID.match(run_id):
            raise ConfigError(
                f"run id {run_id!r} must be 1-64 letters, digits, '.', '_' or '-' "
                "and start with a letter or digit"
            )
        return self.root / run_id

    def open(
        self, *, run_id: str, spec: TrainSpec, plan: RunPlan, resume: bool
    ) -> tuple[RunState, bool]:
        """Attach to a run: the live one, its last checkpoint, or a new one.

        Returns the state and whether it was resumed.
        """
        from edgewire.train.trainer import Trainer

        run_dir = self.run_dir(run_id)
        live = self._live.get(run_id)
        if live is not None and live.attached:
            raise BusyError(f"run {run_id!r} is already streaming from another connection")
        checkpoint = run_dir / CHECKPOINT_NAME
        if resume and live is not None:
            self._check_same(live, spec, plan)
            state, resumed = live, True
        elif resume and checkpoint.exists():
            self._make_room()
            state = self._load(run_id, run_dir, checkpoint)
            self._check_same(state, spec, plan)
            resumed = True
        elif not resume and (live is not None or checkpoint.exists()):
            raise ConfigError(
                f"run {run_id!r} already exists; pass --resume to continue it "
                "or --run-id to start another"
            )
        else:
            self._make_room()
            state = RunState(run_id=run_id, run_dir=run_dir, plan=plan, trainer=Trainer(spec))
            run_json = json.dumps({"spec": spec.to_dict(), "plan": asdict(plan)}, indent=2)
            with disk_errors("start the run", default=TrainError):
                run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(run_dir / "run.json", run_json.encode(), what="start the run")
            resumed = False
        state.plan = plan
        state.attached = True
        self._live[run_id] = state
        return state, resumed

    def detach(self, state: RunState) -> None:
        state.attached = False
        state.detached_at = time.monotonic()
        if state.finished:
            self._live.pop(state.run_id, None)
        elif state.next_seq == 0:
            # Nothing trained: nothing to resume, so nothing is kept, in memory or on disk.
            self._live.pop(state.run_id, None)
            if not (state.run_dir / CHECKPOINT_NAME).exists():
                shutil.rmtree(state.run_dir, ignore_errors=True)

    def prune_finished(self, keep: int) -> list[str]:
        """Remove finished runs (those with an ONNX model: streamed ones and BTS0
        sessions alike) beyond the ``keep`` newest, oldest first; a run in memory
        is never removed. Returns the names removed (blocking: training thread)."""
        finished: list[tuple[float, str, Path]] = []
        try:
            folders = list(self.root.iterdir())
        except OSError:
            return []
        for folder in folders:
            try:
                if folder.is_symlink() or not folder.is_dir():
                    continue
                finished.append(((folder / ONNX_NAME).stat().st_mtime, folder.name, folder))
            except OSError:
                continue  # not finished (no ONNX model yet), or gone meanwhile
        finished.sort(reverse=True)
        removed = []
        for _, name, folder in finished[max(keep, 0) :]:
            if name in self._live:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(name)
        return removed

    def _make_room(self) -> None:
        """Checkpoint and let go of left runs until a new one fits (blocking: training thread)."""
        while len(self._live) >= self.max_live:
            left = [st for st in list(self._live.values()) if not st.attached]
            if not left:
                raise BusyError(
                    f"{len(self._live)} training runs are streaming already; try again later"
                )
            oldest = min(left, key=lambda st: st.detached_at)
            if oldest.next_seq:
                save_run_checkpoint(oldest)
            self._live.pop(oldest.run_id, None)

    @staticmethod
    def _check_same(state: RunState, spec: TrainSpec, plan: RunPlan) -> None:
        # How often to checkpoint may change on resume; what the batches are may not.
        same_batches = replace(state.plan, checkpoint_every=0) == replace(plan, checkpoint_every=0)
        if state.trainer.spec.to_dict() != spec.to_dict() or not same_batches:
            raise ConfigError(
                f"run {state.run_id!r} was started with other settings; "
                "resume it with the same model, data and batch size, or use a new --run-id"
            )

    @staticmethod
    def _load(run_id: str, run_dir: Path, checkpoint: Path) -> RunState:
        from edgewire.train.checkpoint import load_checkpoint

        trainer, meta = load_checkpoint(checkpoint)
        try:
            state = RunState(
                run_id=run_id,
                run_dir=run_dir,
                plan=RunPlan.from_dict(meta["plan"]),
                trainer=trainer,
                next_seq=int(meta["next_seq"]),
                samples_seen=int(meta["samples_seen"]),
                train_epoch=Metrics(**meta["train_epoch"]),
                val_epoch=Metrics(**meta["val_epoch"]),
                history=list(meta["history"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainError(f"checkpoint of run {run_id!r} lacks its run state: {exc}") from exc
        return state


def apply_batch(
    state: RunState, *, seq: int, x: npt.NDArray[Any], y: npt.NDArray[Any]
) -> BatchOutcome:
    """Train or evaluate on batch ``seq`` (blocking: run it off the event loop)."""
    if seq < state.next_seq:
        epoch, split, _ = state.plan.locate(seq)
        return BatchOutcome(
            seq=seq, epoch=epoch, split=split, loss=0.0, correct=0, count=0,
            step_ms=0.0, memory_bytes=0, duplicate=True, samples_seen=state.samples_seen,
        )  # fmt: skip
    if seq != state.next_seq:
        raise ProtocolError(f"batch {seq} arrived but batch {state.next_seq} was expected")
    if state.finished:
        raise ProtocolError(f"batch {seq} is past the end of the run ({state.plan.total} batches)")
    if not x.flags.writeable:
        x = np.array(x)  # torch wants writable memory; the frame buffer is read-only
    if not y.flags.writeable:
        y = np.array(y)
    epoch, split, index = state.plan.locate(seq)
    if split == "train":
        step = state.trainer.train_step(x, y)
        loss, correct, count = step.loss, step.correct, step.count
        step_ms, memory = step.step_ms, step.memory_bytes
        state.train_epoch.add(loss * count, correct, count)
        state.samples_seen += count
    else:
        t0 = time.perf_counter()
        result: EvalResult = state.trainer.evaluate(x, y)
        step_ms = (time.perf_counter() - t0) * 1000
        loss, correct, count, memory = result.loss, result.correct, result.count, 0
        state.val_epoch.add(result.loss_sum, result.correct, result.count)
    state.next_seq = seq + 1
    epoch_summary = None
    if state.next_seq % state.plan.batches_per_epoch == 0:
        epoch_summary = {
            "epoch": epoch,
            "train": state.train_epoch.summary(),
            "val": state.val_epoch.summary() if state.plan.val_batches else None,
            "seconds": time.monotonic() - state.started,
        }
        state.history.append(epoch_summary)
        state.train_epoch, state.val_epoch = Metrics(), Metrics()
    checkpointed = False
    every = state.plan.checkpoint_every
    if epoch_summary is not None or (every and split == "train" and (index + 1) % every == 0):
        save_run_checkpoint(state)
        checkpointed = True
    return BatchOutcome(
        seq=seq, epoch=epoch, split=split, loss=loss, correct=correct, count=count,
        step_ms=step_ms, memory_bytes=memory, epoch_summary=epoch_summary,
        checkpointed=checkpointed, samples_seen=state.samples_seen,
    )  # fmt: skip


def save_run_checkpoint(state: RunState) -> Path:
    from edgewire.train.checkpoint import save_checkpoint

    path = state.run_dir / CHECKPOINT_NAME
    save_checkpoint(state.trainer, path, meta=state.checkpoint_meta())
    return path


def finish_run(state: RunState) -> dict[str, Any]:
    """Final checkpoint and ONNX export (blocking). Returns the summary."""
    checkpoint = save_run_checkpoint(state)
    onnx_path = state.trainer.export_onnx(state.run_dir / ONNX_NAME)
    last = state.history[-1] if state.history else None
    return {
        "run_id": state.run_id,
        "finished": state.finished,
        "next_seq": state.next_seq,
        "samples_seen": state.samples_seen,
        "steps": state.trainer.steps,
        "history": state.history,
        "final": last,
        "checkpoint": str(checkpoint),
        "onnx": str(onnx_path),
        "device": state.trainer.device,
    }
