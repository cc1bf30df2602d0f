"""A real agent on loopback: health, metrics, hello/ping, bind safety, hostile peers."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest

from edgewire.agent.server import Agent
from edgewire.config import AgentConfig
from edgewire.errors import ConfigError, RemoteError
from edgewire.wire.frames import HEADER, MAGIC, FrameDecoder, MsgType, encode_frame
from edgewire.wire.messages import decode_message, encode_message
from edgewire.wire.stream import open_framed
from tests.helpers import RunningAgent, agent_in_thread


@pytest.fixture
def agent(tmp_path: Path):
    with agent_in_thread(tmp_path, frame_timeout=1.0, idle_timeout=5.0) as running:
        yield running


def test_health_and_metrics(agent: RunningAgent) -> None:
    base = f"http://127.0.0.1:{agent.http}"
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{base}/v2").json()["name"] == "edgewire"
    metrics = httpx.get(f"{base}/metrics")
    assert metrics.status_code == 200
    assert "edgewire_connections" in metrics.text


async def test_hello_and_ping(agent: RunningAgent) -> None:
    stream = await open_framed("127.0.0.1", agent.native)
    stream.send(MsgType.HELLO, {"client": "test"}, request_id=7)
    got = await stream.read_message(5)
    assert got is not None
    frame, message = got
    assert frame.type is MsgType.CAPABILITIES and frame.request_id == 7
    assert message.meta["protocol"] == 1 and "train.stream" in message.meta["features"]
    stream.send(MsgType.PING, {"n": 1}, request_id=8)
    got = await stream.read_message(5)
    assert got is not None and got[0].type is MsgType.PONG and got[1].meta == {"n": 1}
    await stream.close()


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes, half-close, and return everything the agent answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def error_of(answer: bytes) -> tuple[str, str]:
    frames = FrameDecoder().feed(answer)
    assert frames and frames[-1].type is MsgType.ERROR, answer
    meta = decode_message(frames[-1].payload).meta
    return meta["code"], meta["message"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (HEADER.pack(MAGIC, 1, 3, 0, 0, 1, 2**32 - 1, 0), "too_large"),
        (HEADER.pack(MAGIC, 1, 3, 0, 0, 1, 64 * 1024 * 1024 + 1, 0), "too_large"),
        (HEADER.pack(MAGIC, 9, 3, 0, 0, 1, 0, 0), "protocol"),
        (HEADER.pack(MAGIC, 1, 200, 0, 0, 1, 0, 0), "protocol"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "protocol"),
        (
            encode_frame(MsgType.PING, encode_message({})) + b"garbage-after-a-valid-frame",
            "protocol",
        ),
        (encode_frame(MsgType.PING, b"\x01\x00\x00\x00{"), "protocol"),
        (encode_frame(MsgType.TRAIN_FEEDBACK, encode_message({})), "protocol"),
        (encode_frame(MsgType.PING, b"abc")[:-1] + b"x", "checksum"),
    ],
)
def test_hostile_frames_get_an_error_and_others_are_served(
    agent: RunningAgent, data: bytes, code: str
) -> None:
    got_code, message = error_of(raw_exchange(agent.native, data))
    assert got_code == code, message
    # The agent keeps serving everyone else.
    answer = raw_exchange(agent.native, encode_frame(MsgType.PING, encode_message({"ok": 1})))
    (pong,) = FrameDecoder().feed(answer)
    assert pong.type is MsgType.PONG


def test_truncated_frame_then_close_is_not_fatal(agent: RunningAgent) -> None:
    raw_exchange(agent.native, encode_frame(MsgType.PING, encode_message({}))[:7])
    assert FrameDecoder().feed(
        raw_exchange(agent.native, encode_frame(MsgType.PING, encode_message({})))
    )


def test_slow_sender_is_dropped_within_frame_timeout(agent: RunningAgent) -> None:
    frame = encode_frame(MsgType.PING, encode_message({"pad": "x" * 100}))
    with socket.create_connection(("127.0.0.1", agent.native), timeout=10) as sock:
        started = time.monotonic()
        dropped = False
        for byte in frame:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                dropped = True
                break
            time.sleep(0.2)
            if time.monotonic() - started > 8:
                break
        if not dropped:
            sock.settimeout(5)
            try:
                data = sock.recv(65536)
                dropped = data == b"" or FrameDecoder().feed(data)[0].type is MsgType.ERROR
            except OSError:
                dropped = True
    assert dropped, "a 5-byte/s sender was never cut off"
    assert time.monotonic() - started < 8


def test_half_open_silent_client_is_dropped_after_idle_timeout(tmp_path: Path) -> None:
    with (
        agent_in_thread(tmp_path, idle_timeout=0.5) as running,
        socket.create_connection(("127.0.0.1", running.native), timeout=10) as sock,
    ):
        assert sock.recv(1) == b""  # closed by the agent, not by us


def test_refuses_non_loopback_bind_without_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without a token"):
        AgentConfig(host="0.0.0.0", data_dir=tmp_path).check_bind_safety()

    async def start() -> None:
        await Agent(AgentConfig(host="0.0.0.0", port=0, http_port=0, data_dir=tmp_path)).start()

    with pytest.raises(ConfigError, match="without a token"):
        asyncio.run(start())
    AgentConfig(host="0.0.0.0", token="s3cret-token", data_dir=tmp_path).check_bind_safety()


async def test_error_frames_become_remote_errors(agent: RunningAgent) -> None:
    stream = await open_framed("127.0.0.1", agent.native)
    stream.send(MsgType.TRAIN_BEGIN, {"run_id": "../escape", "spec": {}, "plan": {}})
    with pytest.raises(RemoteError):
        await stream.read_message(5)
    await stream.close()


def test_second_agent_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    with (
        agent_in_thread(tmp_path / "shared"),
        pytest.raises(ConfigError, match="in use by another agent"),
        agent_in_thread(tmp_path / "shared"),
    ):
        pass
    with agent_in_thread(tmp_path / "shared") as again:  # the lock went with the first agent
        assert httpx.get(f"http://127.0.0.1:{again.http}/v2/health/ready").status_code == 200


def test_partial_frames_share_one_memory_budget(tmp_path: Path) -> None:
    """Peers that each park most of a big frame cannot add up past max_buffered_bytes."""
    from edgewire.wire.frames import HEADER_SIZE, MsgType, encode_frame

    frame_bytes = 4 * 1024 * 1024
    with agent_in_thread(
        tmp_path / "agent", max_frame_bytes=frame_bytes, max_buffered_bytes=10 * 1024 * 1024
    ) as running:
        header = encode_frame(MsgType.PING, b"\0" * (frame_bytes - 64))[:HEADER_SIZE]
        socks = []
        try:
            for _ in range(3):  # 3 x 3 MiB parked: fits in 10 MiB
                sock = socket.create_connection(("127.0.0.1", running.native), timeout=10)
                sock.sendall(header + b"\0" * (3 * 1024 * 1024))
                socks.append(sock)
            time.sleep(0.5)
            assert running.agent.frame_budget.used >= 9 * 1024 * 1024
            over = socket.create_connection(("127.0.0.1", running.native), timeout=10)
            over.sendall(header + b"\0" * (3 * 1024 * 1024))  # the fourth would pass 10 MiB
            reply = b""
            while chunk := over.recv(65536):
                reply += chunk
            over.close()
            assert b"busy" in reply and b"too much data at once" in reply
        finally:
            for sock in socks:
                sock.close()
        deadline = time.monotonic() + 10
        while running.agent.frame_budget.used and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running.agent.frame_budget.used == 0  # all given back when they went
