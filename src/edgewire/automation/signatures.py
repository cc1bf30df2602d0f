"""Webhook authentication, sans-IO: raw headers and body bytes in, a :class:`Delivery` out.

Three kinds of hook, each verified on the raw bytes before anything parses them:

- ``wandb``: ``Authorization: Bearer <token>`` and/or ``X-Wandb-Signature``, the
  HMAC-SHA256 of the body as base64, hex or ``sha256=``-prefixed hex. W&B sends no
  delivery id and no timestamp, so a W&B delivery has no idempotency key: it is a hint
  to act on what the source says, deduplicated on the artifact version found there.
- ``standard`` (standardwebhooks.com): ``webhook-id``, ``webhook-timestamp`` and
  ``webhook-signature`` (space-separated ``v1,<base64>`` entries) over
  ``{id}.{timestamp}.{body}``, ``whsec_`` base64 secrets, a tolerance on the timestamp;
  ``webhook-id`` is the idempotency key.
- ``github``: ``X-Hub-Signature-256: sha256=<hex>``; ``X-GitHub-Delivery`` is the key.

Each hook holds several secrets (and tokens), so that one can be rotated while the
other still works. Every comparison is :func:`hmac.compare_digest`, and each secret is
tried whether or not an earlier one matched. Whatever is wrong with an auth header
(missing, empty, garbled, not ASCII) is a :class:`~edgewire.errors.SignatureError`
(401), never anything else.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from edgewire.errors import ConfigError, FrameTooLarge, SignatureError

#: Standard Webhooks' recommended tolerance on ``webhook-timestamp``.
DEFAULT_TOLERANCE_S = 300.0
#: A webhook body larger than this is refused before it is read (the route caps the read).
DEFAULT_MAX_BODY_BYTES = 256 * 1024
# Auth headers longer than this are garbage: no legitimate one comes near it.
_MAX_HEADER_CHARS = 4096
# At most this many ``v1,`` entries are tried (a sender lists one per live secret).
_MAX_SIGNATURES = 8
# Delivery ids become job keys: printable ASCII without spaces, bounded.
_DELIVERY_ID = re.compile(r"[!-~]{1,128}")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class HookKind(enum.StrEnum):
    WANDB = "wandb"
    STANDARD = "standard"
    GITHUB = "github"


@dataclass(frozen=True, kw_only=True)
class HookAuth:
    """The secrets of one named hook.

    ``secrets`` sign the body (HMAC); ``tokens`` are bearer tokens (W&B only). Every
    configured kind of credential is required: a W&B hook with both a token and a
    secret needs both headers. For ``standard`` a secret is ``whsec_<base64>``.
    """

    kind: HookKind
    secrets: tuple[str, ...] = field(default=(), repr=False)
    tokens: tuple[str, ...] = field(default=(), repr=False)
    tolerance_s: float = DEFAULT_TOLERANCE_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if isinstance(self.secrets, str) or isinstance(self.tokens, str):
            raise ConfigError("a hook's secrets and tokens are lists of strings, not one string")
        if any(not s for s in (*self.secrets, *self.tokens)):
            raise ConfigError(f"a {self.kind} hook has an empty secret or token")
        if self.kind is HookKind.WANDB:
            if not (self.secrets or self.tokens):
                raise ConfigError("a wandb hook needs a signing secret, an access token or both")
        else:
            if self.tokens:
                raise ConfigError(f"a {self.kind} hook is signed; it takes secrets, not tokens")
            if not self.secrets:
                raise ConfigError(f"a {self.kind} hook needs at least one secret")
        if self.kind is HookKind.STANDARD:
            for secret in self.secrets:
                _standard_key(secret)  # refuses a secret that is not base64
        if not self.tolerance_s > 0:
            raise ConfigError(f"tolerance_s must be positive, not {self.tolerance_s!r}")
        if self.max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes must be at least 1, not {self.max_body_bytes!r}")


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """A delivery whose signature checked out; ``body`` is still unparsed bytes."""

    kind: HookKind
    #: The sender's delivery id (Standard Webhooks, GitHub); None for W&B, which has none.
    idempotency_key: str | None
    #: The signed ``webhook-timestamp`` (Standard Webhooks only).
    timestamp: int | None
    body: bytes = field(repr=False)


def verify(
    auth: HookAuth,
    headers: Mapping[str, str],
    body: bytes,
    *,
    clock: Callable[[], float] = time.time,
) -> Delivery:
    """Check ``body`` and ``headers`` against ``auth``; the :class:`Delivery` or an error.

    ``headers`` may use any case. A body over ``auth.max_body_bytes`` is FrameTooLarge
    (413); anything wrong with the credentials is SignatureError (401).
    """
    if len(body) > auth.max_body_bytes:
        raise FrameTooLarge(
            f"webhook body is {len(body)} bytes; the limit is {auth.max_body_bytes}"
        )
    lower = {k.lower(): v for k, v in headers.items()}
    if auth.kind is HookKind.WANDB:
        return _verify_wandb(auth, lower, body)
    if auth.kind is HookKind.STANDARD:
        return _verify_standard(auth, lower, body, now=clock())
    return _verify_github(auth, lower, body)


def _header(headers: Mapping[str, str], name: str) -> str:
    """The header's value, stripped; missing, empty, too long or not ASCII is a 401."""
    value = headers.get(name)
    if value is None:
        raise SignatureError(f"the {name} header is missing")
    if len(value) > _MAX_HEADER_CHARS:
        raise SignatureError(f"the {name} header is too long")
    if not value.isascii() or not value.isprintable():
        raise SignatureError(f"the {name} header holds characters that are not printable ASCII")
    value = value.strip()
    if not value:
        raise SignatureError(f"the {name} header is empty")
    return value


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _any_equal(candidates: Iterable[bytes], expected: Iterable[bytes]) -> bool:
    """Whether any candidate equals any expected value; compares every pair, in constant time."""
    wanted = list(expected)
    hits = [hmac.compare_digest(c, e) for c in candidates for e in wanted]
    return any(hits)


