"""Where artifacts come from: one small :class:`Source` interface and three sources.

``resolve(ref)`` asks the source what a ref (``entity/project/collection:alias``) names
now: a version id, a digest and the files. ``download(resolved, dest_dir)`` puts exactly
those files in ``dest_dir``, which must not exist yet: they are written into a staging
folder beside it, checked, fsynced, and the folder renamed into place, so that a crash
leaves either nothing or everything.

- :class:`LocalSource`: a folder tree, ``root/entity/project/collection/alias``.
- :class:`HttpSource`: a JSON manifest over HTTP(S) that lists files by URL, each fetched
  through :class:`~edgewire.automation.fetch.GuardedFetcher` (allow-listed hosts, checked
  and pinned addresses, re-checked redirects, streamed under a cap, sha256-checked).
- :class:`WandbSource`: W&B artifacts through the ``wandb`` SDK (``edgewire[wandb]``),
  imported only when used. Manifest entries that reference URLs or ``file://`` paths
  are refused unless allow-listed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urljoin

from edgewire.automation.fetch import GuardedFetcher
from edgewire.automation.urls import UrlPolicy
from edgewire.errors import (
    ChecksumMismatch,
    DataError,
    FrameTooLarge,
    ModelNotFound,
    NotAllowed,
    ProtocolError,
    RemoteError,
    one_line,
    require,
)
from edgewire.fsutil import disk_errors, fsync_dir, sha256_file
from edgewire.jsonsafe import loads_strict

DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_FILES = 1000
MAX_MANIFEST_BYTES = 1024 * 1024
_CHUNK = 1 << 16
_REF = re.compile(
    r"(?P<path>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)"
    r":(?P<alias>[A-Za-z0-9][A-Za-z0-9_.-]*)"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, kw_only=True)
class RemoteFile:
    """One file of an artifact; ``name`` is a safe relative POSIX path."""

    name: str
    size: int | None = None
    sha256: str | None = None
    #: W&B's digest of a file it stores: base64 MD5.
    md5_b64: str | None = None
    #: Where the file lives when the source fetches it by URL (HttpSource) or references it.
    url: str | None = None


@dataclass(frozen=True, kw_only=True)
class Resolved:
    """What a ref named when it was resolved; act on ``version_id`` / ``digest``, not the ref."""

    ref: str
    version_id: str
    digest: str
    files: tuple[RemoteFile, ...] = field(default=())

    @property
    def total_size(self) -> int:
        return sum(f.size or 0 for f in self.files)


class Source(Protocol):
    async def resolve(self, ref: str) -> Resolved: ...

    async def download(self, resolved: Resolved, dest_dir: Path) -> list[Path]: ...


def parse_ref(ref: str) -> tuple[str, str]:
    """``entity/project/collection:alias`` as ``(path, alias)``; ProtocolError otherwise."""
    found = _REF.fullmatch(ref)
    if found is None:
        raise ProtocolError(f"artifact ref {ref[:120]!r} is not entity/project/collection:alias")
    return found["path"], found["alias"]


def safe_name(name: str) -> PurePosixPath:
    """A file name from a manifest as a relative path that stays inside its folder."""
    path = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or "\0" in name
        or path.is_absolute()
        or any(part in {"", ".", ".."} for part in name.split("/"))
        or not name.isprintable()
    ):
        raise NotAllowed(f"artifact file name {name[:120]!r} is not a plain relative path")
    return path


def _check_manifest(files: tuple[RemoteFile, ...], *, max_bytes: int, max_files: int) -> None:
    if len(files) > max_files:
        raise FrameTooLarge(f"the artifact has {len(files)} files; the limit is {max_files}")
    names = [str(safe_name(f.name)) for f in files]
    if len(set(names)) != len(names):
        raise ProtocolError("the artifact's manifest lists a file twice")
    prefixes = {str(p) for n in names for p in PurePosixPath(n).parents}
    if prefixes & set(names):
        raise ProtocolError("the artifact's manifest lists a file inside another file")
    total = sum(f.size or 0 for f in files)
    if total > max_bytes:
        raise FrameTooLarge(f"the artifact is {total} bytes; the limit is {max_bytes}")


def _new_staging(dest_dir: Path) -> Path:
    dest_dir = Path(dest_dir)
    if dest_dir.exists():
        raise DataError(f"download target {dest_dir.name!r} exists already")
    parent = dest_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{dest_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}"
    tmp.mkdir()
    return tmp


def _commit_staging(tmp: Path, dest_dir: Path) -> None:
    with disk_errors("store the download", default=None):
        for folder, _, names in os.walk(tmp):
            for name in names:
                fd = os.open(Path(folder) / name, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_dir(Path(folder))
        os.rename(tmp, dest_dir)
        fsync_dir(dest_dir.parent)


def _discard_staging(tmp: Path) -> None:
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staging(dest_dir: Path) -> Iterator[Path]:
    """A temp folder beside ``dest_dir`` that becomes ``dest_dir`` when the block succeeds
    (files fsynced, renamed, parent fsynced) and is removed when it fails."""
    tmp = _new_staging(dest_dir)
    try:
        yield tmp
        _commit_staging(tmp, Path(dest_dir))
    finally:
        _discard_staging(tmp)


def _verify_file(path: Path, file: RemoteFile) -> None:
    if path.is_symlink() or not path.is_file():
        raise DataError(f"artifact file {file.name!r} is not a regular file")
    if file.size is not None and path.stat().st_size != file.size:
        raise ChecksumMismatch(f"artifact file {file.name!r} is not {file.size} bytes")
    if file.sha256 is not None and sha256_file(path) != file.sha256:
        raise ChecksumMismatch(f"artifact file {file.name!r} does not match its sha256")
    if file.md5_b64 is not None:
        md5 = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                md5.update(chunk)
        if base64.b64encode(md5.digest()).decode() != file.md5_b64:
            raise ChecksumMismatch(f"artifact file {file.name!r} does not match its digest")


def _tree_digest(files: tuple[RemoteFile, ...]) -> str:
    lines = "".join(f"{f.name}\0{f.sha256}\n" for f in sorted(files, key=lambda f: f.name))
    return hashlib.sha256(lines.encode()).hexdigest()


# -- local folders -------------------------------------------------------------------


class LocalSource:
    """Artifacts in folders: ``root/entity/project/collection/alias/...``.

    The alias may be a symlink to a version folder inside ``root`` (how a local store
    moves an alias). Files must be regular files; the version id is the digest of the
    names and sha256s of every file.
    """

    def __init__(
        self, root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_files: int = DEFAULT_MAX_FILES
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_files = max_files

    def _folder(self, ref: str) -> Path:
        path, alias = parse_ref(ref)
        folder = Path(os.path.realpath(self.root / path / alias))
        if not folder.is_relative_to(Path(os.path.realpath(self.root))):
            raise NotAllowed(f"artifact {ref!r} points outside the local source's folder")
        if not folder.is_dir():
            raise DataError(f"artifact {ref!r} is not in the local source")
        return folder

    async def resolve(self, ref: str) -> Resolved:
        return await asyncio.to_thread(self._resolve, ref)

    def _resolve(self, ref: str) -> Resolved:
        folder = self._folder(ref)
        files: list[RemoteFile] = []
        for current, dirs, names in os.walk(folder):
            for name in sorted([*dirs, *names]):
                full = Path(current) / name
                if full.is_symlink():
                    raise NotAllowed(f"artifact {ref!r} holds a symlink, {name!r}")
            for name in sorted(names):
                full = Path(current) / name
                rel = full.relative_to(folder).as_posix()
                files.append(
                    RemoteFile(name=rel, size=full.stat().st_size, sha256=sha256_file(full))
                )
                if len(files) > self.max_files:
                    raise FrameTooLarge(f"artifact {ref!r} has over {self.max_files} files")
        found = tuple(files)
        _check_manifest(found, max_bytes=self.max_bytes, max_files=self.max_files)
        digest = _tree_digest(found)
        return Resolved(ref=ref, version_id=f"sha256:{digest}", digest=digest, files=found)

    async def download(self, resolved: Resolved, dest_dir: Path) -> list[Path]:
        return await asyncio.to_thread(self._download, resolved, dest_dir)

    def _download(self, resolved: Resolved, dest_dir: Path) -> list[Path]:
        _check_manifest(resolved.files, max_bytes=self.max_bytes, max_files=self.max_files)
        folder = self._folder(resolved.ref)
        with staging(dest_dir) as tmp:
            for file in resolved.files:
                target = tmp / safe_name(file.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                with disk_errors("copy the artifact", default=DataError):
                    shutil.copyfile(folder / safe_name(file.name), target, follow_symlinks=False)
                _verify_file(target, file)  # the alias may have moved since resolve
        return [dest_dir / f.name for f in resolved.files]


# -- HTTP(S) ---------------------------------------------------------------------------


class HttpSource:
    """Artifacts described by a JSON manifest over HTTP(S)::

        {"version": "v3", "digest": "...", "files": [
            {"name": "model.onnx", "url": "model.onnx", "size": 1234, "sha256": "..."}]}

    ``url`` is relative to the manifest or absolute (allow-listed). A ref is a manifest URL
    or, with ``manifest_url`` (a template such as
    ``"https://store.example/{path}/{alias}.json"``), ``entity/project/collection:alias``.
    Raw bytes are what is hashed (no content-encoding is decoded).
    """

    def __init__(
        self,
        fetcher: GuardedFetcher,
        *,
        manifest_url: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
    ) -> None:
        self.fetcher = fetcher
        self.manifest_url = manifest_url
        self.max_bytes = max_bytes
        self.max_files = max_files

    def _url(self, ref: str) -> str:
        if ref.lower().startswith(("http://", "https://")):
            return ref
        if self.manifest_url is None:
            raise ProtocolError(f"ref {ref[:120]!r} is not a URL and no manifest_url is set")
        path, alias = parse_ref(ref)
        return self.manifest_url.format(path=path, alias=alias)

    async def resolve(self, ref: str) -> Resolved:
        url = self._url(ref)
        body = bytearray()
        async with self.fetcher.client() as client:
            sha = await self.fetcher.fetch(client, url, body.extend, max_bytes=MAX_MANIFEST_BYTES)
        doc = loads_strict(bytes(body), what="artifact manifest")
        return self._manifest(doc, base=url, ref=ref, sha=sha)

    def _manifest(self, doc: Any, *, base: str, ref: str, sha: str) -> Resolved:
        if not isinstance(doc, dict) or set(doc) - {"version", "digest", "files"}:
            raise ProtocolError("artifact manifest must be {version, digest?, files}")
        version, files = doc.get("version"), doc.get("files")
        digest = doc.get("digest", sha)
        if not isinstance(version, str) or not version or not isinstance(digest, str):
            raise ProtocolError("artifact manifest needs a version string (and a digest string)")
        if not isinstance(files, list):
            raise ProtocolError("artifact manifest 'files' must be a list")
        found: list[RemoteFile] = []
        for entry in files[: self.max_files + 1]:
            if not isinstance(entry, dict) or set(entry) - {"name", "url", "size", "sha256"}:
                raise ProtocolError("artifact manifest entries are {name, url, size?, sha256?}")
            name, url = entry.get("name"), entry.get("url")
            size, sha256 = entry.get("size"), entry.get("sha256")
            if not isinstance(name, str) or not isinstance(url, str):
                raise ProtocolError("artifact manifest entries need a name and a url")
            if size is not None and (
                not isinstance(size, int) or isinstance(size, bool) or size < 0
            ):
                raise ProtocolError(f"artifact file {name[:80]!r} has a bad size")
            if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
                raise ProtocolError(f"artifact file {name[:80]!r} has a bad sha256")
            absolute = urljoin(base, url)
            self.fetcher.policy.check_url(absolute)  # refused now, not half-way through
            found.append(RemoteFile(name=name, size=size, sha256=sha256, url=absolute))
        resolved = tuple(found)
        _check_manifest(resolved, max_bytes=self.max_bytes, max_files=self.max_files)
        return Resolved(ref=ref, version_id=version, digest=digest, files=resolved)

    async def download(self, resolved: Resolved, dest_dir: Path) -> list[Path]:
        _check_manifest(resolved.files, max_bytes=self.max_bytes, max_files=self.max_files)
        budget = self.max_bytes
        tmp = await asyncio.to_thread(_new_staging, dest_dir)
        try:
            async with self.fetcher.client() as client:
                for file in resolved.files:
                    if file.url is None:
                        raise ProtocolError(f"artifact file {file.name!r} has no URL")
                    target = tmp / safe_name(file.name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    cap = budget if file.size is None else min(budget, file.size)
                    # Plain writes of one chunk each: the slow part, fsync, runs in a thread.
                    with (
                        disk_errors("store the download", default=DataError),
                        open(target, "xb") as out,  # noqa: ASYNC230
                    ):
                        sha = await self.fetcher.fetch(client, file.url, out.write, max_bytes=cap)
                    budget -= target.stat().st_size
                    if file.sha256 is not None and sha != file.sha256:
                        raise ChecksumMismatch(
                            f"artifact file {file.name!r} does not match its sha256"
                        )
                    _verify_file(target, RemoteFile(name=file.name, size=file.size))
            await asyncio.to_thread(_commit_staging, tmp, Path(dest_dir))
        finally:
            await asyncio.to_thread(_discard_staging, tmp)
        return [dest_dir / f.name for f in resolved.files]


# -- another edgewire agent's model store --------------------------------------------------


_SUFFIXES = {"onnx": "onnx", "tflite": "tflite"}


class AgentSource(HttpSource):
    """The model store of another edgewire agent (``kind = "agent"``): a ref's collection is
    the model's name there and its alias the alias; ``GET /api/models`` (with the agent's
    token) resolves it to a version and its sha256, and the file comes from
    ``GET /api/models/{name}/versions/{n}/file``, through the same guarded, capped,
    checked download as any HTTP source (the agent's host must be allow-listed)."""

    def __init__(
        self, fetcher: GuardedFetcher, *, base_url: str, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        super().__init__(fetcher, max_bytes=max_bytes, max_files=1)
        self.base_url = base_url.rstrip("/")
        fetcher.policy.check_url(self.base_url + "/api/models")  # refused now, not at a job

    async def resolve(self, ref: str) -> Resolved:
        path, alias = parse_ref(ref)
        name = path.rsplit("/", 1)[1]
        body = bytearray()
        async with self.fetcher.client() as client:
            await self.fetcher.fetch(
                client, self.base_url + "/api/models", body.extend, max_bytes=MAX_MANIFEST_BYTES
            )
        listing = loads_strict(bytes(body), what="the agent's model list")
        models = listing.get("models") if isinstance(listing, dict) else None
        if not isinstance(models, list):
            raise ProtocolError("the agent's model list has no 'models'")
        model = next((m for m in models if isinstance(m, dict) and m.get("name") == name), None)
        if model is None:
            raise ModelNotFound(f"model {name!r} is not in the agent's store")
        number = (model.get("aliases") or {}).get(alias)
        version = next(
            (v for v in model.get("versions") or [] if isinstance(v, dict)
             and v.get("version") == number), None,
        )  # fmt: skip
        if not isinstance(number, int) or version is None:
            raise ModelNotFound(f"model {name!r} has no alias {alias!r} there")
        sha, size, fmt = version.get("sha256"), version.get("size"), version.get("format")
        if not (isinstance(sha, str) and _SHA256.fullmatch(sha)) or fmt not in _SUFFIXES:
            raise ProtocolError(f"the agent lists {name!r} version {number} oddly")
        url = f"{self.base_url}/api/models/{name}/versions/{number}/file"
        file = RemoteFile(name=f"model.{_SUFFIXES[str(fmt)]}", url=url, sha256=sha,
                          size=size if isinstance(size, int) and size >= 0 else None)  # fmt: skip
        _check_manifest((file,), max_bytes=self.max_bytes, max_files=1)
        # The sha in the id: a store that deleted and re-made a model reuses numbers.
        return Resolved(ref=ref, version_id=f"{name}/v{number}@{sha[:12]}", digest=sha,
                        files=(file,))  # fmt: skip


# -- Weights & Biases -------------------------------------------------------------------


class WandbSource:
    """W&B artifacts through the SDK: ``Api().artifact("e/p/c:alias")`` and ``.download(root=)``.

    ``api`` is an object with that surface (a fake in tests); by default a ``wandb.Api``
    made on first use. The SDK checks each file's MD5 itself; the download is checked
    again against the manifest here, as the files land in the staging folder.
    """

    def __init__(
        self,
        *,
        policy: UrlPolicy,
        api: Any | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
    ) -> None:
        self.policy = policy
        self._api = api
        self._api_key = api_key
        self._base_url = base_url
        self.max_bytes = max_bytes
        self.max_files = max_files

    def api(self) -> Any:
        if self._api is None:
            require("wandb", extra="wandb")
            wandb = importlib.import_module("wandb")
            overrides = {"base_url": self._base_url} if self._base_url else {}
            self._api = wandb.Api(api_key=self._api_key, overrides=overrides)
        return self._api

    def _artifact(self, ref: str) -> Any:
        parse_ref(ref)
        api = self.api()
        try:
            return api.artifact(ref)
        except Exception as exc:  # the SDK raises its own zoo of errors
            raise RemoteError(f"W&B cannot resolve {ref!r}: {one_line(exc)}") from exc

    async def resolve(self, ref: str) -> Resolved:
        return await asyncio.to_thread(self._resolve, ref)

    def _resolve(self, ref: str) -> Resolved:
        path, _ = parse_ref(ref)
        artifact = self._artifact(ref)
        version, digest = artifact.version, artifact.digest
        if not isinstance(version, str) or not isinstance(digest, str):
            raise RemoteError(f"W&B gave no version or digest for {ref!r}")
        files = tuple(self._file(entry) for entry in artifact.manifest.entries.values())
        _check_manifest(files, max_bytes=self.max_bytes, max_files=self.max_files)
        return Resolved(ref=ref, version_id=f"{path}:{version}", digest=digest, files=files)

    def _file(self, entry: Any) -> RemoteFile:
        name = str(entry.path)
        safe_name(name)
        reference = getattr(entry, "ref", None)
        if reference:
            self.policy.check_reference(str(reference))
        size = getattr(entry, "size", None)
        return RemoteFile(
            name=name,
            size=int(size) if size is not None else None,
            md5_b64=None if reference else str(entry.digest),
            url=str(reference) if reference else None,
        )

    async def download(self, resolved: Resolved, dest_dir: Path) -> list[Path]:
        return await asyncio.to_thread(self._download, resolved, dest_dir)

    def _download(self, resolved: Resolved, dest_dir: Path) -> list[Path]:
        # Pinned to the version resolved, not the alias, which may have moved meanwhile.
        artifact = self._artifact(resolved.version_id)
        if artifact.digest != resolved.digest:
            raise ChecksumMismatch(f"W&B artifact {resolved.version_id!r} changed since resolved")
        with staging(dest_dir) as tmp:
            try:
                artifact.download(root=str(tmp))
            except Exception as exc:
                raise RemoteError(
                    f"W&B download of {resolved.version_id!r} failed: {one_line(exc)}"
                ) from exc
            expected = {f.name for f in resolved.files}
            on_disk = set()
            for current, _, names in os.walk(tmp):
                for name in names:
                    on_disk.add((Path(current) / name).relative_to(tmp).as_posix())
            if on_disk != expected:
                raise DataError(
                    f"W&B download of {resolved.version_id!r} does not match its manifest"
                )
            total = 0
            for file in resolved.files:
                target = tmp / safe_name(file.name)
                _verify_file(target, file)
                total += target.stat().st_size
            if total > self.max_bytes:
                raise FrameTooLarge(f"the artifact is {total} bytes; the limit is {self.max_bytes}")
        return [dest_dir / f.name for f in resolved.files]
