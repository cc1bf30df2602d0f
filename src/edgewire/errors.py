"""The one exception tree of edgewire.

Every error carries a stable string ``code`` (sent to remote peers in error
frames), an ``exit_code`` (used by the CLI) and an ``http_status`` (used by the
HTTP server), all chosen by class. Messages say what was wrong and,
where possible, how to fix it; they never carry a stack trace, a secret or a
server-side path meant for a remote peer.

    EdgewireError
    ├── ConfigError            bad flag, env or TOML value; unsafe bind
    ├── DependencyMissing      optional extra not installed (torch, mlxtend, ...)
    ├── DataError              a data set that cannot be read or is malformed
    ├── ProtocolError          a malformed frame or message from a peer
    │   ├── FrameTooLarge      a length or count over its configured maximum
    │   └── ChecksumMismatch   payload CRC does not match the header
    ├── RemoteError            the peer answered with an error frame
    ├── ConnectError           cannot reach the peer / the peer went away
    │   ├── PeerTimeout        a read or write did not finish in time
    │   └── TailUnreachable    a split head's tail server cannot be reached
    ├── BusyError              a bounded queue is full; try again later
    ├── DiskFull               the disk or the data dir's disk budget is full (HTTP 507)
    ├── AuthError              missing or wrong token
    │   ├── SignatureError     a webhook's signature, token or timestamp is missing or wrong
    │   └── NotAllowed         authenticated, but not on an allow-list (HTTP 403)
    ├── TrainError             the on-device training run failed
    │   └── CheckpointError    a checkpoint cannot be written or read
    └── ModelError             a model that cannot load or fails while running
        ├── ModelNotFound      no such model or version (HTTP 404, not 500)
        └── GateRefused        a gated deploy scored too low (HTTP 422)
"""

from __future__ import annotations

from typing import Any, ClassVar

# Filled in by EdgewireError.__init_subclass__, so that a code is registered once.
_BY_CODE: dict[str, type[EdgewireError]] = {}
# Exit code -> the class that introduced it (its subclasses share it).
_EXIT_OWNERS: dict[int, type[EdgewireError]] = {}


class EdgewireError(Exception):
    """Base of every edgewire error.

    Each class that sets ``code`` registers it on creation; a second class with the
    same code is a TypeError there and then, not a silently shadowed error kind.
    """

    code: ClassVar[str] = "internal"
    exit_code: ClassVar[int] = 1
    http_status: ClassVar[int] = 500
    help: ClassVar[str] = "An unexpected error; please report it."

    def __init__(self, message: str = "", *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message or self.help)
        #: Numbers or names a client can show besides the message (the gate's scores).
        self.details = details

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls)

    @property
    def message(self) -> str:
        return str(self)


def _register(cls: type[EdgewireError]) -> None:
    taken = _BY_CODE.get(cls.code)
    if taken is not None:  # also a subclass that forgot to set a code of its own
        raise TypeError(
            f"error code {cls.code!r} of {cls.__name__} is already "
            f"{taken.__name__}'s; give each error class a code of its own"
        )
    owner = _EXIT_OWNERS.get(cls.exit_code)
    if "exit_code" in vars(cls) and owner is not None and not issubclass(cls, owner):
        raise TypeError(
            f"exit code {cls.exit_code} of {cls.__name__} is already {owner.__name__}'s"
        )
    _BY_CODE[cls.code] = cls
    _EXIT_OWNERS.setdefault(cls.exit_code, cls)


_register(EdgewireError)


class ConfigError(EdgewireError):
    code = "config"
    exit_code = 2
    http_status = 400
    help = "A flag, environment variable or config file value is invalid."


class DependencyMissing(EdgewireError):
    code = "dependency"
    exit_code = 3
    http_status = 500
    help = "An optional dependency is not installed."


class DataError(EdgewireError):
    code = "data"
    exit_code = 4
    http_status = 400
    help = "The data set cannot be read."


class ProtocolError(EdgewireError):
    code = "protocol"
    exit_code = 5
    http_status = 400
    help = "The peer sent a malformed message."


class FrameTooLarge(ProtocolError):
    code = "too_large"
    http_status = 413
    help = "A length or count field is over its configured maximum."


