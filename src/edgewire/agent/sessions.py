"""Browser sessions of the dashboard: a login with the token gives an HttpOnly cookie.

A session is a random id the agent keeps in memory (never derived from the token),
with its own CSRF token: a request that changes state with the cookie must also carry
``X-Edgewire-CSRF`` with that token, which a page of another site cannot read or send.
The cookie is ``SameSite=Strict`` as well, so a cross-site request does not carry it.

Bounded: at most :data:`MAX_SESSIONS` (the oldest goes first), each for
:data:`SESSION_TTL_S`; failed logins are limited per client address.
"""

from __future__ import annotations

import collections
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

#: The cookie's name (and the agent's port after it: browsers share a host's cookies
#: across its ports, and two agents on one machine must not see each other's), and the
#: header that carries the session's CSRF token.
COOKIE = "edgewire_session"
CSRF_HEADER = "x-edgewire-csrf"
MAX_SESSIONS = 256
SESSION_TTL_S = 12 * 3600.0
#: Failed logins a client address may make per window before it waits.
LOGIN_FAILURES = 10
LOGIN_WINDOW_S = 60.0
MAX_TRACKED_CLIENTS = 1024
#: Methods that change nothing: they need the cookie but not the CSRF header.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cookie_name(port: int | None) -> str:
    """The session cookie of the agent listening on ``port``."""
    return COOKIE if port is None else f"{COOKIE}_{port}"


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    expires: float


class Sessions:
    """The live sessions of one agent, and its failed-login counts."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._failures: collections.OrderedDict[str, list[float]] = collections.OrderedDict()

    def create(self) -> Session:
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(24),
            expires=self._clock() + SESSION_TTL_S,
        )
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def get(self, cookie: str | None) -> Session | None:
        """The session a cookie names, if it is live (ids are 256 random bits)."""
        if not cookie or len(cookie) > 128:
            return None
        session = self._sessions.get(cookie)
        if session is not None and session.expires <= self._clock():
            del self._sessions[cookie]
            return None
        return session

    def end(self, cookie: str | None) -> None:
        session = self.get(cookie)
        if session is not None:
            self._sessions.pop(session.id, None)

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(
            session.csrf.encode(), given.encode("utf-8", "replace")
        )

    def login_allowed(self, client: str) -> bool:
        """False while ``client`` has failed :data:`LOGIN_FAILURES` times in the window."""
        now = self._clock()
        recent = [t for t in self._failures.get(client, []) if now - t < LOGIN_WINDOW_S]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return len(recent) < LOGIN_FAILURES

    def failed(self, client: str) -> None:
        self._failures.setdefault(client, []).append(self._clock())
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_TRACKED_CLIENTS:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._sessions)
