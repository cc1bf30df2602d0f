"""The agent's workspaces on disk, for ``workspaces_api.py``: listing, counts, images, removal,
and a workspace's split registered as an uploaded data set.

    DATA/workspaces/NAME/                 a :class:`~edgewire.project.workspace.Workspace`
    DATA/workspaces/NAME/.thumbs/C/F.jpg  the thumbnail of image F of class C (made when asked)
    DATA/workspaces/.deleting-NAME-XXXX   a workspace being removed (renamed first)

Everything here is synchronous (the routes call it in a thread) and no message names a
local path: they go to the browser.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgewire import fsutil
from edgewire.agent.blobs import BlobStore
from edgewire.data.manifest import Manifest, parse_manifest, scan_folder
from edgewire.errors import ConfigError, DataError
from edgewire.project.imagefiles import thumbnail_jpeg
from edgewire.project.split import SPLIT_NAMES
from edgewire.project.workspace import CONFIG_FILE, DATASET, IMAGES, Workspace

THUMBS = ".thumbs"
_DELETING = ".deleting-"
#: What an image's file name may be (content names are 20 hex digits and a suffix).
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_CHUNK = 1 << 20


def names(folder: Path) -> list[str]:
    """The workspaces in ``folder``, sorted (a folder without its edgewire.toml is not one)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [
        e.name
        for e in entries
        if not e.name.startswith(".")
        and e.is_dir(follow_symlinks=False)
        and os.path.isfile(os.path.join(e.path, CONFIG_FILE))
    ]


def open_workspace(root: Path) -> Workspace | None:
    """The workspace at ``root``; None if there is none; one line (no path) if it is broken."""
    if not (root / CONFIG_FILE).is_file():
        return None
    try:
        return Workspace.open(root)
    except ConfigError:
        raise ConfigError(
            f"workspace {root.name!r} has an unreadable {CONFIG_FILE}; delete it and make it again"
        ) from None


