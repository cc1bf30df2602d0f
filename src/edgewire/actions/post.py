"""A class's HTTP POST: a small JSON body, with a timeout, only to an allow-listed URL.

An allow-list entry is a URL prefix: ``http://10.0.0.5:8080/hooks/`` admits
``http://10.0.0.5:8080/hooks/seen``; the scheme, host and port must match exactly
(``http://a.example`` does not admit ``http://a.example.evil``), and a path with
``..`` or ``%2e``/``%2f`` in it is refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from edgewire.actions.allow import url_allowed
from edgewire.errors import ConfigError, NotAllowed

#: Bytes of the answer kept.
MAX_ANSWER = 1024


@dataclass(frozen=True, slots=True)
class PostResult:
    url: str
    status: int | None
    seconds: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "seconds": round(self.seconds, 4),
                "error": self.error}  # fmt: skip


def allowed(url: str, allow: Iterable[str]) -> bool:
    """Whether ``url`` lies under one of the ``allow`` prefixes, origin for origin, as
    httpx will send it (:mod:`edgewire.actions.allow`)."""
    return url_allowed(url, allow, schemes=("http", "https"))


def check_allowed(url: str, allow: Iterable[str]) -> None:
    """NotAllowed unless ``url`` is on the allow-list (one line naming the fix)."""
    allow = list(allow)
    if not allowed(url, allow):
        listed = ", ".join(allow) if allow else "none"
        raise NotAllowed(
            f"POST to {url!r:.200} is not on the agent's allow-list (run_post_allow: {listed}); "
            "add its prefix to run_post_allow in the agent's config"
        )


async def post_json(url: str, body: Mapping[str, Any], *, timeout_s: float) -> PostResult:
    """POST ``body`` to ``url``; never raises for the peer's failure (the result says it)."""
    if timeout_s <= 0:
        raise ConfigError(f"timeout_s must be over 0, got {timeout_s!r}")
    began = time.monotonic()
    try:
        async with (
            httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client,
            client.stream("POST", url, json=dict(body)) as answer,
        ):
            status = answer.status_code  # the body is not read: the status is what counts
    except httpx.TimeoutException:
        return PostResult(url, None, time.monotonic() - began, f"no answer in {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return PostResult(url, None, time.monotonic() - began, f"{type(exc).__name__}: {exc}")
    return PostResult(url, status, time.monotonic() - began)
