"""The disk budget: data dir size and free space, the model size cap, pruning finished runs."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgewire.agent.disk import DiskBudget, tree_bytes
from edgewire.data.datasets import Dataset
from edgewire.errors import DiskFull, RemoteError, TrainError
from edgewire.train.models import build_model, model_bytes
from edgewire.train.session import ONNX_NAME, RunRegistry
from edgewire.train.stream_client import StreamOptions, stream_training
from edgewire.train.trainer import TrainSpec, check_model_size
from edgewire.wire.bts0 import encode_batch
from edgewire.wire.frames import MsgType
from edgewire.wire.stream import open_framed
from tests.helpers import agent_in_thread

TINY_SPEC: dict[str, Any] = {
    "model": "lenet5", "in_channels": 1, "height": 8, "width": 8, "num_classes": 2,
}  # fmt: skip
PLAN = {"epochs": 1, "train_batches": 1, "val_batches": 0, "checkpoint_every": 0}


def tiny_data() -> Dataset:
    x = np.random.default_rng(0).integers(0, 255, (8, 1, 8, 8), dtype=np.uint8)
    return Dataset(x=x, y=np.arange(8, dtype=np.int64) % 2, classes=("a", "b"), name="tiny")


# -- DiskBudget on its own ------------------------------------------------------------------


def test_check_names_the_budget_and_the_figures(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x" * 3000)
    budget = DiskBudget(tmp_path, max_bytes=4096, min_free_bytes=0)
    assert budget.used() == 3000
    budget.check(1000, "a run")
    with pytest.raises(DiskFull, match="max_disk_bytes") as info:
        budget.check(2000, "a training run")
    text = str(info.value)
    assert "a training run needs about 2.0 KiB" in text and "2.9 KiB of its 4.0 KiB" in text
    assert str(tmp_path) not in text  # a remote peer may read it
    huge = DiskBudget(tmp_path, max_bytes=2**60, min_free_bytes=2**60)
    with pytest.raises(DiskFull, match="min_free_disk_bytes"):
        huge.check(1, "an upload")


def test_the_size_is_cached_for_a_moment(tmp_path: Path) -> None:
    now = [0.0]
    budget = DiskBudget(tmp_path, max_bytes=10**9, min_free_bytes=0, clock=lambda: now[0])
    assert budget.used() == 0
    (tmp_path / "f").write_bytes(b"x" * 100)
    assert budget.used() == 0  # cached
    now[0] = 5.0
    assert budget.used() == 100
    (tmp_path / "g").write_bytes(b"x" * 10)
    budget.changed()  # a writer says so: measured again at once
    assert budget.used() == 110


def test_tree_bytes_does_not_follow_symlinks(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 10)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"x" * 1000)
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)
    assert tree_bytes(tmp_path) == 10


# -- the model size cap ----------------------------------------------------------------------


def test_model_bytes_are_counted_without_building_the_model() -> None:
    real = build_model("lenet5", in_channels=1, height=8, width=8, num_classes=2)
    want = sum(t.numel() * t.element_size() for t in [*real.parameters(), *real.buffers()])
    assert model_bytes("lenet5", in_channels=1, height=8, width=8, num_classes=2) == want
    # A large spec is measured on the meta device: no GB allocated to find its size.
    big = TrainSpec(
        model="resnet_small", in_channels=16, height=1024, width=1024, num_classes=10_000
    )
    with pytest.raises(
        TrainError, match=r"over the agent's cap of 1\.0 MiB \(max_train_model_bytes\)"
    ):
        check_model_size(big, 2**20)


# -- an agent with a budget ---------------------------------------------------------------


async def _begin_error(port: int, spec: dict[str, Any], run_id: str) -> RemoteError:
    stream = await open_framed("127.0.0.1", port)
    stream.send(MsgType.TRAIN_BEGIN, {"run_id": run_id, "spec": spec, "plan": PLAN})
    try:
        with pytest.raises(RemoteError) as info:
            await stream.read_message(30)
    finally:
        await stream.close()
    return info.value


def test_train_begin_is_refused_when_the_disk_budget_is_spent(tmp_path: Path) -> None:
    with agent_in_thread(tmp_path, max_disk_bytes=1024) as agent:
        error = asyncio.run(_begin_error(agent.native, TINY_SPEC, "full"))
    assert error.remote_code == "disk_full"
    assert "max_disk_bytes" in error.message and str(tmp_path) not in error.message
    assert not (tmp_path / "runs" / "full").exists()


def test_a_model_over_the_cap_is_refused_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgewire.train import trainer

    def no_trainer(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a Trainer was built for a model over the cap")

    monkeypatch.setattr(trainer.Trainer, "__init__", no_trainer)
    spec = {**TINY_SPEC, "model": "mnist_cnn", "height": 28, "width": 28}  # about 4.8 MB
    with agent_in_thread(tmp_path, max_train_model_bytes=2**20) as agent:
        error = asyncio.run(_begin_error(agent.native, spec, "big"))
    assert error.remote_code == "train"
    assert "max_train_model_bytes" in error.message and "1.0 MiB" in error.message
    assert not (tmp_path / "runs" / "big").exists()


def test_finished_runs_beyond_the_limit_are_pruned_oldest_first(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    # An old BTS0 session counts as a finished run too; an unfinished run is kept.
    old = runs / "bts0-20200101-000000-abcdef"
    old.mkdir()
    (old / ONNX_NAME).write_bytes(b"onnx")
    os.utime(old / ONNX_NAME, (1e9, 1e9))
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / "checkpoint.safetensors").write_bytes(b"ckpt")
    data = tiny_data()
    keep = 2
    with agent_in_thread(tmp_path, max_finished_runs=keep) as agent:
        for i in range(keep + 2):
            options = StreamOptions(run_id=f"run-{i}", spec=TINY_SPEC, batch_size=8)
            summary = asyncio.run(stream_training("127.0.0.1", agent.native, data, None, options))
            assert Path(summary["onnx"]).exists()
    assert sorted(p.name for p in runs.iterdir()) == ["run-2", "run-3", "unfinished"]


def test_pruning_never_removes_a_run_in_memory(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path)
    for i, name in enumerate(["a", "b", "c"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / ONNX_NAME).write_bytes(b"x")
        os.utime(tmp_path / name / ONNX_NAME, (1e9 + i, 1e9 + i))
    registry._live["a"] = object()  # type: ignore[assignment]  # the oldest, but open
    assert registry.prune_finished(1) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c"]


def _bts0_session(port: int) -> None:
    x = np.zeros((1, 784), np.float32)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(encode_batch(0, x, np.zeros(1, np.uint8)))
        reply = b""
        while b"OK" not in reply:
            chunk = sock.recv(4096)
            assert chunk, reply
            reply += chunk


def test_bts0_sessions_are_pruned_and_refused_when_the_disk_is_full(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    seen: set[str] = set()
    with agent_in_thread(tmp_path, legacy_ports={"bts0": 0}, max_finished_runs=1) as agent:
        for _ in range(3):
            _bts0_session(agent.port("bts0"))
            deadline = time.monotonic() + 60
            while not (names := {p.parent.name for p in runs.glob("bts0-*/" + ONNX_NAME)}) - seen:
                assert time.monotonic() < deadline, "the BTS0 session was not saved"
                time.sleep(0.05)
            seen |= names
            # The save and its pruning run on the training thread: let them finish.
            agent.agent.train_executor.submit(lambda: None).result(timeout=60)
        assert len(seen) == 3
        assert len(list(runs.glob("bts0-*"))) == 1
    with (
        agent_in_thread(tmp_path, legacy_ports={"bts0": 0}, max_disk_bytes=1024) as agent,
        socket.create_connection(("127.0.0.1", agent.port("bts0")), timeout=60) as sock,
    ):
        sock.sendall(encode_batch(0, np.zeros((1, 784), np.float32), np.zeros(1, np.uint8)))
        assert sock.recv(64) == b"ERR\n"


def test_an_upload_past_the_disk_budget_is_a_507_and_the_old_model_serves(tmp_path: Path) -> None:
    from tests.helpers import upload
    from tests.serve.models import linear_model

    small = tmp_path / "small.onnx"
    linear_model(small, in_features=8, out_features=2)
    big = tmp_path / "big.onnx"
    linear_model(big, in_features=784, out_features=10)  # ~31 kB
    with agent_in_thread(tmp_path / "agent", max_disk_bytes=40_000) as running:
        assert upload(running, small, "m").status_code == 201
        refused = upload(running, big, "m")
        assert refused.status_code == 507, refused.text
        assert refused.json()["code"] == "disk_full"
        assert "max_disk_bytes" in refused.json()["error"]
        assert not list((tmp_path / "agent" / "uploads").iterdir())
        listing = __import__("httpx").get(f"http://127.0.0.1:{running.http}/api/models").json()
        assert listing["models"][0]["serving"]["version"] == 1
