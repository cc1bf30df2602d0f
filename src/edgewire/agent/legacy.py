"""What the legacy ports (BTS0, MnistProt) share: reading a chunk with the right timeout."""

from __future__ import annotations

from edgewire.config import AgentConfig
from edgewire.errors import ConnectError, PeerTimeout
from edgewire.wire.stream import TimedReads


async def read_chunk(
    reads: TimedReads, config: AgentConfig, *, mid_message: bool, size: int, what: str
) -> bytes:
    """The next bytes from a legacy peer; b"" at end of stream.

    A peer between messages may stay silent for ``idle_timeout``; one in the
    middle of a message must keep sending within ``frame_timeout``.
    """
    timeout = config.frame_timeout if mid_message else config.idle_timeout
    try:
        return await reads.read(size, timeout)
    except TimeoutError as exc:
        raise PeerTimeout(f"{what} silent for {timeout:g} s") from exc
    except OSError as exc:
        raise ConnectError(str(exc)) from exc