def _decode_wandb_signature(value: str) -> bytes:
    """The 32 digest bytes of ``X-Wandb-Signature``: ``sha256=<hex>``, ``<hex>`` or base64."""
    text = value.removeprefix("sha256=")
    if text != value or _HEX_DIGEST.fullmatch(text):
        if not _HEX_DIGEST.fullmatch(text):
            raise SignatureError("the X-Wandb-Signature header is not sha256=<64 hex digits>")
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the X-Wandb-Signature header is neither hex nor base64") from None
    if len(raw) != hashlib.sha256().digest_size:
        raise SignatureError("the X-Wandb-Signature header is not a SHA-256 digest")
    return raw


def _verify_wandb(auth: HookAuth, headers: Mapping[str, str], body: bytes) -> Delivery:
    if auth.tokens:
        scheme, _, token = _header(headers, "authorization").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise SignatureError("the Authorization header is not 'Bearer <token>'")
        if not _any_equal([token.strip().encode()], (t.encode() for t in auth.tokens)):
            raise SignatureError("the bearer token is wrong")
    if auth.secrets:
        digest = _decode_wandb_signature(_header(headers, "x-wandb-signature"))
        if not _any_equal([digest], (_mac(s.encode(), body) for s in auth.secrets)):
            raise SignatureError("the X-Wandb-Signature does not match the body")
    return Delivery(kind=HookKind.WANDB, idempotency_key=None, timestamp=None, body=body)


def _standard_key(secret: str) -> bytes:
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("a Standard Webhooks secret must be 'whsec_<base64>'") from None
    if not key:
        raise ConfigError("a Standard Webhooks secret must not be empty")
    return key


def _standard_signatures(value: str) -> list[bytes]:
    """The decoded ``v1,<base64>`` entries of ``webhook-signature``; other versions skipped."""
    found: list[bytes] = []
    for entry in value.split(" ")[: _MAX_SIGNATURES * 2]:
        version, sep, encoded = entry.partition(",")
        if version != "v1" or not sep:
            continue  # v1a (asymmetric) and future versions are not ours to check
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not found:
        raise SignatureError("the webhook-signature header holds no v1,<base64> signature")
    return found[:_MAX_SIGNATURES]


def _verify_standard(
    auth: HookAuth, headers: Mapping[str, str], body: bytes, *, now: float
) -> Delivery:
    msg_id = _header(headers, "webhook-id")
    if not _DELIVERY_ID.fullmatch(msg_id):
        raise SignatureError("the webhook-id header is not 1 to 128 printable characters")
    stamp = _header(headers, "webhook-timestamp")
    if not _TIMESTAMP.fullmatch(stamp):
        raise SignatureError("the webhook-timestamp header is not whole seconds since 1970")
    signatures = _standard_signatures(_header(headers, "webhook-signature"))
    timestamp = int(stamp)
    # The signature first, so that an unsigned request learns nothing of our clock.
    signed = f"{msg_id}.{stamp}.".encode() + body
    expected = (_mac(_standard_key(s), signed) for s in auth.secrets)
    if not _any_equal(signatures, expected):
        raise SignatureError("the webhook-signature does not match the body")
    if timestamp < now - auth.tolerance_s:
        raise SignatureError("the webhook-timestamp is too old (a replay?); check the clocks")
    if timestamp > now + auth.tolerance_s:
        raise SignatureError("the webhook-timestamp is in the future; check the clocks")
    return Delivery(kind=HookKind.STANDARD, idempotency_key=msg_id, timestamp=timestamp, body=body)


def _verify_github(auth: HookAuth, headers: Mapping[str, str], body: bytes) -> Delivery:
    value = _header(headers, "x-hub-signature-256")
    prefix, _, hexdigest = value.partition("=")
    if prefix != "sha256" or not _HEX_DIGEST.fullmatch(hexdigest):
        raise SignatureError("the X-Hub-Signature-256 header is not sha256=<64 hex digits>")
    if not _any_equal([bytes.fromhex(hexdigest)], (_mac(s.encode(), body) for s in auth.secrets)):
        raise SignatureError("the X-Hub-Signature-256 does not match the body")
    key = None
    if "x-github-delivery" in headers:
        key = _header(headers, "x-github-delivery")
        if not _DELIVERY_ID.fullmatch(key):
            raise SignatureError(
                "the X-GitHub-Delivery header is not 1 to 128 printable characters"
            )
    return Delivery(kind=HookKind.GITHUB, idempotency_key=key, timestamp=None, body=body)
