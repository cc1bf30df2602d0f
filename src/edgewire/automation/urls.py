"""What may be fetched: URL schemes and hosts, the addresses they resolve to, local paths.

Sans-IO but for :meth:`UrlPolicy.check_addresses`, which takes addresses a caller has
already resolved. A URL passes when its scheme and host are allow-listed; the host's
addresses pass when each is public (globally routable unicast) or lies in an
allow-listed network, so that a name that resolves to loopback, a private LAN, a
link-local metadata service (169.254.169.254) or a multicast group is refused unless
the operator said otherwise. ``file://`` URLs and local paths pass only under an
allow-listed root, after symlinks are resolved.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgewire.errors import ConfigError, NotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAX_URL_CHARS = 2048


@dataclass(frozen=True, kw_only=True)
class ParsedUrl:
    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int
    path: str  # path and query, as sent in the request line


@dataclass(frozen=True, kw_only=True)
class UrlPolicy:
    """The allow-lists for URLs. Empty lists allow nothing.

    ``hosts``: host names or IP literals a URL may name (exact, lower case).
    ``networks``: address ranges allowed although not public (``127.0.0.1/32`` for a
    test server, ``10.0.0.0/8`` for a LAN store). ``schemes``: ``https`` by default;
    add ``http`` deliberately. ``file_roots``: folders ``file://`` URLs and local paths
    may point into.
    """

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    schemes: frozenset[str] = frozenset({"https"})
    file_roots: tuple[Path, ...] = ()
    max_redirects: int = 5

    def __post_init__(self) -> None:
        bad = sorted(s for s in self.schemes if s not in {"http", "https"})
        if bad:
            raise ConfigError(f"URL schemes {bad!r} are not supported; use http or https")
        if any(h != h.lower() or not h for h in self.hosts):
            raise ConfigError(
                f"allow-listed hosts must be lower-case names: {sorted(self.hosts)!r}"
            )
        if self.max_redirects < 0:
            raise ConfigError(f"max_redirects must be at least 0, not {self.max_redirects!r}")

    @classmethod
    def from_strings(
        cls,
        *,
        hosts: Iterable[str] = (),
        networks: Iterable[str] = (),
        schemes: Iterable[str] = ("https",),
        file_roots: Iterable[str | Path] = (),
        max_redirects: int = 5,
    ) -> UrlPolicy:
        """A policy from config values; a bad network is a one-line ConfigError."""
        nets: list[IPNetwork] = []
        for text in networks:
            try:
                nets.append(ipaddress.ip_network(text, strict=True))
            except ValueError as exc:
                raise ConfigError(f"allow-listed network {text!r} is invalid: {exc}") from None
        return cls(
            hosts=frozenset(h.lower() for h in hosts),
            networks=tuple(nets),
            schemes=frozenset(schemes),
            file_roots=tuple(Path(r) for r in file_roots),
            max_redirects=max_redirects,
        )

    def check_url(self, url: str) -> ParsedUrl:
        """``url`` split into its parts, or NotAllowed when its scheme or host is not listed."""
        if len(url) > _MAX_URL_CHARS or not url.isascii() or not url.isprintable() or " " in url:
            raise NotAllowed("a URL that is too long or not printable ASCII is refused")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise NotAllowed(f"URL {_shown(url)!r} is malformed") from None
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            raise NotAllowed(
                f"URL scheme {scheme!r} is not allowed (allowed: {sorted(self.schemes)})"
            )
        if parts.username is not None or parts.password is not None:
            raise NotAllowed("URLs with credentials in them are refused")
        host = (parts.hostname or "").lower()
        if not host:
            raise NotAllowed(f"URL {_shown(url)!r} has no host")
        if host not in self.hosts:
            raise NotAllowed(f"host {host!r} is not on the allow-list")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        default = 443 if scheme == "https" else 80
        return ParsedUrl(scheme=scheme, host=host, port=port or default, path=path)

    def check_addresses(self, host: str, addresses: Iterable[str]) -> IPAddress:
        """The address to connect to for ``host``: the first of ``addresses`` when every one of
        them is allowed; NotAllowed as soon as one is not (a name that also resolves to a
        private address is not trusted at all)."""
        checked: list[IPAddress] = []
        for text in addresses:
            try:
                address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone
            except ValueError:
                raise NotAllowed(f"host {host!r} resolved to {text!r}, not an address") from None
            if not self.address_allowed(address):
                raise NotAllowed(
                    f"host {host!r} resolves to {address}, a non-public address that is not "
                    "allow-listed (add its network to the allow-list if it is meant)"
                )
            checked.append(address)
        if not checked:
            raise NotAllowed(f"host {host!r} resolved to no address")
        return checked[0]

    def address_allowed(self, address: IPAddress) -> bool:
        if any(address in net for net in self.networks if net.version == address.version):
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return self.address_allowed(address.ipv4_mapped)
        return is_public(address)

    def check_path(self, path: str | Path) -> Path:
        """``path`` resolved (symlinks followed), when it lies under an allow-listed root."""
        resolved = Path(os.path.realpath(path))
        for root in self.file_roots:
            if resolved.is_relative_to(Path(os.path.realpath(root))):
                return resolved
        raise NotAllowed(f"local path {_shown(str(path))!r} is outside the allow-listed folders")

    def check_reference(self, ref: str) -> None:
        """A manifest entry's or payload field's URL: an allowed http(s) URL or ``file://`` path."""
        if ref.lower().startswith("file:"):
            parts = urlsplit(ref)
            if parts.netloc not in {"", "localhost"}:
                raise NotAllowed(f"file URL {_shown(ref)!r} names a remote host")
            self.check_path(parts.path)
            return
        self.check_url(ref)


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is globally routable unicast: not loopback, private, link-local,
    multicast, reserved, unspecified or shared (CGNAT)."""
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_loopback
    )


def looks_like_url(text: str) -> bool:
    """Whether a payload string is a URL or a path with a scheme (``x://``, ``file:``)."""
    lowered = text.strip().lower()
    return "://" in lowered or lowered.startswith(("file:", "//"))


def _shown(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."
