"""TimedReads: every read bounded by its own timeout, with one lazily re-armed timer."""

from __future__ import annotations

import asyncio
import time

import pytest

from edgewire.wire.stream import TimedReads


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_silent_peer_times_out_after_the_wait() -> None:
    async def go() -> float:
        reads = TimedReads(asyncio.StreamReader())
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await reads.read(10, 0.2)
        return time.monotonic() - began

    assert 0.15 < run(go()) < 2.0


def test_reads_with_data_never_time_out_and_the_timer_follows_the_latest_wait() -> None:
    async def go() -> list[bytes]:
        reader = asyncio.StreamReader()
        reads = TimedReads(reader)
        loop = asyncio.get_running_loop()
        got = []
        for i in range(6):  # each read waits 0.1 s of its 0.25 s: never expired
            loop.call_later(0.1, reader.feed_data, bytes([i]))
            got.append(await reads.read(10, 0.25))
        reads.cancel()
        return got

    assert run(go()) == [bytes([i]) for i in range(6)]


def test_a_shorter_wait_after_a_longer_one_fires_at_its_own_deadline() -> None:
    async def go() -> float:
        reader = asyncio.StreamReader()
        reads = TimedReads(reader)
        asyncio.get_running_loop().call_later(0.05, reader.feed_data, b"x")
        assert await reads.read(10, 30.0) == b"x"  # leaves a timer 30 s out
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await reads.read(10, 0.2)
        return time.monotonic() - began

    assert run(go()) < 2.0


def test_someone_elses_cancel_stays_a_cancel() -> None:
    async def go() -> None:
        reads = TimedReads(asyncio.StreamReader())
        task = asyncio.ensure_future(reads.read(10, 5.0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        reads.cancel()

    run(go())


def test_end_of_stream_and_no_limit() -> None:
    async def go() -> tuple[bytes, bytes]:
        reader = asyncio.StreamReader()
        reads = TimedReads(reader)
        reader.feed_data(b"abc")
        first = await reads.read(10, None)
        reader.feed_eof()
        return first, await reads.read(10, 1.0)

    assert run(go()) == (b"abc", b"")
