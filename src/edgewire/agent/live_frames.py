"""Where a live run's frames come from: a source read in a thread of its own
(:class:`FrameFeed`), frames a caller pushes (:class:`PushSource`, a browser's camera
through ``POST /api/runs/{id}/frame``), and the small JPEG a page shows of the newest one.
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from edgewire.errors import ConfigError, DataError, EdgewireError, FrameTooLarge, one_line
from edgewire.project.capture import Frame

#: The source of a run whose frames its caller sends (no allow-list: they are its own).
PUSH = "push"
#: A push run ends (reason ``no frames``) when none has come for this many seconds.
NO_FRAMES_S = 30.0
#: How often a push source's reader looks up from its empty slot (to notice a stop).
PUSH_POLL_S = 0.25
#: Pixels a pushed frame may have, read from its header before it is decoded (4K UHD).
MAX_PUSH_PIXELS = 3840 * 2160
PUSH_FORMATS = ("JPEG", "PNG")

#: The newest frame is shown (GET /api/runs/{id}/frame) at most this many pixels a side.
MAX_SHOWN_SIDE = 640
SHOWN_QUALITY = 80


class FrameFeed:
    """A source read in its own thread: ``paced`` (a file or folder) hands out the next
    frame when asked, otherwise the newest frame read, dropping the ones in between."""

    _END = object()

    def __init__(self, opener: Callable[[], Iterator[Frame]], first: Iterator[Frame], *,
                 paced: bool, loop: bool, name: str = "") -> None:  # fmt: skip
        self.paced, self._loop, self._opener, self._name = paced, loop, opener, name
        self._frames = first
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._newest: tuple[Frame, float] | None = None
        self._newest_lock = threading.Lock()
        self._fresh = threading.Event()
        self._stop = threading.Event()
        self.error: str | None = None
        self.ended = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._read, name="edgewire-live-source", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        gave = False  # any frame in this pass of the source
        try:
            while not self._stop.is_set():
                frame = next(self._frames, None)
                if frame is None:
                    if self._loop and self.paced and not self._stop.is_set():
                        if not gave:  # looping over nothing would spin for ever
                            raise ConfigError(f"source {self._name!r:.200} gave no frames")
                        self._frames, gave = self._opener(), False
                        continue
                    break
                gave = True
                if self.paced:
                    self._put(frame)
                else:
                    with self._newest_lock:
                        self.dropped += self._newest is not None
                        self._newest = (frame, time.monotonic())
                    self._fresh.set()
        except EdgewireError as exc:
            self.error = exc.message
        except Exception as exc:  # a broken source ends the run with one line, not the agent
            self.error = f"the source failed: {one_line(exc)}"
        finally:
            with contextlib.suppress(Exception):
                close = getattr(self._frames, "close", None)
                if close is not None:
                    close()
            self.ended = True
            self._put(self._END)
            self._fresh.set()

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return

    def take(self, timeout: float) -> tuple[Frame, float] | None:
        """The next frame and when it was captured; None at the end or after ``timeout``
        (blocking: call it in a thread, or when :meth:`ready`)."""
        if self.paced:
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                return None
            if item is self._END:
                self._queue.put_nowait(self._END)  # the end stays the end
                return None
            return item, time.monotonic()  # a file's frame is captured when it is due
        if not self._fresh.wait(timeout):
            return None
        with self._newest_lock:
            newest, self._newest = self._newest, None
            self._fresh.clear()
        return newest

    def ready(self) -> bool:
        return not self._queue.empty() if self.paced else self._fresh.is_set()

    def stop(self) -> None:
        self._stop.set()
        # Its read may block on the source's own timeout; it lets go of the source then.
        self._thread.join(timeout=2.0)


class PushSource:
    """The frames a run's caller sends, in a slot of one: a frame not read yet is
    replaced by a newer one (counted in ``dropped``). :meth:`frames` is the source's
    iterator for a :class:`FrameFeed`; it ends once :meth:`close` is called, or after
    :data:`NO_FRAMES_S` with no frame (``ended_why`` then says so)."""

    def __init__(self) -> None:
        self._slot: queue.Queue[Frame] = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._last = time.monotonic()
        self.pushed = 0
        self.dropped = 0
        self.decoding = 0
        self.ended_why: str | None = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def push(self, frame: Frame) -> tuple[int, int]:
        """Put ``frame`` in the slot: (frames pushed so far, frames replaced so far)."""
        with self._lock:
            if self._closed.is_set():
                raise ConfigError("the live run has ended: start another to send frames")
            with contextlib.suppress(queue.Empty):
                self._slot.get_nowait()
                self.dropped += 1
            self._slot.put_nowait(frame)  # the lock is held: nothing refilled the slot
            self.pushed += 1
            self._last = time.monotonic()
            return self.pushed, self.dropped

    def frames(self) -> Iterator[Frame]:
        while not self._closed.is_set():
            with self._lock:
                left = self._last + NO_FRAMES_S - time.monotonic()
                if left <= 0:
                    self.ended_why = "no frames"
                    self._closed.set()  # a frame pushed from now on is refused
                    return
            try:
                yield self._slot.get(timeout=min(left, PUSH_POLL_S))
            except queue.Empty:
                continue

    def close(self) -> None:
        self._closed.set()


def decode_frame(data: bytes) -> Frame:
    """``data`` (one JPEG or PNG) as a capture's RGB frame; its size is read from the
    header and refused over :data:`MAX_PUSH_PIXELS` before anything is decoded."""
    from PIL import UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=PUSH_FORMATS) as image:
            width, height = image.size
            if width * height > MAX_PUSH_PIXELS:
                raise FrameTooLarge(
                    f"a frame of {width}x{height} pixels is over the limit of "
                    f"{MAX_PUSH_PIXELS}; send a smaller one"
                )
            rgb = image.convert("RGB")  # decodes: a truncated file fails here
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError,
            Image.DecompressionBombError, Image.DecompressionBombWarning):  # fmt: skip
        raise DataError(
            f"the frame ({len(data)} bytes) is not one whole JPEG or PNG image"
        ) from None
    return np.asarray(rgb, np.uint8)


def shown_jpeg(frame: Frame) -> bytes:
    """``frame`` as a JPEG at most :data:`MAX_SHOWN_SIDE` pixels a side."""

    image = Image.fromarray(frame).convert("RGB")
    image.thumbnail((MAX_SHOWN_SIDE, MAX_SHOWN_SIDE))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=SHOWN_QUALITY)
    return out.getvalue()
