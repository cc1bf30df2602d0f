# ruff: noqa: UP031 -- %-formatting on purpose: some MicroPython builds have no f-strings.
"""A small client of the edgewire native wire protocol, for MicroPython and CPython.

    import edgewire_client
    outputs, compute_ms = edgewire_client.infer("192.168.1.10", 7700, "mnist", digit)

    with edgewire_client.Client("192.168.1.10", 7700, token="...") as client:
        for digit in digits:
            outputs, compute_ms = client.infer("mnist", digit)

``digit`` is any sequence of floats (784 for MNIST); it travels as one float32
tensor of shape [1, len(digit)]. The answer's first tensor comes back as a flat
list of floats. The layout is in ``docs/protocol.md`` of the edgewire project.

Only ``socket`` and ``struct`` are needed (``usocket``/``ustruct`` on older
MicroPython); CRC-32 comes from ``binascii`` where the port has it, else from a
16-entry table below. Every length read from the wire is checked against
``max_payload`` before anything is allocated.
"""

try:
    import socket
except ImportError:  # MicroPython before 1.20
    import usocket as socket  # type: ignore[import-not-found,no-redef]
try:
    import struct
except ImportError:
    import ustruct as struct  # type: ignore[import-not-found,no-redef]
try:
    from binascii import crc32 as _fast_crc32
except ImportError:  # ports built without it
    _fast_crc32 = None  # type: ignore[assignment]

HEADER_SIZE = 20
MSG_HELLO = 1
MSG_CAPABILITIES = 2
MSG_ERROR = 5
MSG_INFER_REQUEST = 16
MSG_INFER_RESPONSE = 17
FLOAT32 = 6
MAX_NDIM = 8
MAX_TENSORS = 64
#: The largest answer payload read by default: ample for 10 outputs and an error text.
DEFAULT_MAX_PAYLOAD = 8192
#: The largest CAPABILITIES answer to a HELLO; it is read in small pieces and
#: thrown away (only an ERROR, a wrong token, is kept), so this costs no memory.
MAX_CAPABILITIES = 1 << 20
_DTYPE_SIZES = (0, 1, 1, 4, 8, 2, 4, 8, 1, 2, 2)
# Byte values as ints: `int in bytes` is not portable to every MicroPython.
_SPACE = (32, 9, 13, 10)
_NUMBER = tuple(b"+-.0123456789eE")


# The same names and codes as edgewire.errors: this module must stand alone on
# a device that does not have the edgewire package.
class EdgewireError(Exception):
    code = "internal"


class ProtocolError(EdgewireError):
    """The agent sent something this client cannot accept."""

    code = "protocol"


class RemoteError(EdgewireError):
    """The agent answered with an ERROR frame; ``remote_code`` is its code."""

    code = "remote"

    def __init__(self, message: str, remote_code: str) -> None:
        super().__init__(message)
        self.message = message
        self.remote_code = remote_code


class ConnectError(EdgewireError):
    """Cannot reach the agent, it went away, or it did not answer in time."""

    code = "connect"


# -- CRC-32 -------------------------------------------------------------------------

_NIBBLE = (
    0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC, 0x76DC4190, 0x6B6B51F4, 0x4DB26158, 0x5005713C,
    0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C, 0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C,
)  # fmt: skip


def crc32_small(data: bytes, crc: int = 0) -> int:
    """IEEE CRC-32 (as zlib computes it) with a 16-entry table: two steps a byte."""
    crc ^= 0xFFFFFFFF
    table = _NIBBLE
    for byte in data:
        crc ^= byte
        crc = (crc >> 4) ^ table[crc & 15]
        crc = (crc >> 4) ^ table[crc & 15]
    return crc ^ 0xFFFFFFFF


def crc32(data: bytes, crc: int = 0) -> int:
    """CRC-32 of ``data``: the port's own when it has one, else :func:`crc32_small`."""
    if _fast_crc32 is not None:
        return _fast_crc32(data, crc) & 0xFFFFFFFF
    return crc32_small(data, crc)


# -- codec (no I/O) -------------------------------------------------------------------


