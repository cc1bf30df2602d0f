"""Uploaded data sets on the agent: files stored once by sha256, manifests that name them.

    DATA/remote/blobs/<sha256>        one uploaded file, read-only, stored once
    DATA/remote/datasets/<id>.json    a manifest (its id: the sha256 of its canonical JSON)
    DATA/remote/work/<run>/           a run's data set folder: symlinks to the blobs

A data set folder is symlinks, not copies or hard links: it costs no disk, and the
disk budget (which sums file sizes) does not count its files twice. Blobs are
renamed into place without an fsync each (a data set is thousands of small files);
a blob whose size is not the manifest's is hashed: a torn one goes and is sent again,
a whole one stays (the manifest is refused).
Everything is synchronous: the routes call it in a thread.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

from edgewire import fsutil
from edgewire.data.manifest import SHA256, Manifest, parse_manifest
from edgewire.errors import DataError
from edgewire.jsonsafe import loads_strict

REMOTE = "remote"
#: Sweeps (which read every manifest) run at most this often, unless forced.
SWEEP_EVERY_S = 60.0


class BlobStore:
    def __init__(
        self, data_dir: Path, *, ttl_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        root = data_dir / REMOTE
        self.blobs, self.datasets, self.work = root / "blobs", root / "datasets", root / "work"
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_sweep = 0.0

    def blob(self, sha256: str) -> Path:
        if not SHA256.match(sha256):
            raise DataError(f"not a sha256 (64 lowercase hex digits): {sha256[:80]!r}")
        return self.blobs / sha256

    def missing(self, manifest: Manifest) -> list[str]:
        """The blobs of ``manifest`` not stored yet (the others are touched: in use again)."""
        lacking = []
        now = self._clock()
        for sha, size in manifest.blobs().items():
            path = self.blobs / sha
            try:
                stored = path.stat().st_size
            except FileNotFoundError:
                lacking.append(sha)
                continue
            if stored != size:
                # Only a blob that fails its own hash goes (a torn write from a power
                # cut: it is sent again); a whole one may be linked by a running run.
                if fsutil.sha256_file(path) != sha:
                    path.unlink(missing_ok=True)
                    lacking.append(sha)
                    continue
                raise DataError(
                    f"sha256 {sha[:12]}... is a file of {stored} bytes on the agent, not "
                    f"the {size} the manifest says; scan the data set again"
                )
            os.utime(path, (now, now))
        return lacking

    def save_manifest(self, manifest: Manifest) -> str:
        ident = manifest.id
        path = self.datasets / f"{ident}.json"
        with fsutil.disk_errors("store the data set manifest", default=DataError):
            self.datasets.mkdir(parents=True, exist_ok=True)
            if path.exists():
                now = self._clock()
                os.utime(path, (now, now))
            else:
                fsutil.atomic_write_bytes(path, manifest.canonical())
        return ident

    def manifest(self, ident: str, *, max_files: int, max_bytes: int) -> Manifest:
        if not SHA256.match(ident):
            raise DataError(f"not a data set id (64 lowercase hex digits): {ident[:80]!r}")
        try:
            raw = (self.datasets / f"{ident}.json").read_bytes()
        except FileNotFoundError:
            raise DataError(
                f"no data set {ident[:12]}... on the agent (uploaded ones are kept "
                "dataset_ttl_s); send its manifest again (POST /api/datasets)"
            ) from None
        return parse_manifest(
            loads_strict(raw, what="the manifest"), max_files=max_files, max_bytes=max_bytes
        )

    def adopt(self, tmp: Path, sha256: str) -> bool:
        """Move the checked file ``tmp`` into the store as ``sha256``; False if it was there."""
        target = self.blob(sha256)
        with fsutil.disk_errors("store the file", default=DataError):
            self.blobs.mkdir(parents=True, exist_ok=True)
            if target.exists():
                tmp.unlink(missing_ok=True)
                return False
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        return True

    def write_many(self, items: list[tuple[str, bytes]]) -> int:
        """Store checked (sha256, bytes) pairs; how many were new."""
        new = 0
        with fsutil.disk_errors("store the files", default=DataError):
            self.blobs.mkdir(parents=True, exist_ok=True)
            for sha, data in items:
                target = self.blob(sha)
                if target.exists():
                    continue
                tmp = self.blobs / f".{sha}.{os.getpid()}-{secrets.token_hex(4)}"
                try:
                    with open(tmp, "xb") as out:
                        out.write(data)
                    os.chmod(tmp, 0o444)
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
                new += 1
        return new

    def materialise(self, manifest: Manifest, run_id: str) -> Path:
        """A fresh folder of symlinks laid out as the manifest says; DataError if a blob lacks."""
        lacking = self.missing(manifest)
        if lacking:
            raise DataError(
                f"{len(lacking)} file(s) of the data set are not on the agent; "
                "upload them first (PUT /api/blobs/SHA256), then start the run again"
            )
        folder = self.work / run_id
        self.remove_work(run_id)
        with fsutil.disk_errors("lay out the data set", default=DataError):
            for entry in manifest.files:
                link = folder.joinpath(*entry.path.split("/"))
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(self.blobs / entry.sha256, link)
        return folder

    def remove_work(self, run_id: str) -> None:
        shutil.rmtree(self.work / run_id, ignore_errors=True)

    def sweep(self, *, in_use: Collection[str], max_age_s: float | None = None,
              force: bool = False) -> int:  # fmt: skip
        """Remove manifests older than ``max_age_s`` (default: the TTL) and not ``in_use``,
        then the blobs no remaining manifest names that are as old; how many files went."""
        now = self._clock()
        with self._lock:
            if not force and now - self._last_sweep < SWEEP_EVERY_S:
                return 0
            self._last_sweep = now
        age = self.ttl_s if max_age_s is None else max_age_s
        gone = 0
        named: set[str] = set()
        for path in _files(self.datasets):
            ident = path.name.removesuffix(".json")
            old = now - _mtime(path) > age
            if old and ident not in in_use:
                path.unlink(missing_ok=True)
                gone += 1
                continue
            with contextlib.suppress(OSError, DataError, ValueError):
                named |= _blob_names(path.read_bytes())
        for path in _files(self.blobs):
            if path.name not in named and now - _mtime(path) > age:  # dot files: torn writes
                path.unlink(missing_ok=True)
                gone += 1
        return gone


def _files(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_file()]
    except FileNotFoundError:
        return []


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _blob_names(raw: bytes) -> set[str]:
    # Our own file, written by save_manifest: no limits to check again here.
    doc = loads_strict(raw, what="a stored manifest")
    return {str(item["sha256"]) for item in doc["files"]}
