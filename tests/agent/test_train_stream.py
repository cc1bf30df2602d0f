"""Streaming training against a real agent: feedback, held-out eval, ONNX, resume, credits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgewire.data.datasets import Dataset, load_dataset
from edgewire.errors import RemoteError
from edgewire.train import stream_client
from edgewire.train.stream_client import StreamOptions, stream_training
from edgewire.wire.frames import MsgType
from edgewire.wire.stream import open_framed
from tests.helpers import RunningAgent, agent_in_thread


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    return load_dataset("digits").split(val_fraction=0.2, seed=0)


def spec_for(data: Dataset, model: str = "lenet5") -> dict[str, Any]:
    return stream_client.spec_for(data, model=model, lr=3e-3)


@pytest.fixture
def agent(tmp_path: Path):
    with agent_in_thread(tmp_path) as running:
        yield running


def test_stream_two_epochs_with_heldout_eval_and_onnx(
    agent: RunningAgent, digits: tuple[Dataset, Dataset]
) -> None:
    train, val = digits
    events: list[tuple[str, dict[str, Any]]] = []
    options = StreamOptions(
        run_id="digits-1", spec=spec_for(train), epochs=2, batch_size=32, window=4
    )
    summary = asyncio.run(
        stream_training(
            "127.0.0.1",
            agent.native,
            train,
            val,
            options,
            on_event=lambda k, d: events.append((k, d)),
        )
    )
    kinds = [k for k, _ in events]
    assert kinds[0] == "ready" and kinds[-1] == "summary"
    feedback = [d for k, d in events if k == "feedback"]
    n_train_batches = -(-len(train) // 32)
    n_val_batches = -(-len(val) // 32)
    assert len(feedback) == 2 * (n_train_batches + n_val_batches)
    assert [d["seq"] for d in feedback] == list(range(len(feedback)))
    assert not any(d["duplicate"] for d in feedback)
    assert summary["samples_seen"] == 2 * len(train)
    epochs = [d for k, d in events if k == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[1]["val"]["samples"] == len(val)
    assert epochs[1]["val"]["accuracy"] > 0.8  # real digits, really learned
    # The exported model answers like the device's model on the held-out data.
    session = ort.InferenceSession(summary["onnx"], providers=["CPUExecutionProvider"])
    logits = session.run(["output_0"], {"input_0": val.x.astype(np.float32) / 255})[0]
    assert (logits.argmax(1) == val.y).mean() == pytest.approx(
        epochs[1]["val"]["accuracy"], abs=1e-6
    )
    assert Path(summary["checkpoint"]).exists()


def test_reconnect_resumes_live_run_without_double_counting(
    agent: RunningAgent, digits: tuple[Dataset, Dataset]
) -> None:
    train, val = digits
    options = StreamOptions(
        run_id="digits-2", spec=spec_for(train), epochs=1, batch_size=16, window=4
    )
    seen: list[dict[str, Any]] = []

    class Cut(Exception):
        pass

    def cut_after_ten(kind: str, data: dict[str, Any]) -> None:
        if kind == "feedback":
            seen.append(data)
            if len(seen) == 10:
                raise Cut

    with pytest.raises(Cut):
        asyncio.run(
            stream_training("127.0.0.1", agent.native, train, val, options, on_event=cut_after_ten)
        )
    # Without --resume the run is refused rather than overwritten.
    with pytest.raises(RemoteError, match="--resume"):
        asyncio.run(stream_training("127.0.0.1", agent.native, train, val, options))
    events: list[tuple[str, dict[str, Any]]] = []
    resumed = StreamOptions(**{**options.__dict__, "resume": True})
    summary = asyncio.run(
        stream_training(
            "127.0.0.1",
            agent.native,
            train,
            val,
            resumed,
            on_event=lambda k, d: events.append((k, d)),
        )
    )
    ready = events[0][1]
    assert ready["resumed"] is True and ready["next_seq"] >= 10
    assert summary["samples_seen"] == len(train)  # every sample exactly once
    assert summary["finished"] is True


def test_resume_with_other_settings_is_refused(
    agent: RunningAgent, digits: tuple[Dataset, Dataset]
) -> None:
    train, val = digits
    options = StreamOptions(run_id="digits-3", spec=spec_for(train), epochs=1, batch_size=64)
    asyncio.run(stream_training("127.0.0.1", agent.native, train, val, options))
    other = StreamOptions(**{**options.__dict__, "resume": True, "batch_size": 32})
    with pytest.raises(RemoteError, match="other settings"):
        asyncio.run(stream_training("127.0.0.1", agent.native, train, val, other))


async def _begin(port: int, train: Dataset, run_id: str, window: int = 2) -> Any:
    stream = await open_framed("127.0.0.1", port)
    stream.send(
        MsgType.TRAIN_BEGIN,
        {
            "run_id": run_id,
            "spec": spec_for(train),
            "plan": {"epochs": 1, "train_batches": 50, "val_batches": 0, "checkpoint_every": 0},
            "window": window,
        },
    )
    got = await stream.read_message(30)
    assert got is not None and got[0].type is MsgType.TRAIN_READY
    return stream


def test_credit_overrun_is_a_protocol_error(
    agent: RunningAgent, digits: tuple[Dataset, Dataset]
) -> None:
    train, _ = digits

    async def go() -> None:
        stream = await _begin(agent.native, train, "overrun", window=1)
        # Big batches keep the training thread busy while more arrive.
        x, y = np.repeat(train.x[:64], 20, axis=0), np.repeat(train.y[:64], 20)
        for seq in range(40):
            stream.send(MsgType.TRAIN_BATCH, {"seq": seq}, [x, y])
        with pytest.raises(RemoteError, match="credit exceeded"):
            while True:
                got = await stream.read_message(30)
                assert got is not None
        await stream.close()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("meta", "tensors", "match"),
    [
        ({"seq": 0}, "nan", "NaN or Inf"),
        ({"seq": 5}, "ok", "batch 5 arrived but batch 0 was expected"),
        ({"seq": -1}, "ok", "non-negative"),
        ({"seq": 0}, "one", "carries 1 tensors"),
        ({"seq": 0}, "shape", "shape|size|expected"),
        ({"seq": 0}, "labels", "label"),
    ],
)
def test_bad_batches_get_clear_errors(
    agent: RunningAgent,
    digits: tuple[Dataset, Dataset],
    meta: dict[str, Any],
    tensors: str,
    match: str,
) -> None:
    train, _ = digits
    x, y = train.x[:4], train.y[:4]
    payloads = {
        "ok": [x, y],
        "nan": [np.full(x.shape, np.nan, np.float32), y],
        "one": [x],
        "shape": [np.zeros((4, 1, 9, 9), np.uint8), y],
        "labels": [x, np.full(4, 99, np.int64)],
    }

    async def go() -> None:
        stream = await _begin(agent.native, train, f"bad-{tensors}-{meta['seq']}")
        stream.send(MsgType.TRAIN_BATCH, meta, payloads[tensors])
        with pytest.raises(RemoteError, match=match):
            await stream.read_message(30)
        await stream.close()

    asyncio.run(go())


def test_a_loss_gone_nan_gets_an_error_frame_not_a_hang(
    agent: RunningAgent, digits: tuple[Dataset, Dataset]
) -> None:
    train, _ = digits
    huge = np.full(train.x[:4].shape, 3e38, np.float32)
    huge[:, :, ::2] *= -1  # finite, but the sums overflow: inf - inf in the first layer

    async def go() -> None:
        stream = await _begin(agent.native, train, "nan-loss")
        stream.send(MsgType.TRAIN_BATCH, {"seq": 0}, [huge, train.y[:4]])
        with pytest.raises(RemoteError, match="the loss is nan"):
            await stream.read_message(30)
        await stream.close()

    asyncio.run(go())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_an_agent_that_dies_mid_run_is_a_connection_error(
    digits: tuple[Dataset, Dataset], how: str
) -> None:
    """The agent's death (its socket closed or reset after TRAIN_READY) is a lost
    connection (ConnectError, exit 7), not a protocol error: the run can be resumed."""
    from edgewire.errors import ConnectError, ProtocolError
    from edgewire.wire.stream import FramedStream

    train, val = digits

    async def dying_agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = FramedStream(reader, writer)
        await stream.read_message(10)  # TRAIN_BEGIN
        stream.send(
            MsgType.TRAIN_READY,
            {"run_id": "dies", "resumed": False, "next_seq": 0, "samples_seen": 0,
             "window": 2, "device": "cpu", "total": 10},
        )  # fmt: skip
        await stream.drain(10)
        await stream.read_message(10)  # the first batch, then it dies
        if how == "abort":
            writer.transport.abort()
        else:
            writer.close()

    async def go() -> None:
        server = await asyncio.start_server(dying_agent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        options = StreamOptions(run_id="dies", spec=spec_for(train), batch_size=16, window=2)
        try:
            with pytest.raises(ConnectError) as info:
                await stream_training("127.0.0.1", port, train, val, options)
            assert not isinstance(info.value, ProtocolError)
        finally:
            server.close()

    asyncio.run(go())


def test_the_host_may_ask_for_the_trained_model_back(
    agent: RunningAgent, digits: tuple[Dataset, Dataset]
) -> None:
    """A host that trains elsewhere (an automation retrain on a training agent) gets the
    ONNX model in the summary, byte for byte what the agent exported."""
    train, val = digits
    options = StreamOptions(
        run_id="back", spec=spec_for(train), epochs=1, batch_size=64, return_model=True
    )
    summary = asyncio.run(stream_training("127.0.0.1", agent.native, train, val, options))
    model = summary["model"]
    assert summary["model_bytes"] == len(model)
    assert model == Path(summary["onnx"]).read_bytes()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = val.x[:4].astype(np.float32) / 255.0
    assert session.run(None, {"input_0": x})[0].shape == (4, 10)
    # Without asking, nothing but the meta comes back.
    plain = asyncio.run(
        stream_training("127.0.0.1", agent.native, train, None,
                        StreamOptions(run_id="plain", spec=spec_for(train), batch_size=64))
    )  # fmt: skip
    assert "model" not in plain and "model_bytes" not in plain


def _outcome(seq: int) -> Any:
    from edgewire.train.session import BatchOutcome

    return BatchOutcome(seq=seq, epoch=0, split="train", loss=0.1, correct=1, count=1,
                        step_ms=1.0, memory_bytes=0, samples_seen=seq + 1)  # fmt: skip


def test_feedback_goes_back_in_groups_only_while_the_trainer_is_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first answer goes at once; later ones wait for company only while at least a
    group's worth of batches is queued, so the host's credits never come back late."""
    import queue

    from edgewire.agent import train_stream

    monkeypatch.setattr(train_stream, "apply_batch", lambda state, *, seq, x, y: _outcome(seq))
    jobs: queue.Queue[Any] = queue.Queue()
    for seq in range(9):
        jobs.put((seq, None, None))
    jobs.put(None)
    posted: list[list[int]] = []
    train_stream._train_thread(None, jobs, lambda group: posted.append([o.seq for o in group]), 3)  # type: ignore[arg-type]
    # After batch 0, seven batches and the end marker are queued: 1-3 go together, 4-6
    # too; past that fewer than three wait, and each answer goes alone.
    assert posted == [[0], [1, 2, 3], [4, 5, 6], [7], [8]]


def test_what_was_trained_before_an_error_is_still_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import queue

    from edgewire.agent import train_stream

    def apply(state: Any, *, seq: int, x: Any, y: Any) -> Any:
        if seq == 3:
            raise RuntimeError("step failed")
        return _outcome(seq)

    monkeypatch.setattr(train_stream, "apply_batch", apply)
    jobs: queue.Queue[Any] = queue.Queue()
    for seq in range(8):
        jobs.put((seq, None, None))
    posted: list[list[int]] = []
    with pytest.raises(RuntimeError, match="step failed"):
        train_stream._train_thread(
            None, jobs, lambda group: posted.append([o.seq for o in group]), 4
        )  # type: ignore[arg-type]
    assert posted == [[0], [1, 2]]