def _plain(text: str, limit: int) -> bool:
    # The meta JSON is written by hand, so values must not need escaping.
    return 0 < len(text) <= limit and not any(not " " <= ch <= "~" or ch in '"\\' for ch in text)


def _check_model(model: str) -> None:
    if not _plain(model, 64):
        raise ValueError("model name must be 1-64 printable ASCII characters: %r" % (model,))


def encode_hello(request_id: int, token: str) -> bytes:
    """The HELLO frame that gives the agent its token (needed when the agent has one)."""
    if not _plain(token, 1024):
        raise ValueError("the token must be 1-1024 printable ASCII characters without quotes")
    payload = encode_meta('{"client":"micropython","token":"%s"}' % token)
    return encode_header(MSG_HELLO, request_id, payload) + payload


def encode_meta(meta: str) -> bytes:
    """A payload of meta JSON and no tensors."""
    data = meta.encode()
    return struct.pack("<I", len(data)) + data + struct.pack("<H", 0)


def encode_request(request_id: int, model: str, floats: "list[float] | tuple[float, ...]") -> bytes:
    """The INFER_REQUEST frame for one row of float32 inputs (any float sequence)."""
    _check_model(model)
    values = list(floats)
    n = len(values)
    if n == 0:
        raise ValueError("no input values")
    meta = ('{"model":"%s"}' % model).encode()
    payload = b"".join(
        (
            struct.pack("<I", len(meta)),
            meta,
            struct.pack("<HBBHIIII", 1, FLOAT32, 2, 0, 1, n, 4 * n, 0),
            struct.pack("<%df" % n, *values),
        )
    )
    return encode_header(MSG_INFER_REQUEST, request_id, payload) + payload


def encode_header(msg_type: int, request_id: int, payload: bytes) -> bytes:
    """The 20-byte frame header for ``payload``."""
    return b"EW" + struct.pack(
        "<BBHHIII", 1, msg_type, 0, 0, request_id, len(payload), crc32(payload)
    )


def decode_header(header: bytes, max_payload: int) -> tuple[int, int, int, int]:
    """(type, request id, payload length, crc) of a header, checked before any read."""
    if len(header) != HEADER_SIZE or header[:2] != b"EW":
        raise ProtocolError("not an edgewire frame (bad magic)")
    version, msg_type, _flags, reserved, request_id, length, crc = struct.unpack(
        "<BBHHIII", header[2:]
    )
    if version != 1 or reserved != 0:
        raise ProtocolError("unsupported frame (version %d)" % version)
    if length > max_payload:
        raise ProtocolError("answer of %d bytes is over the limit of %d" % (length, max_payload))
    return msg_type, request_id, length, crc


def decode_response(msg_type: int, payload: bytes, max_outputs: int) -> tuple[list[float], float]:
    """(outputs of the first tensor, compute_ms) of an INFER_RESPONSE payload.

    An ERROR payload raises :class:`RemoteError` with the agent's message;
    compute_ms is -1.0 when the agent did not report it.
    """
    meta, pos = _meta(payload)
    if msg_type == MSG_ERROR:
        code = _json_string(meta, "code") or "internal"
        text = _json_string(meta, "message") or "remote error"
        raise RemoteError("%s [%s]" % (text, code), code)
    if msg_type != MSG_INFER_RESPONSE:
        raise ProtocolError("expected INFER_RESPONSE, got message type %d" % msg_type)
    if len(payload) - pos < 2:
        raise ProtocolError("payload truncated at the tensor count")
    (count,) = struct.unpack("<H", payload[pos : pos + 2])
    pos += 2
    if not 0 < count <= MAX_TENSORS:
        raise ProtocolError("answer has %d tensors" % count)
    outputs: list[float] = []
    for index in range(count):
        dtype, n, at, pos = _tensor(payload, pos, max_outputs if index == 0 else None)
        if index == 0:
            if dtype != FLOAT32:
                raise ProtocolError("first output has dtype code %d, not float32" % dtype)
            outputs = list(struct.unpack("<%df" % n, payload[at : at + 4 * n]))
    if pos != len(payload):
        raise ProtocolError("%d unexpected bytes after the last tensor" % (len(payload) - pos))
    compute_ms = _json_number(meta, "compute_ms")
    return outputs, -1.0 if compute_ms is None else compute_ms


