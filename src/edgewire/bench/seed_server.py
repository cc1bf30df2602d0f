"""A faithful copy of seed 002's Python MnistProt server: the baseline we beat.

Like the seed: one ``socketserver.TCPServer`` thread (listen backlog 5), one
request per connection, read until 3180 bytes have arrived (``recv(1024)``, no
timeout), a module-global lock around inference, ``timer_ms`` = the time of
the model call alone, and a connection dropped without an answer when ``cmd``
is not CMD_INFERENCE_INPUT. Under a burst of clients the small backlog makes
the kernel drop SYNs, and the seed's totals are those retry timeouts.

Where the seed would stop working, this copy does not, so that a benchmark
measures it rather than its crash:

* a peer that closes early ends the read (the seed looped on ``recv`` == b"" forever);
* any error drops that one connection (the seed released a lock it might not
  hold and closed its listening socket);
* ``timer_ms`` == 0.0 still gives 96 bytes (see :func:`encode_response`);
* no per-request prints, only debug logging;
* :meth:`SeedServer.close` wakes a handler blocked in ``recv``.

Requests are decoded with the verified codec, so garbage is dropped, not parsed blindly.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import cast

import numpy as np
import numpy.typing as npt

from edgewire.config import is_loopback
from edgewire.errors import ConfigError, EdgewireError
from edgewire.wire.mnistprot import (
    CMD_INFERENCE_INPUT,
    DIGIT_LEN,
    REQUEST_SIZE,
    decode_request,
    encode_response,
)

log = logging.getLogger(__name__)

Infer = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]

#: The seed's global interpreter lock (``tfliteLock``): one inference at a time.
_INFER_LOCK = threading.Lock()


class _SeedTCPServer(socketserver.TCPServer):
    request_queue_size = 5  # the seed's listen backlog: socketserver's default
    allow_reuse_address = False

    def __init__(self, address: tuple[str, int], infer: Infer) -> None:
        self.infer = infer
        self._conns_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self.closing = False
        super().__init__(address, _SeedHandler)

    def track(self, conn: socket.socket) -> bool:
        """Register a live connection; False once closing (then drop it)."""
        with self._conns_lock:
            if self.closing:
                return False
            self._conns.add(conn)
            return True

    def active(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    def untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def wake_all(self) -> None:
        """Mark closing and unblock any handler stuck in ``recv``."""
        with self._conns_lock:
            self.closing = True
            for conn in self._conns:
                with contextlib.suppress(OSError):  # already gone
                    conn.shutdown(socket.SHUT_RDWR)


class _SeedHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = cast(_SeedTCPServer, self.server)
        conn = cast(socket.socket, self.request)
        if not server.track(conn):
            return
        try:
            self._serve(server, conn)
        except (OSError, EdgewireError) as exc:
            log.debug("seed server dropped a connection: %s", exc)
        except Exception:
            log.exception("seed server: the model failed")
        finally:
            server.untrack(conn)

    @staticmethod
    def _serve(server: _SeedTCPServer, conn: socket.socket) -> None:
        data = bytearray()
        while len(data) < REQUEST_SIZE:
            chunk = conn.recv(1024)
            if not chunk:
                log.debug("peer closed after %d of %d bytes", len(data), REQUEST_SIZE)
                return
            data += chunk
        request = decode_request(data)
        if request.cmd != CMD_INFERENCE_INPUT or request.digit is None:
            log.debug("unknown protocol command %d", request.cmd)
            return
        with _INFER_LOCK:
            batch = request.digit.reshape(1, DIGIT_LEN)
            start = time.perf_counter()
            output = server.infer(batch)
            timer_ms = (time.perf_counter() - start) * 1000.0
        conn.sendall(encode_response(np.asarray(output).reshape(-1), timer_ms))


class SeedServer:
    """The seed server on ``host:port`` (port 0: any free port), serving ``infer``.

    ``infer`` maps a float32 (1, 784) array to (1, 10) outputs.
    """

    def __init__(self, infer: Infer, *, host: str = "127.0.0.1", port: int = 0) -> None:
        if not is_loopback(host):
            raise ConfigError(
                f"the seed server copy has no authentication; bind it to loopback, not {host!r}"
            )
        self._server = _SeedTCPServer((host, port), infer)
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def active_connections(self) -> int:
        """Connections a handler holds now (0 or 1: the server is single-threaded)."""
        return self._server.active()

    def start(self) -> None:
        """Serve forever in a daemon thread."""
        if self._thread is not None or self._closed:
            raise RuntimeError("SeedServer.start() may be called once, before close()")
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"seed-server-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._server.wake_all()
        if self._thread is not None:
            self._server.shutdown()  # returns once serve_forever has left its loop
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> SeedServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
