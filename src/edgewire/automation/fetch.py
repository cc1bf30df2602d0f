"""HTTP(S) GETs that cannot be turned against the device's own network (SSRF).

The host must be allow-listed; every address it resolves to must be public or in an
allow-listed network; the connection goes to the address that was checked (the URL is
rewritten to it, while the Host header and TLS SNI keep the name, so certificates are
still checked against the name); each redirect is checked again from the start; the
body is streamed under a size cap and a total deadline and hashed (sha256) on the way.
No proxy from the environment is used, and no content-encoding is decoded.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urljoin

import httpx

from edgewire.automation.urls import UrlPolicy
from edgewire.errors import (
    ConnectError,
    FrameTooLarge,
    NotAllowed,
    PeerTimeout,
    RemoteError,
    one_line,
)

_CHUNK = 1 << 16


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def _system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectError(f"cannot resolve host {host!r}: {one_line(exc)}") from None
    return [str(info[4][0]) for info in infos]


class GuardedFetcher:
    """GETs allow-listed URLs only, pinned to the address that was checked (see module doc)."""

    def __init__(
        self,
        policy: UrlPolicy,
        *,
        timeout_s: float = 30.0,
        total_timeout_s: float = 3600.0,
        resolver: Resolver = _system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``headers`` go with every request (an agent source's bearer token)."""
        self.policy = policy
        self._headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.total_timeout_s = total_timeout_s
        self._resolver = resolver
        self._transport = transport

    def client(self) -> httpx.AsyncClient:
        # trust_env=False: a proxy from the environment would connect where it likes.
        return httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(self.timeout_s),
            transport=self._transport,
            headers=self._headers,
        )

    async def fetch(
        self,
        client: httpx.AsyncClient,
        url: str,
        sink: Callable[[bytes], object],
        *,
        max_bytes: int,
    ) -> str:
        """Stream ``url``'s body into ``sink``; its hex sha256. FrameTooLarge past ``max_bytes``,
        PeerTimeout past ``total_timeout_s`` (a server that sends a byte a minute ends too)."""
        try:
            async with asyncio.timeout(self.total_timeout_s):
                return await self._fetch(client, url, sink, max_bytes=max_bytes)
        except TimeoutError:
            raise PeerTimeout(f"the download of {url[:120]!r} took too long") from None

    async def _fetch(
        self,
        client: httpx.AsyncClient,
        url: str,
        sink: Callable[[bytes], object],
        *,
        max_bytes: int,
    ) -> str:
        for _ in range(self.policy.max_redirects + 1):
            parsed = self.policy.check_url(url)
            address = self.policy.check_addresses(
                parsed.host, await self._resolver(parsed.host, parsed.port)
            )
            default = 443 if parsed.scheme == "https" else 80
            host_header = parsed.host if parsed.port == default else f"{parsed.host}:{parsed.port}"
            if ":" in parsed.host and parsed.port == default:
                host_header = f"[{parsed.host}]"
            elif ":" in parsed.host:
                host_header = f"[{parsed.host}]:{parsed.port}"
            pinned = httpx.URL(url).copy_with(host=str(address))
            extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
            request = client.build_request(
                "GET", pinned, headers={"Host": host_header}, extensions=extensions
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.TimeoutException:
                raise PeerTimeout(f"{parsed.host} did not answer in time") from None
            except httpx.HTTPError as exc:
                raise ConnectError(f"cannot fetch from {parsed.host}: {one_line(exc)}") from None
            try:
                if response.is_redirect:  # a 3xx with a Location
                    target = urljoin(url, response.headers["location"])
                    if parsed.scheme == "https" and not target.lower().startswith("https:"):
                        raise NotAllowed(f"{parsed.host} redirected from https to plain http")
                    url = target
                    continue
                if response.status_code != 200:
                    raise RemoteError(f"{parsed.host} answered HTTP {response.status_code}")
                return await _stream(response, sink, max_bytes=max_bytes, host=parsed.host)
            finally:
                await response.aclose()
        raise NotAllowed(f"more than {self.policy.max_redirects} redirects")


async def _stream(
    response: httpx.Response, sink: Callable[[bytes], object], *, max_bytes: int, host: str
) -> str:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise FrameTooLarge(f"{host} sends {declared} bytes; the limit is {max_bytes}")
    digest = hashlib.sha256()
    seen = 0
    try:
        async for chunk in response.aiter_raw(_CHUNK):
            seen += len(chunk)
            if seen > max_bytes:
                raise FrameTooLarge(f"{host} sends more than {max_bytes} bytes")
            digest.update(chunk)
            sink(chunk)
    except httpx.TimeoutException:
        raise PeerTimeout(f"{host} stopped sending") from None
    except httpx.HTTPError as exc:
        raise ConnectError(f"the download from {host} broke off: {one_line(exc)}") from None
    return digest.hexdigest()