def _meta(payload: bytes) -> tuple[bytes, int]:
    if len(payload) < 4:
        raise ProtocolError("payload truncated at the meta length")
    (meta_len,) = struct.unpack("<I", payload[:4])
    if meta_len > len(payload) - 4:
        raise ProtocolError("meta of %d bytes runs past the payload" % meta_len)
    return payload[4 : 4 + meta_len], 4 + meta_len


def _tensor(payload: bytes, pos: int, max_elems: int | None) -> tuple[int, int, int, int]:
    """(dtype, element count, data offset, next offset) of the tensor at ``pos``."""
    if len(payload) - pos < 4:
        raise ProtocolError("payload truncated at a tensor header")
    dtype, ndim, reserved = struct.unpack("<BBH", payload[pos : pos + 4])
    if not 0 < dtype < len(_DTYPE_SIZES) or reserved != 0 or ndim > MAX_NDIM:
        raise ProtocolError("bad tensor header (dtype %d, %d dims)" % (dtype, ndim))
    pos += 4
    if len(payload) - pos < 4 * ndim + 8:
        raise ProtocolError("payload truncated at a tensor shape")
    elems = 1
    for dim in struct.unpack("<%dI" % ndim, payload[pos : pos + 4 * ndim]):
        elems *= dim
    pos += 4 * ndim
    lo, hi = struct.unpack("<II", payload[pos : pos + 8])
    pos += 8
    nbytes = lo + (hi << 32)
    if max_elems is not None and elems > max_elems:
        raise ProtocolError("output of %d values is over the limit of %d" % (elems, max_elems))
    if nbytes != elems * _DTYPE_SIZES[dtype] or nbytes > len(payload) - pos:
        raise ProtocolError("tensor byte count %d does not match its shape or the payload" % nbytes)
    return dtype, elems, pos, pos + nbytes


def _find_key(meta: bytes, key: str) -> int:
    """Offset of the value of ``"key":`` in a flat JSON object, or -1.

    A quote inside a JSON string is escaped, so a quoted key followed by a
    colon only matches a real key; no JSON parser needed.
    """
    needle = b'"' + key.encode() + b'"'
    start = 0
    while True:
        at = meta.find(needle, start)
        if at < 0:
            return -1
        pos = at + len(needle)
        while pos < len(meta) and meta[pos] in _SPACE:
            pos += 1
        if pos < len(meta) and meta[pos] == 58:  # ':'
            pos += 1
            while pos < len(meta) and meta[pos] in _SPACE:
                pos += 1
            return pos
        start = at + 1


def _json_number(meta: bytes, key: str) -> float | None:
    pos = _find_key(meta, key)
    if pos < 0:
        return None
    end = pos
    while end < len(meta) and meta[end] in _NUMBER:
        end += 1
    try:
        return float(meta[pos:end].decode())
    except ValueError:
        return None


def _json_string(meta: bytes, key: str) -> str | None:
    pos = _find_key(meta, key)
    if pos < 0 or pos >= len(meta) or meta[pos] != 34:  # '"'
        return None
    escapes = {98: "\b", 102: "\f", 110: "\n", 114: "\r", 116: "\t"}
    out = []
    pos += 1
    while pos < len(meta) and meta[pos] != 34:
        byte = meta[pos]
        if byte == 92 and pos + 1 < len(meta):  # backslash
            pos += 1
            esc = meta[pos]
            if esc == 117 and pos + 4 < len(meta):  # \uXXXX
                try:
                    code = int(meta[pos + 1 : pos + 5].decode(), 16)
                except ValueError:
                    code = 63
                out.append(chr(code) if not 0xD800 <= code <= 0xDFFF else "?")
                pos += 4
            else:
                out.append(escapes.get(esc, chr(esc)))
        else:
            # A run of plain bytes, decoded as UTF-8 at once.
            end = pos
            while end < len(meta) and meta[end] not in (34, 92):
                end += 1
            try:
                out.append(meta[pos:end].decode())
            except ValueError:  # not UTF-8
                out.append("?")
            pos = end - 1
        pos += 1
    return "".join(out)


# -- the client -------------------------------------------------------------------


