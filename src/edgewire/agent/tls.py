"""TLS for the agent's native and HTTP ports: one server-side ``ssl.SSLContext``.

Built once at start-up from ``tls_cert`` and ``tls_key`` (PEM files); a file that is
missing, unreadable or not a certificate and its key is one :class:`ConfigError` line,
never a traceback. TLS 1.2 is the oldest version accepted.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from edgewire.errors import ConfigError


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context (TLS 1.2+) holding the certificate chain ``cert`` and its ``key``."""
    for what, path in (("tls_cert", cert), ("tls_key", key)):
        if not path.is_file():
            raise ConfigError(f"{what} {str(path)!r} is not a file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # A password callback: an encrypted key fails here rather than prompting on a tty.
        context.load_cert_chain(certfile=cert, keyfile=key, password=lambda: b"")
    except ssl.SSLError as exc:
        # OpenSSL's reason (KEY_VALUES_MISMATCH), without its source file and line.
        reason = exc.reason if exc.reason and exc.reason != "PEM lib" else "not PEM"
        reason = reason.lower().replace("_", " ")
        raise ConfigError(
            f"cannot load the TLS certificate {str(cert)!r} with key {str(key)!r}: {reason}; "
            "both must be PEM files, the key unencrypted and matching the certificate"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS files: {exc.strerror or exc}") from None
    return context
