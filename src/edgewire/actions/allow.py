"""Allow-lists of URL prefixes and folders, shared by a run's POSTs and its sources.

A URL entry admits a URL of the same scheme, host and port (compared exactly, after
httpx's normalisation, which is what is sent) whose path is the entry's path or lies
under it at a ``/`` boundary. A path with ``..`` segments or an encoded ``.`` or ``/``
(``%2e``, ``%2f``) is refused outright: what a peer does with it is not ours to guess.
A folder entry admits the files under it, symlinks resolved.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

_ENCODED_DOT_OR_SLASH = re.compile(r"%2[ef]", re.IGNORECASE)
#: A camera: ``0`` or ``/dev/videoN`` (as ``edgewire.project.capture`` reads them).
CAMERA = re.compile(r"(?:/dev/video)?\d{1,3}")


def is_url(text: str) -> bool:
    return "://" in text


def _parse(url: str) -> httpx.URL | None:
    try:
        raw_path = urlsplit(url).path
        parsed = httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        return None
    if _ENCODED_DOT_OR_SLASH.search(raw_path) or ".." in raw_path.split("/"):
        return None
    return parsed


def url_allowed(
    url: str, allow: Iterable[str], *, schemes: Iterable[str], userinfo: bool = False
) -> bool:
    """Whether ``url`` (one of ``schemes``) lies under one of the URL entries of ``allow``."""
    target = _parse(url)
    if target is None or target.scheme not in set(schemes) or not target.host:
        return False
    if target.userinfo and not userinfo:
        return False
    path = target.path or "/"
    for entry in allow:
        if not is_url(entry):
            continue
        rule = _parse(entry)
        if rule is None:
            continue
        same_origin = (rule.scheme, rule.host, rule.port) == (
            target.scheme,
            target.host,
            target.port,
        )
        want = rule.path or "/"
        under = want if want.endswith("/") else want + "/"
        if same_origin and (path == want or path.startswith(under)):
            return True
    return False


def path_allowed(path: str, allow: Iterable[str]) -> bool:
    """Whether ``path``, resolved, lies under one of the folder entries of ``allow``."""
    try:
        target = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    for entry in allow:
        if is_url(entry):
            continue
        try:
            folder = Path(entry).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if target.is_relative_to(folder):
            return True
    return False