def _files(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return [e for e in entries
                    if not e.name.startswith(".") and e.is_file(follow_symlinks=False)]  # fmt: skip
    except (FileNotFoundError, NotADirectoryError):
        return []


def counts(ws: Workspace) -> dict[str, int]:
    return {name: len(_files(ws.root / IMAGES / name)) for name in ws.classes}


def split_counts(ws: Workspace) -> dict[str, int] | None:
    """Images in each split of the workspace's ``dataset/``; None before its first split."""
    dataset = ws.root / DATASET
    if not (dataset / SPLIT_NAMES[0]).is_dir():
        return None
    found = {}
    for split in SPLIT_NAMES:
        try:
            with os.scandir(dataset / split) as classes:
                folders = [c.path for c in classes if c.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            folders = []
        found[split] = sum(len(_files(Path(f))) for f in folders)
    return found


def summary(ws: Workspace) -> dict[str, Any]:
    return {"name": ws.root.name, "classes": list(ws.classes), "counts": counts(ws),
            "split": split_counts(ws)}  # fmt: skip


def _newest_first(entry: os.DirEntry[str]) -> tuple[float, str]:
    try:
        return -entry.stat(follow_symlinks=False).st_mtime, entry.name
    except OSError:
        return 0.0, entry.name


def detail(ws: Workspace, *, limit: int | None = None) -> dict[str, Any]:
    """Classes, counts and image names newest first (at most ``limit`` per class)."""
    images: dict[str, list[str]] = {}
    counted: dict[str, int] = {}
    for name in ws.classes:
        files = list(_files(ws.root / IMAGES / name))
        counted[name] = len(files)
        newest = (
            sorted(files, key=_newest_first)
            if limit is None
            else heapq.nsmallest(limit, files, key=_newest_first)
        )
        images[name] = [e.name for e in newest]
    return {"name": ws.root.name, "classes": list(ws.classes), "counts": counted,
            "images": images, "split": split_counts(ws)}  # fmt: skip


def image_path(ws: Workspace, name: str, file: str) -> Path | None:
    """The image ``file`` of class ``name`` (ConfigError for an unknown class or a name that
    is not a plain file name); None when the class has no such image."""
    folder = ws.class_dir(name)
    if not _FILE.fullmatch(file) or ".." in file:
        raise ConfigError(f"invalid image file name {file[:80]!r}: the names GET lists")
    path = folder / file
    return path if path.is_file() and not path.is_symlink() else None


def thumbnail(ws: Workspace, path: Path, *, side: int, max_pixels: int) -> bytes:
    """The thumbnail of image ``path``, made once and kept (the name is the content's)."""
    cached = _thumb(ws, path)
    try:
        return cached.read_bytes()
    except FileNotFoundError:
        pass
    data = thumbnail_jpeg(path, side=side, max_pixels=max_pixels)
    # Best effort: a thumbnail that cannot be kept (a full disk) is still answered.
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fsutil.atomic_write_bytes(cached, data)
    except OSError:
        pass
    return data


def _thumb(ws: Workspace, image: Path) -> Path:
    return ws.root / THUMBS / image.parent.name / f"{image.name}.jpg"


def delete_image(ws: Workspace, path: Path) -> None:
    with fsutil.disk_errors("delete the image", default=DataError):
        path.unlink(missing_ok=True)
        _thumb(ws, path).unlink(missing_ok=True)


def remove(root: Path) -> None:
    """Remove workspace ``root``: renamed aside first, so no half-removed one is ever listed."""
    aside = root.with_name(f"{_DELETING}{root.name}-{secrets.token_hex(4)}")
    with fsutil.disk_errors("delete the workspace", default=DataError):
        root.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)


def sweep(folder: Path) -> None:
    """Finish removals a stopped agent left half-done."""
    try:
        leftovers = [p for p in folder.iterdir() if p.name.startswith(_DELETING)]
    except FileNotFoundError:
        return
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def dataset_bytes(ws: Workspace) -> int:
    """Bytes of the workspace's images: about what a split of them writes."""
    total = 0
    for name in ws.classes:
        for entry in _files(ws.root / IMAGES / name):
            try:
                total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


@dataclass(frozen=True)
class Registered:
    manifest: Manifest
    #: Files the blob store did not hold yet, and their bytes.
    stored: int
    stored_bytes: int


def register_dataset(
    store: BlobStore,
    folder: Path,
    *,
    max_files: int,
    max_bytes: int,
    check_disk: Callable[[int], None],
) -> Registered:
    """The split ``folder`` as a data set of ``store``, as ``POST /api/datasets`` and the
    blob uploads of a client would leave it; ``check_disk(bytes)`` before anything is written.

    Each file is copied into the store through its hash: a file that changed since the
    scan is refused, never stored under a sha256 that is not its own."""
    try:
        scanned = scan_folder(folder)
    except OSError as exc:
        raise DataError(f"cannot read the split ({exc.strerror or type(exc).__name__})") from None
    except DataError:
        raise DataError("the split holds no files, or a symlink; split again") from None
    # The limits an upload of the same data set would meet.
    manifest = parse_manifest(scanned.to_dict(), max_files=max_files, max_bytes=max_bytes)
    by_sha = {e.sha256: folder.joinpath(*e.path.split("/")) for e in manifest.files}
    sizes = manifest.blobs()
    lacking = store.missing(manifest)
    need = sum(sizes[sha] for sha in lacking)
    check_disk(need)
    with fsutil.disk_errors("store the data set", default=DataError):
        store.blobs.mkdir(parents=True, exist_ok=True)
        for sha in lacking:
            _copy_checked(store, by_sha[sha], sha)
    store.save_manifest(manifest)
    return Registered(manifest=manifest, stored=len(lacking), stored_bytes=need)


def _copy_checked(store: BlobStore, source: Path, sha: str) -> None:
    # A dot name: the store's sweep removes one a killed agent left behind.
    tmp = store.blobs / f".{sha}.{os.getpid()}-{secrets.token_hex(4)}"
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as src, open(tmp, "xb") as out:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha:
            raise DataError("a file of the split changed while it was registered; try again")
        store.adopt(tmp, sha)
    finally:
        tmp.unlink(missing_ok=True)
