"""A tiny real server of the native protocol, built on the reference codec.

It answers INFER_REQUEST for one model with ``softmax(x @ W.T + b)`` like the
agent would, and an ERROR frame (code ``model``) for any other name. It records
what it received. ``reply`` replaces the answer with raw bytes, to play a
hostile agent. Each connection runs in its own thread; everything is real TCP
on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edgewire.errors import EdgewireError
from edgewire.wire.frames import Frame, FrameDecoder, MsgType, encode_frame
from edgewire.wire.messages import decode_message, encode_message, error_payload
from tests.serve.models import expected

Array = npt.NDArray[np.float32]
#: Model name this server serves.
MODEL = "mnist"


@dataclass
class LinearServer:
    w: Array
    b: Array
    reply: Callable[[Frame], bytes] | None = None
    close_after: bool = False
    port: int = 0
    inputs: list[Array] = field(default_factory=list)
    request_ids: list[int] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, frame: Frame) -> bytes:
        message = decode_message(frame.payload)
        with self.lock:
            self.request_ids.append(frame.request_id)
        if self.reply is not None:
            return self.reply(frame)
        model = message.meta.get("model")
        if model != MODEL:
            text = f"model {model!r} is not served (served: {MODEL})"
            return encode_frame(
                MsgType.ERROR, error_payload("model_not_found", text), request_id=frame.request_id
            )
        x = np.array(message.tensors[0], dtype=np.float32)
        with self.lock:
            self.inputs.append(x)
        y = expected(x, self.w, self.b).astype(np.float32)
        meta = {"model": MODEL, "version": 1, "outputs": ["output_0"]}
        meta |= {"queue_ms": 0.05, "compute_ms": 0.125, "batch_size": 1}
        return encode_frame(
            MsgType.INFER_RESPONSE, encode_message(meta, [y]), request_id=frame.request_id
        )


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        state = self.server.state
        with state.lock:
            state.connections += 1
        sock: socket.socket = self.request
        sock.settimeout(10)
        decoder = FrameDecoder(max_payload=1 << 20)
        try:
            while chunk := sock.recv(65536):
                for frame in decoder.feed(chunk):
                    if frame.type is not MsgType.INFER_REQUEST:
                        raise EdgewireError(f"{frame.type.name} is not accepted here")
                    sock.sendall(state.answer(frame))
                    if state.close_after:
                        return
        except EdgewireError as exc:
            # Like the agent: an error frame, then close the connection.
            with contextlib.suppress(OSError):
                sock.sendall(encode_frame(MsgType.ERROR, error_payload(exc.code, exc.message)))
        except OSError:
            return  # the client went away or fell silent


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    state: LinearServer


@contextmanager
def linear_server(
    w: Array,
    b: Array,
    *,
    reply: Callable[[Frame], bytes] | None = None,
    close_after: bool = False,
) -> Iterator[LinearServer]:
    """Serve ``softmax(x @ W.T + b)`` as model ``mnist`` on 127.0.0.1 until the block ends.

    ``close_after`` closes each connection after its first answer.
    """
    server = _TCPServer(("127.0.0.1", 0), _Handler)
    server.state = LinearServer(
        w=w, b=b, reply=reply, close_after=close_after, port=server.server_address[1]
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
