"""A data set folder as a content-addressed manifest: ``{files: [{path, sha256, size}]}``.

Sans-IO apart from :func:`scan_folder`: the CLI builds a manifest from a folder, the
agent checks one that came from the network (:func:`parse_manifest`) before it
stores anything. A manifest's id is the sha256 of its canonical JSON, so the same
folder always has the same id and an upload that stopped half-way can go on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgewire.errors import DataError, FrameTooLarge, ProtocolError

SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_PATH_CHARS = 255
MAX_DEPTH = 8
#: Bytes of manifest JSON per file, at most (the body cap is this times the file cap).
BYTES_PER_ENTRY = MAX_PATH_CHARS + 160
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    path: str  # relative, "/"-separated, checked by check_path
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    files: tuple[Entry, ...]  # sorted by path

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"files": [{"path": e.path, "sha256": e.sha256, "size": e.size}
                          for e in self.files]}  # fmt: skip

    def canonical(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @property
    def id(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def blobs(self) -> dict[str, int]:
        """Each distinct sha256 and its size (one blob may stand for several paths)."""
        return {e.sha256: e.size for e in self.files}


def check_path(path: object) -> str:
    """``path`` if it is a safe relative file path inside the data set; else ProtocolError."""
    if not isinstance(path, str) or not path:
        raise ProtocolError(f"a manifest path must be a non-empty string, got {path!r}")
    shown = path[:80]
    if len(path) > MAX_PATH_CHARS:
        raise ProtocolError(f"manifest path {shown!r}... is over {MAX_PATH_CHARS} characters")
    if "\\" in path or any(unicodedata.category(c).startswith("C") for c in path):
        raise ProtocolError(
            f"manifest path {shown!r} holds a backslash or a control character; "
            "use '/'-separated printable names"
        )
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ProtocolError(
            f"manifest path {shown!r} must be relative, with no '..', '.' or empty parts"
        )
    if len(parts) > MAX_DEPTH:
        raise ProtocolError(f"manifest path {shown!r} is over {MAX_DEPTH} folders deep")
    return path


def parse_manifest(raw: object, *, max_files: int, max_bytes: int) -> Manifest:
    """A manifest from untrusted JSON (already parsed); one clear line for what is wrong."""
    if not isinstance(raw, Mapping) or set(raw) != {"files"} or not isinstance(raw["files"], list):
        raise ProtocolError('a manifest is {"files": [{"path", "sha256", "size"}, ...]}')
    items = raw["files"]
    if not items:
        raise DataError("the data set is empty: the manifest lists no files")
    if len(items) > max_files:
        raise FrameTooLarge(
            f"the data set has {len(items)} files, over max_dataset_files ({max_files})"
        )
    entries: dict[str, Entry] = {}
    sizes: dict[str, int] = {}
    total = 0
    for item in items:
        if not isinstance(item, Mapping) or set(item) != {"path", "sha256", "size"}:
            raise ProtocolError(f"a manifest entry is {{path, sha256, size}}, got {item!r:.120}")
        path = check_path(item["path"])
        digest, size = item["sha256"], item["size"]
        if not isinstance(digest, str) or not SHA256.match(digest):
            raise ProtocolError(f"{path!r}: sha256 must be 64 lowercase hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(f"{path!r}: size must be a whole number of bytes, got {size!r}")
        if path in entries:
            raise ProtocolError(f"manifest path {path!r} is listed twice")
        if sizes.setdefault(digest, size) != size:
            # One content has one size: the store keys its files by sha256 alone.
            raise ProtocolError(
                f"{path!r}: sha256 {digest[:12]}... is listed with {sizes[digest]} bytes "
                f"and with {size}; one file content has one size"
            )
        total += size
        if total > max_bytes:
            raise FrameTooLarge(f"the data set is over max_dataset_bytes ({max_bytes} bytes)")
        entries[path] = Entry(path, digest, size)
    folders = {str(parent) for p in entries for parent in PurePosixPath(p).parents}
    clash = sorted(folders & set(entries))
    if clash:
        raise ProtocolError(f"manifest path {clash[0]!r} is both a file and a folder")
    return Manifest(tuple(entries[p] for p in sorted(entries)))


def scan_folder(folder: Path, *, on_file: Callable[[int], None] | None = None) -> Manifest:
    """Hash every file under ``folder``; ``on_file(bytes)`` after each. Refuses symlinks
    (what the agent gets must be what is in the folder) and hidden files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{str(folder)!r} is not a folder")
    entries = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                raise DataError(f"{str(path)!r} is a symlink; copy the file into the data set")
            if not path.is_file():
                continue
            digest = hashlib.sha256()
            size = 0
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
            entries.append(Entry(check_path(rel), digest.hexdigest(), size))
            if on_file is not None:
                on_file(size)
        for d in dirs:
            if (Path(root) / d).is_symlink():
                raise DataError(f"{str(Path(root) / d)!r} is a symlink; copy it into the data set")
    if not entries:
        raise DataError(f"{str(folder)!r} holds no files")
    return Manifest(tuple(sorted(entries, key=lambda e: e.path)))


# --- blob packs: many small files in one request body -----------------------------------

#: A pack record's header: the file's sha256 (32 bytes raw) and its size (8 bytes, big-endian).
PACK_HEADER = 40


def pack(items: list[tuple[str, bytes]]) -> bytes:
    """The body of ``POST /api/blobs``: each (sha256 hex, bytes) as header + bytes."""
    return b"".join(bytes.fromhex(sha) + len(data).to_bytes(8, "big") + data for sha, data in items)


class PackDecoder:
    """Sans-IO: feed a pack's bytes in any split; get back each whole (sha256, bytes).

    ``max_item`` caps a record's size before its bytes are taken in (a record is held
    in memory until whole, so the caller holds it of its byte budget)."""

    def __init__(self, *, max_item: int) -> None:
        self.max_item = max_item
        self._head = b""
        self._sha = ""
        self._left: int | None = None  # bytes still to come of the record; None: in a header
        self._parts: list[bytes] = []

    @property
    def pending(self) -> int:
        """Bytes of the record under way that the decoder holds."""
        return sum(len(p) for p in self._parts)

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        done: list[tuple[str, bytes]] = []
        view, pos = memoryview(data), 0
        while pos < len(data) or self._left == 0:
            if self._left is None:
                take = bytes(view[pos : pos + PACK_HEADER - len(self._head)])
                self._head += take
                pos += len(take)
                if len(self._head) < PACK_HEADER:
                    break
                self._sha = self._head[:32].hex()
                size = int.from_bytes(self._head[32:], "big")
                self._head = b""
                if size > self.max_item:
                    raise FrameTooLarge(
                        f"a pack record of {size} bytes is over {self.max_item}; "
                        "send big files alone (PUT /api/blobs/SHA256)"
                    )
                self._left = size
            elif self._left == 0:
                done.append((self._sha, b"".join(self._parts)))
                self._parts, self._left = [], None
            else:
                take = bytes(view[pos : pos + self._left])
                self._parts.append(take)
                pos += len(take)
                self._left -= len(take)
        return done

    def close(self) -> None:
        if self._head or self._left is not None:
            raise ProtocolError("the pack ends in the middle of a record; send it again")
