"""Talking to an agent's HTTP port from the CLI: the request, the token header, and its
errors as one line each (ConnectError, AuthError, RemoteError with the agent's code)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import httpx

from edgewire.client.native import tls_from_env
from edgewire.errors import AuthError, ConnectError, RemoteError
from edgewire.ports import DEFAULT_HTTP_PORT


def auth_headers(token: str | None) -> dict[str, str]:
    token = token or os.environ.get("EDGEWIRE_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def send(method: str, host: str, port: int, path: str, **kwargs: Any) -> httpx.Response:
    """One request to an agent's HTTP port; ConnectError when there is no HTTP answer."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    context = tls_from_env()
    scheme = "https" if context is not None else "http"
    if context is not None:
        kwargs.setdefault("verify", context)
    try:
        return httpx.request(method, f"{scheme}://{where}{path}", **kwargs)
    except httpx.RemoteProtocolError as exc:
        # What the native port (or any other non-HTTP one) does with an HTTP request.
        raise ConnectError(
            f"{where} gave no HTTP answer ({exc}); is it the agent's HTTP port "
            f"(default {DEFAULT_HTTP_PORT}) and not its native one?"
        ) from exc
    except httpx.HTTPError as exc:
        raise ConnectError(f"cannot reach {where}: {exc}") from exc


def check(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code in (401, 403):
        raise AuthError(f"{what}: {message(response)} (pass --token or set EDGEWIRE_TOKEN)")
    if response.status_code >= 400:
        code = "internal"
        with contextlib.suppress(ValueError, AttributeError):
            code = str(response.json().get("code", "internal"))
        raise RemoteError(
            f"{what}: {message(response)} (HTTP {response.status_code})", remote_code=code
        )
    body: dict[str, Any] = response.json()
    return body


def message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:200]
