"""The run registry keeps memory bounded: what a peer that opens runs and leaves can hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgewire.errors import BusyError
from edgewire.train.session import CHECKPOINT_NAME, RunPlan, RunRegistry, apply_batch
from edgewire.train.trainer import TrainSpec

SPEC = TrainSpec(model="lenet5", in_channels=1, height=28, width=28, num_classes=10)
PLAN = RunPlan(epochs=1, train_batches=10, val_batches=0, checkpoint_every=0)


def _batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (4, 1, 28, 28), dtype=np.uint8), np.arange(4)


def test_a_run_left_before_its_first_batch_leaves_nothing(tmp_path: Path) -> None:
    runs = RunRegistry(tmp_path)
    for i in range(10):
        state, _ = runs.open(run_id=f"r{i}", spec=SPEC, plan=PLAN, resume=False)
        runs.detach(state)
    assert runs._live == {}
    assert list(tmp_path.iterdir()) == []


def test_left_runs_past_the_limit_go_to_disk_and_still_resume(tmp_path: Path) -> None:
    runs = RunRegistry(tmp_path, max_live=2)
    x, y = _batch()
    for i in range(4):
        state, _ = runs.open(run_id=f"r{i}", spec=SPEC, plan=PLAN, resume=False)
        apply_batch(state, seq=0, x=x, y=y)
        runs.detach(state)
        assert len(runs._live) <= 2
    # r0 and r1 were let go: checkpointed, and they resume where they were.
    assert (tmp_path / "r0" / CHECKPOINT_NAME).exists()
    assert "r0" not in runs._live and "r3" in runs._live
    state, resumed = runs.open(run_id="r0", spec=SPEC, plan=PLAN, resume=True)
    assert resumed and state.next_seq == 1 and state.samples_seen == 4
    runs.detach(state)


def test_when_every_held_run_is_streaming_a_new_one_is_busy(tmp_path: Path) -> None:
    runs = RunRegistry(tmp_path, max_live=2)
    for i in range(2):
        runs.open(run_id=f"r{i}", spec=SPEC, plan=PLAN, resume=False)
    with pytest.raises(BusyError, match="2 training runs are streaming already"):
        runs.open(run_id="r2", spec=SPEC, plan=PLAN, resume=False)
