"""Webhook signatures: the published vectors, rotation, and every malformed header a 401."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from edgewire.automation.signatures import (
    DEFAULT_TOLERANCE_S,
    Delivery,
    HookAuth,
    HookKind,
    verify,
)
from edgewire.errors import AuthError, ConfigError, FrameTooLarge, SignatureError

# GitHub's documented test vector (RELIABILITY.md).
GH_SECRET = "It's a Secret to Everybody"
GH_BODY = b"Hello, World!"
GH_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

# The Standard Webhooks reference vector (the standardwebhooks libraries' tests).
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TS = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

WB_SECRET = "wandb-signing-secret"
WB_BODY = b'{"event_type": "ADD_ARTIFACT_ALIAS", "alias": "download"}'


def github(*secrets: str) -> HookAuth:
    return HookAuth(kind=HookKind.GITHUB, secrets=secrets or (GH_SECRET,))


def standard(*secrets: str) -> HookAuth:
    return HookAuth(kind=HookKind.STANDARD, secrets=secrets or (SW_SECRET,))


def sw_headers(**overrides: str) -> dict[str, str]:
    headers = {"webhook-id": SW_ID, "webhook-timestamp": str(SW_TS), "webhook-signature": SW_SIG}
    headers.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return headers


def wb_mac(body: bytes = WB_BODY, secret: str = WB_SECRET) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


def test_signature_error_is_a_401_auth_error_with_its_own_code() -> None:
    assert issubclass(SignatureError, AuthError)
    assert (SignatureError.code, SignatureError.http_status) == ("signature", 401)


# -- GitHub ---------------------------------------------------------------------------


def test_github_vector_is_accepted_with_its_delivery_id() -> None:
    got = verify(
        github(),
        {"X-Hub-Signature-256": GH_SIG, "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab"},
        GH_BODY,
    )
    assert got == Delivery(
        kind=HookKind.GITHUB,
        idempotency_key="72d3162e-cc78-11e3-81ab",
        timestamp=None,
        body=GH_BODY,
    )


@pytest.mark.parametrize("index", [0, 5, len(GH_BODY) - 1])
def test_github_one_byte_changed_in_the_body_is_refused(index: int) -> None:
    body = bytearray(GH_BODY)
    body[index] ^= 0x01
    with pytest.raises(SignatureError, match="does not match"):
        verify(github(), {"X-Hub-Signature-256": GH_SIG}, bytes(body))


def test_github_one_digit_changed_in_the_signature_is_refused() -> None:
    wrong = GH_SIG[:-1] + ("0" if GH_SIG[-1] != "0" else "1")
    with pytest.raises(SignatureError, match="does not match"):
        verify(github(), {"x-hub-signature-256": wrong}, GH_BODY)


def test_github_uppercase_hex_and_header_case_do_not_matter() -> None:
    assert verify(
        github(), {"X-HUB-SIGNATURE-256": GH_SIG.upper().replace("SHA256", "sha256")}, GH_BODY
    )


def test_rotation_any_configured_secret_verifies() -> None:
    assert verify(github("new secret", GH_SECRET), {"X-Hub-Signature-256": GH_SIG}, GH_BODY)
    with pytest.raises(SignatureError):
        verify(github("new secret", "other"), {"X-Hub-Signature-256": GH_SIG}, GH_BODY)


@pytest.mark.parametrize(
    "value",
    [
        None, "", "   ", "sha256=", "sha256", "sha1=" + "0" * 40, "sha256=xyz",
        "sha256=" + "0" * 63, "sha256=" + "0" * 65, GH_SIG.removeprefix("sha256="),
        "sha256=" + "é" * 64, "sha256=75\x007107", "x" * 10_000, "sha256 =" + "0" * 64,
    ],
    ids=lambda v: repr(v)[:24],
)  # fmt: skip
def test_github_missing_empty_or_garbled_signature_is_a_signature_error(value: str | None) -> None:
    headers = {} if value is None else {"X-Hub-Signature-256": value}
    with pytest.raises(SignatureError):
        verify(github(), headers, GH_BODY)


def test_github_garbled_delivery_id_is_refused_and_a_missing_one_is_no_key() -> None:
    assert verify(github(), {"X-Hub-Signature-256": GH_SIG}, GH_BODY).idempotency_key is None
    with pytest.raises(SignatureError, match="X-GitHub-Delivery"):
        verify(github(), {"X-Hub-Signature-256": GH_SIG, "X-GitHub-Delivery": "a b"}, GH_BODY)


def test_body_over_the_cap_is_too_large_before_any_check() -> None:
    auth = HookAuth(kind=HookKind.GITHUB, secrets=(GH_SECRET,), max_body_bytes=len(GH_BODY) - 1)
    with pytest.raises(FrameTooLarge):
        verify(auth, {"X-Hub-Signature-256": GH_SIG}, GH_BODY)
    at_limit = HookAuth(kind=HookKind.GITHUB, secrets=(GH_SECRET,), max_body_bytes=len(GH_BODY))
    assert verify(at_limit, {"X-Hub-Signature-256": GH_SIG}, GH_BODY)


# -- Standard Webhooks ------------------------------------------------------------------


def test_standard_vector_is_accepted_with_webhook_id_as_key() -> None:
    got = verify(standard(), sw_headers(), SW_BODY, clock=lambda: SW_TS)
    assert (got.kind, got.idempotency_key, got.timestamp) == (HookKind.STANDARD, SW_ID, SW_TS)


def test_standard_secret_without_prefix_and_rotation_work() -> None:
    other = "whsec_" + base64.b64encode(b"another key").decode()
    assert verify(
        standard(other, SW_SECRET.removeprefix("whsec_")),
        sw_headers(),
        SW_BODY,
        clock=lambda: SW_TS,
    )


@pytest.mark.parametrize(
    "signature",
    [
        f"v1,bm90IG15IHNpZ25hdHVyZQ== {SW_SIG}",
        f"v2,abc {SW_SIG}",
        f"v1a,xyz {SW_SIG} v1,garbage!!",
    ],
)
def test_standard_any_v1_entry_may_match(signature: str) -> None:
    assert verify(standard(), sw_headers(webhook_signature=signature), SW_BODY, clock=lambda: SW_TS)


@pytest.mark.parametrize(
    "changed",
    [
        {"webhook_id": "msg_other"},
        {"webhook_timestamp": str(SW_TS + 1)},
        {"webhook_signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="},
    ],
)
def test_standard_any_signed_part_changed_is_refused(changed: dict[str, str]) -> None:
    with pytest.raises(SignatureError):
        verify(standard(), sw_headers(**changed), SW_BODY, clock=lambda: SW_TS + 1)


def test_standard_body_changed_by_one_byte_is_refused() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        verify(standard(), sw_headers(), SW_BODY.replace(b"2", b"3", 1), clock=lambda: SW_TS)


@pytest.mark.parametrize("offset", [-(DEFAULT_TOLERANCE_S + 1), DEFAULT_TOLERANCE_S + 1])
def test_standard_timestamp_past_tolerance_by_one_second_is_refused(offset: float) -> None:
    with pytest.raises(SignatureError, match=r"too old|future"):
        verify(standard(), sw_headers(), SW_BODY, clock=lambda: SW_TS - offset)


@pytest.mark.parametrize("offset", [-DEFAULT_TOLERANCE_S, 0, DEFAULT_TOLERANCE_S])
def test_standard_timestamp_within_tolerance_is_accepted(offset: float) -> None:
    assert verify(standard(), sw_headers(), SW_BODY, clock=lambda: SW_TS - offset)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("webhook-id", None), ("webhook-id", ""), ("webhook-id", "a b"), ("webhook-id", "x" * 200),
        ("webhook-timestamp", None), ("webhook-timestamp", ""), ("webhook-timestamp", "-1"),
        ("webhook-timestamp", "1.5"), ("webhook-timestamp", "1e9"), ("webhook-timestamp", "١٢٣"),
        ("webhook-signature", None), ("webhook-signature", ""), ("webhook-signature", "v1,"),
        ("webhook-signature", "v1"), ("webhook-signature", "g0hM9SsE+OTPJTGt"),
        ("webhook-signature", "v1,not*base64"), ("webhook-signature", "v1,ünïcödé"),
        ("webhook-signature", "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
    ],
)  # fmt: skip
def test_standard_missing_empty_or_garbled_headers_are_signature_errors(
    name: str, value: str | None
) -> None:
    headers = sw_headers()
    if value is None:
        del headers[name]
    else:
        headers[name] = value
    with pytest.raises(SignatureError):
        verify(standard(), headers, SW_BODY, clock=lambda: SW_TS)


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", "", "whsec_===="])
def test_standard_bad_secret_is_a_config_error(secret: str) -> None:
    with pytest.raises(ConfigError):
        standard(secret)


# -- W&B --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        lambda d: base64.b64encode(d).decode(),
        lambda d: d.hex(),
        lambda d: d.hex().upper(),
        lambda d: "sha256=" + d.hex(),
    ],
    ids=["base64", "hex", "HEX", "sha256=hex"],
)
def test_wandb_signature_in_each_encoding(encode: object) -> None:
    auth = HookAuth(kind=HookKind.WANDB, secrets=(WB_SECRET,))
    sig = encode(wb_mac())  # type: ignore[operator]
    got = verify(auth, {"X-Wandb-Signature": sig}, WB_BODY)
    assert (got.kind, got.idempotency_key, got.body) == (HookKind.WANDB, None, WB_BODY)
    with pytest.raises(SignatureError):
        verify(auth, {"X-Wandb-Signature": sig}, WB_BODY + b" ")


@pytest.mark.parametrize(
    "value",
    [None, "", "sha256=", "sha256=abc", "bm90IGEgZGlnZXN0", "!!!!", "0" * 63, "sha256=" + "0" * 64],
    ids=repr,
)
def test_wandb_garbled_or_wrong_signature_is_a_signature_error(value: str | None) -> None:
    auth = HookAuth(kind=HookKind.WANDB, secrets=(WB_SECRET,))
    with pytest.raises(SignatureError):
        verify(auth, {} if value is None else {"X-Wandb-Signature": value}, WB_BODY)


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer tok-1", True), ("bearer tok-2", True), ("Bearer  tok-1 ", True),
        ("Bearer tok-3", False), ("Basic tok-1", False), ("Bearer", False), ("Bearer ", False),
        ("tok-1", False), ("", False), (None, False), ("Bearer tök-1", False),
    ],
)  # fmt: skip
def test_wandb_bearer_token_with_rotation(header: str | None, ok: bool) -> None:
    auth = HookAuth(kind=HookKind.WANDB, tokens=("tok-1", "tok-2"))
    headers = {} if header is None else {"Authorization": header}
    if ok:
        assert verify(auth, headers, WB_BODY).kind is HookKind.WANDB
    else:
        with pytest.raises(SignatureError):
            verify(auth, headers, WB_BODY)


def test_wandb_token_and_secret_both_configured_are_both_required() -> None:
    auth = HookAuth(kind=HookKind.WANDB, secrets=(WB_SECRET,), tokens=("tok",))
    sig = wb_mac().hex()
    assert verify(auth, {"Authorization": "Bearer tok", "X-Wandb-Signature": sig}, WB_BODY)
    with pytest.raises(SignatureError):
        verify(auth, {"X-Wandb-Signature": sig}, WB_BODY)
    with pytest.raises(SignatureError):
        verify(auth, {"Authorization": "Bearer tok"}, WB_BODY)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": HookKind.WANDB},
        {"kind": HookKind.GITHUB},
        {"kind": HookKind.GITHUB, "secrets": ("s",), "tokens": ("t",)},
        {"kind": HookKind.GITHUB, "secrets": ("",)},
        {"kind": HookKind.GITHUB, "secrets": "a-string-not-a-tuple"},
        {"kind": HookKind.WANDB, "tokens": ("t",), "tolerance_s": 0},
        {"kind": HookKind.WANDB, "tokens": ("t",), "max_body_bytes": 0},
    ],
)
def test_bad_hook_configs_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        HookAuth(**kwargs)  # type: ignore[arg-type]


def test_secrets_are_not_in_the_repr() -> None:
    auth = HookAuth(kind=HookKind.WANDB, secrets=("s3cr3t",), tokens=("t0k3n",))
    assert "s3cr3t" not in repr(auth) and "t0k3n" not in repr(auth)