class ChecksumMismatch(ProtocolError):
    code = "checksum"
    http_status = 400
    help = "A frame's payload does not match its checksum."


class RemoteError(EdgewireError):
    """The peer answered with an error frame; ``remote_code`` is its code."""

    code = "remote"
    exit_code = 6
    http_status = 502
    help = "The peer reported an error."

    def __init__(
        self,
        message: str = "",
        *,
        remote_code: str = "internal",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.remote_code = remote_code


class ConnectError(EdgewireError):
    code = "connect"
    exit_code = 7
    http_status = 502
    help = "Cannot reach the peer; is the agent running and the address right?"


class PeerTimeout(ConnectError):
    code = "timeout"
    http_status = 504
    help = "The peer did not answer in time."


class TailUnreachable(ConnectError):
    code = "tail_unreachable"
    http_status = 502
    help = "A split head's tail server did not answer."


class BusyError(EdgewireError):
    code = "busy"
    exit_code = 8
    http_status = 503
    help = "The server is busy; retry later."


class DiskFull(EdgewireError):
    code = "disk_full"
    exit_code = 12
    http_status = 507
    help = "The disk, or the data dir's disk budget, is full; free space or raise max_disk_bytes."


class AuthError(EdgewireError):
    code = "auth"
    exit_code = 9
    http_status = 401
    help = "A valid token is required (--token or EDGEWIRE_TOKEN)."


class SignatureError(AuthError):
    """A webhook whose signature, bearer token or timestamp is missing, garbled or wrong (401)."""

    code = "signature"
    http_status = 401
    help = (
        "The webhook's signature, token or timestamp is missing or wrong; check the hook's secret."
    )


class NotAllowed(AuthError):
    """A request that is well formed but names what no allow-list admits (403), such as an
    entity, a collection, a URL's host or a private address."""

    code = "not_allowed"
    http_status = 403
    help = "Refused by an allow-list (entity, project, collection, host or address)."


class TrainError(EdgewireError):
    code = "train"
    exit_code = 10
    http_status = 500
    help = "The training run failed."


class CheckpointError(TrainError):
    code = "checkpoint"
    http_status = 500
    help = "A checkpoint cannot be written or read."


class ModelError(EdgewireError):
    """A model that cannot be loaded or fails while running (HTTP 500)."""

    code = "model"
    exit_code = 11
    http_status = 500
    help = "The model file is missing, corrupt or unsafe."


class ModelNotFound(ModelError):
    """The name or version asked for is not there (HTTP 404), as opposed to a broken model."""

    code = "model_not_found"
    http_status = 404
    help = "The model or version is not in the store or not served."


class GateRefused(ModelError):
    """A gated deploy whose new version scored worse than the gate allows (HTTP 422)."""

    code = "gate_refused"
    http_status = 422
    help = "The new model version did not pass the deploy gate."


#: Exit codes of the CLI and the agent, with the help text ``edgewire --help`` shows:
#: each code's text is the help of the class that introduced it.
EXIT_CODES: dict[int, str] = {
    0: "success",
    **{code: cls.help for code, cls in sorted(_EXIT_OWNERS.items())},
    130: "interrupted (Ctrl-C)",
}


def error_for_code(code: str) -> type[EdgewireError]:
    """The local class for an error code received from a peer."""
    return _BY_CODE.get(code, EdgewireError)


def codes_by_exit_code() -> dict[int, list[str]]:
    """Exit code -> the error codes that exit with it, in definition order."""
    grouped: dict[int, list[str]] = {}
    for cls in _BY_CODE.values():
        grouped.setdefault(cls.exit_code, []).append(cls.code)
    return grouped


def one_line(exc: BaseException, *, limit: int = 300) -> str:
    """The first line of ``exc``'s message (its type name if it has none), at most ``limit`` long.

    For messages to a remote peer or a log line: a multi-line text (a backend's dump of
    its graph, a traceback in a message) stays on the server.
    """
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line if len(line) <= limit else line[: max(limit - 3, 0)] + "..."


def require(module: str, *, extra: str) -> None:
    """Raise DependencyMissing with an install hint when ``module`` is absent."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise DependencyMissing(
            f"{module!r} is not installed; install it with: pip install 'edgewire[{extra}]'"
        )