class Client:
    """One connection to an agent, kept open for many requests, one at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 5,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_outputs: int = 1024,
        token: "str | None" = None,
    ) -> None:
        """Connect; with ``token``, say HELLO with it first (an agent with a token
        answers inference only after that). A wrong token raises RemoteError
        (``remote_code`` ``auth``) and the agent closes the connection."""
        self._max_payload = max_payload
        self._max_outputs = max_outputs
        self._next_id = 1
        try:
            infos = socket.getaddrinfo(host, port)
        except OSError as exc:
            raise ConnectError("cannot resolve %s:%d: %s" % (host, port, exc)) from exc
        # Each address in turn ("localhost" may be ::1 first, the agent on 127.0.0.1).
        error: OSError = OSError("no address")
        for info in infos:
            if len(infos) > 1 and info[1] != socket.SOCK_STREAM:
                continue
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            try:
                # Every read and write on it is bounded by this timeout.
                sock.settimeout(timeout)
                sock.connect(info[-1])
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self._sock = sock
            if token:
                try:
                    self.hello(token)
                except Exception:
                    sock.close()
                    raise
            return
        raise ConnectError("cannot connect to %s:%d: %s" % (host, port, error))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def infer(
        self, model: str, floats: "list[float] | tuple[float, ...]"
    ) -> tuple[list[float], float]:
        """(outputs, compute_ms) for one row of inputs.

        Raises RemoteError with the agent's message when it refuses the request
        (the connection stays usable); after ProtocolError or ConnectError,
        close the client.
        """
        request_id = self._take_id()
        frame = encode_request(request_id, model, floats)
        try:
            self._sock.sendall(frame)
            header = self._read(HEADER_SIZE)
            msg_type, answer_id, length, crc = decode_header(header, self._max_payload)
            payload = self._read(length)
        except OSError as exc:
            raise ConnectError("connection to the agent failed: %s" % (exc,)) from exc
        if crc32(payload) != crc:
            raise ProtocolError("answer fails its CRC-32 check")
        if answer_id != request_id and not (msg_type == MSG_ERROR and answer_id == 0):
            raise ProtocolError("answer to request %d, expected %d" % (answer_id, request_id))
        return decode_response(msg_type, payload, self._max_outputs)

    def _take_id(self) -> int:
        request_id = self._next_id
        self._next_id = request_id % 0xFFFFFFFF + 1  # a u32, never 0
        return request_id

    def hello(self, token: str) -> None:
        """Give the agent its token; the agent's capabilities are read and dropped."""
        request_id = self._take_id()
        try:
            self._sock.sendall(encode_hello(request_id, token))
            header = self._read(HEADER_SIZE)
            msg_type, _, length, crc = decode_header(header, MAX_CAPABILITIES)
            if msg_type != MSG_CAPABILITIES:
                if length > self._max_payload:
                    raise ProtocolError("answer of %d bytes is over the limit" % length)
                payload = self._read(length)
                if crc32(payload) != crc:
                    raise ProtocolError("answer fails its CRC-32 check")
                decode_response(msg_type, payload, 0)  # raises RemoteError for an ERROR
                raise ProtocolError("expected CAPABILITIES, got message type %d" % msg_type)
            seen = 0
            missing = length
            while missing > 0:  # in small pieces: the model list may be long
                chunk = self._read(min(missing, 512))
                seen = crc32(chunk, seen)
                missing -= len(chunk)
        except OSError as exc:
            raise ConnectError("connection to the agent failed: %s" % (exc,)) from exc
        if seen != crc:
            raise ProtocolError("answer fails its CRC-32 check")

    def _read(self, n: int) -> bytes:
        parts = []
        missing = n
        while missing > 0:
            chunk = self._sock.recv(min(missing, 2048))
            if not chunk:
                raise ConnectError("the agent closed the connection")
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)


def infer(
    host: str,
    port: int,
    model: str,
    floats: "list[float] | tuple[float, ...]",
    timeout: float = 5,
    token: "str | None" = None,
) -> tuple[list[float], float]:
    """One request on a fresh connection: (outputs, compute_ms)."""
    with Client(host, port, timeout, token=token) as client:
        return client.infer(model, floats)
