"""The one exception tree of edgewire.

Every error carries a stable string ``code`` (sent to remote peers in error
frames) and an ``exit_code`` (used by the CLI). Messages say what was wrong and,
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
    │   └── PeerTimeout        a read or write did not finish in time
    ├── BusyError              a bounded queue is full; try again later
    ├── AuthError              missing or wrong token
    ├── TrainError             the on-device training run failed
    │   └── CheckpointError    a checkpoint cannot be written or read
    └── ModelError             a model file is missing, corrupt or unsafe
"""

from __future__ import annotations

from typing import ClassVar


class EdgewireError(Exception):
    """Base of every edgewire error."""

    code: ClassVar[str] = "internal"
    exit_code: ClassVar[int] = 1
    help: ClassVar[str] = "An unexpected error; please report it."

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.help)

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(EdgewireError):
    code = "config"
    exit_code = 2
    help = "A flag, environment variable or config file value is invalid."


class DependencyMissing(EdgewireError):
    code = "dependency"
    exit_code = 3
    help = "An optional dependency is not installed."


class DataError(EdgewireError):
    code = "data"
    exit_code = 4
    help = "The data set cannot be read."


class ProtocolError(EdgewireError):
    code = "protocol"
    exit_code = 5
    help = "The peer sent a malformed message."


class FrameTooLarge(ProtocolError):
    code = "too_large"
    help = "A length or count field is over its configured maximum."


class ChecksumMismatch(ProtocolError):
    code = "checksum"
    help = "A frame's payload does not match its checksum."


class RemoteError(EdgewireError):
    """The peer answered with an error frame; ``remote_code`` is its code."""

    code = "remote"
    exit_code = 6
    help = "The peer reported an error."

    def __init__(self, message: str = "", *, remote_code: str = "internal") -> None:
        super().__init__(message)
        self.remote_code = remote_code


class ConnectError(EdgewireError):
    code = "connect"
    exit_code = 7
    help = "Cannot reach the peer; is the agent running and the address right?"


class PeerTimeout(ConnectError):
    code = "timeout"
    help = "The peer did not answer in time."


class BusyError(EdgewireError):
    code = "busy"
    exit_code = 8
    help = "The server is busy; retry later."


class AuthError(EdgewireError):
    code = "auth"
    exit_code = 9
    help = "A valid token is required (--token or EDGEWIRE_TOKEN)."


class TrainError(EdgewireError):
    code = "train"
    exit_code = 10
    help = "The training run failed."


class CheckpointError(TrainError):
    code = "checkpoint"
    help = "A checkpoint cannot be written or read."


class ModelError(EdgewireError):
    code = "model"
    exit_code = 11
    help = "The model file is missing, corrupt or unsafe."


#: Exit codes of the CLI and the agent, with the help text ``edgewire --help`` shows.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error",
    2: ConfigError.help,
    3: DependencyMissing.help,
    4: DataError.help,
    5: ProtocolError.help,
    6: RemoteError.help,
    7: ConnectError.help,
    8: BusyError.help,
    9: AuthError.help,
    10: TrainError.help,
    11: ModelError.help,
    130: "interrupted (Ctrl-C)",
}

_BY_CODE: dict[str, type[EdgewireError]] = {}


def _register(cls: type[EdgewireError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(EdgewireError)


def error_for_code(code: str) -> type[EdgewireError]:
    """The local class for an error code received from a peer."""
    return _BY_CODE.get(code, EdgewireError)


def require(module: str, *, extra: str) -> None:
    """Raise DependencyMissing with an install hint when ``module`` is absent."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise DependencyMissing(
            f"{module!r} is not installed; install it with: pip install 'edgewire[{extra}]'"
        )
