"""A faithful copy of the seed's PC-side JettyLink sender: the baseline to beat.

Same bytes on the wire as the seed: MNIST pixels as float32 /255, batches of 8
by default, each one BTS0 header + images + labels. Same pacing: stop-and-wait,
the next batch leaves only once the reply to this one contains ``OK``.

    python -m edgewire.bench.jettylink HOST PORT IMAGES_IDX LABELS_IDX [--batch-size 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgewire.errors import (
    ConfigError,
    ConnectError,
    DataError,
    EdgewireError,
    FrameTooLarge,
    PeerTimeout,
    RemoteError,
)
from edgewire.wire.bts0 import encode_batch

#: A reply longer than this without ``OK`` is refused: a hostile server cannot grow it.
MAX_REPLY_BYTES = 64 * 1024
READ_CHUNK = 4096
_PIXELS = 28 * 28


@dataclass(slots=True)
class JettyLinkStats:
    batches: int = 0
    samples: int = 0
    #: From the connection being open to the last ``OK``.
    seconds: float = 0.0
    #: The text lines of the replies, ``OK`` left out.
    replies: list[str] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def _check_inputs(
    images: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]
) -> tuple[np.ndarray[Any, np.dtype[np.uint8]], np.ndarray[Any, np.dtype[np.uint8]]]:
    """Images as u8 N x 784 and labels as u8 N, or DataError saying what is wrong."""
    if images.dtype != np.uint8:
        raise DataError(f"images must be uint8 pixels 0..255, got {images.dtype}")
    n = images.shape[0] if images.ndim else 0
    if images.shape not in ((n, 28, 28), (n, _PIXELS), (n, 1, 28, 28)):
        raise DataError(f"images of shape {images.shape} are not N x 28 x 28 MNIST digits")
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise DataError(f"labels of {labels.dtype} {labels.shape} do not match {n} images")
    if n and (labels.min() < 0 or labels.max() > 255):
        raise DataError(f"labels must fit in uint8, got {labels.min()}..{labels.max()}")
    return images.reshape(n, _PIXELS), labels.astype(np.uint8, copy=False)


def _split_reply(buf: bytearray, ok: int) -> list[str]:
    """Take the reply up to ``OK`` (and its newline) off ``buf``; return its text lines."""
    end = ok + 2
    while end < len(buf) and buf[end] in b"\r\n":
        end += 1
    text = bytes(buf[:ok]).decode("utf-8", errors="replace")
    del buf[:end]
    return [line.strip() for line in text.splitlines() if line.strip()]


async def _read_reply(reader: asyncio.StreamReader, buf: bytearray, *, timeout: float) -> list[str]:
    """Read until the reply contains ``OK``, as the seed does; bytes after it stay in ``buf``."""
    try:
        async with asyncio.timeout(timeout):
            while (ok := buf.find(b"OK")) < 0:
                if b"ERR" in buf:
                    raise RemoteError("the BTS0 server refused the batch (ERR)", remote_code="err")
                if len(buf) > MAX_REPLY_BYTES:
                    raise FrameTooLarge(f"BTS0 reply over {MAX_REPLY_BYTES} bytes without OK")
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    raise ConnectError("the BTS0 server closed the connection before OK")
                buf += chunk
    except TimeoutError as exc:
        raise PeerTimeout(f"no OK from the BTS0 server within {timeout:g} s") from exc
    except OSError as exc:
        raise ConnectError(f"BTS0 connection lost: {exc}") from exc
    return _split_reply(buf, ok)


async def _send(writer: asyncio.StreamWriter, data: bytes, *, timeout: float) -> None:
    try:
        writer.write(data)
        async with asyncio.timeout(timeout):
            await writer.drain()
    except TimeoutError as exc:
        raise PeerTimeout(f"the BTS0 server did not take a batch within {timeout:g} s") from exc
    except OSError as exc:
        raise ConnectError(f"BTS0 connection lost: {exc}") from exc


async def _connect(
    host: str, port: int, *, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.open_connection(host, port)
    except TimeoutError as exc:
        raise PeerTimeout(f"cannot connect to {host}:{port} within {timeout:g} s") from exc
    except OSError as exc:
        raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc


async def send_jettylink(
    host: str,
    port: int,
    images: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    *,
    batch_size: int = 8,
    max_batches: int | None = None,
    reply_timeout: float = 60.0,
    on_reply: Callable[[int, str], None] | None = None,
) -> JettyLinkStats:
    """Send u8 MNIST ``images`` and ``labels`` the seed's way; stop-and-wait per batch.

    Batch indices count from 0; a last short batch is sent as it is.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size!r}")
    if max_batches is not None and max_batches < 0:
        raise ConfigError(f"max batches must be 0 or more, got {max_batches!r}")
    pixels, targets = _check_inputs(images, labels)
    starts = range(0, len(targets), batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    reader, writer = await _connect(host, port, timeout=reply_timeout)
    stats = JettyLinkStats()
    buf = bytearray()
    began = time.perf_counter()
    try:
        for index, start in enumerate(starts):
            chunk = slice(start, start + batch_size)
            # float32(pixel) / float32(255), as the seed computes it.
            data = pixels[chunk].astype(np.float32) / np.float32(255)
            await _send(writer, encode_batch(index, data, targets[chunk]), timeout=reply_timeout)
            for line in await _read_reply(reader, buf, timeout=reply_timeout):
                stats.replies.append(line)
                if on_reply is not None:
                    on_reply(index, line)
            stats.batches += 1
            stats.samples += len(data)
        stats.seconds = time.perf_counter() - began
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgewire.bench.jettylink",
        description="Send MNIST IDX files to a BTS0 server the way the JettyLink seed does.",
    )
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("images_idx", type=Path, help="e.g. train-images.idx3-ubyte")
    parser.add_argument("labels_idx", type=Path, help="e.g. train-labels.idx1-ubyte")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--reply-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    from edgewire.data.idx import read_idx

    try:
        images = read_idx(args.images_idx)
        labels = read_idx(args.labels_idx)
        stats = asyncio.run(
            send_jettylink(
                args.host,
                args.port,
                images,
                labels,
                batch_size=args.batch_size,
                max_batches=args.max_batches,
                reply_timeout=args.reply_timeout,
                on_reply=lambda _index, line: print(line, flush=True),
            )
        )
    except EdgewireError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    print(
        f"sent {stats.batches} batches ({stats.samples} samples) in {stats.seconds:.2f} s:"
        f" {stats.samples_per_s:.1f} samples/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
