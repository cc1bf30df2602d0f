"""Sending a data set to an agent for remote training, by content (its ``/api/datasets``
and ``/api/blobs``): the manifest first, then only the files the agent lacks.

Small files go up in packs (one request for many), big ones alone, a few requests at
once on the client's keep-alive connections; an upload that stopped half-way goes on
where it was. Progress is reported through optional callbacks (the CLI draws bars
with them, the agent's dashboard API counts). No terminal output here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgewire.data.manifest import Manifest, pack, scan_folder
from edgewire.errors import AuthError, ConnectError, RemoteError

#: Files uploaded at once (keep-alive connections to the agent).
PARALLEL = 4
#: Files up to this size go up in packs of up to PACK_FILES files and PACK_BYTES bytes.
PACK_FILE_MAX = 1 << 20
PACK_FILES, PACK_BYTES = 1000, 4 << 20
#: What a big file is read and sent in.
CHUNK = 1 << 20

#: One file to send: (sha256, path, size).
Upload = tuple[str, Path, int]
#: An answer's JSON body, or the error it stands for ("what" names the step).
Check = Callable[[httpx.Response, str], dict[str, Any]]


def expect(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON body of a successful answer; AuthError or RemoteError (the agent's code
    and one line) otherwise."""
    if response.status_code in (401, 403):
        raise AuthError(f"{what}: {_message(response)}")
    if response.status_code >= 400:
        code, details = "internal", None
        with contextlib.suppress(ValueError, AttributeError):
            code = str(response.json().get("code", "internal"))
            found = response.json().get("details")
            details = found if isinstance(found, dict) else None
        raise RemoteError(
            f"{what}: {_message(response)} (HTTP {response.status_code})",
            remote_code=code,
            details=details,
        )
    try:
        body = response.json()
    except ValueError:
        raise RemoteError(
            f"{what}: the agent's answer is not JSON", remote_code="protocol"
        ) from None
    if not isinstance(body, dict):
        raise RemoteError(f"{what}: the agent's answer is not an object", remote_code="protocol")
    return body


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))[:300]
    except (ValueError, AttributeError):
        return response.text[:200]


async def call(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request; ConnectError (one line) when the agent gives no HTTP answer."""
    try:
        return await client.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise ConnectError(f"cannot reach {client.base_url}: {exc or type(exc).__name__}") from exc


def tree_size(folder: Path) -> int:
    """The bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


async def hash_folder(folder: Path, *, on_file: Callable[[int], None] | None = None) -> Manifest:
    """The manifest of ``folder``, hashed off the event loop; ``on_file(size)`` per file."""
    return await asyncio.to_thread(scan_folder, folder, on_file=on_file)


def plan(uploads: list[Upload]) -> list[list[Upload]]:
    """The requests that send ``uploads``: packs of small files (smallest first), and each
    file over PACK_FILE_MAX alone."""
    jobs: list[list[Upload]] = []
    pack_bytes = 0
    for item in sorted(uploads, key=lambda u: u[2]):
        if item[2] > PACK_FILE_MAX:
            jobs.append([item])
            continue
        if not jobs or len(jobs[-1]) >= PACK_FILES or pack_bytes + item[2] > PACK_BYTES:
            jobs.append([])
            pack_bytes = 0
        jobs[-1].append(item)
        pack_bytes += item[2]
    return jobs


async def upload(
    client: httpx.AsyncClient,
    uploads: list[Upload],
    *,
    check: Check = expect,
    on_sent: Callable[[int, int], None] | None = None,
) -> None:
    """Send ``uploads`` to the agent, PARALLEL requests at once; ``on_sent(files, bytes)``
    after each request the agent took."""
    if not uploads:
        return
    jobs = plan(uploads)
    queue: asyncio.Queue[list[Upload]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        while not queue.empty():
            job = queue.get_nowait()
            if len(job) == 1 and job[0][2] > PACK_FILE_MAX:
                sha, path, size = job[0]
                answer = await call(client, "PUT", f"/api/blobs/{sha}", content=file_chunks(path),
                                    headers={"Content-Length": str(size),
                                             "Content-Type": "application/octet-stream"})  # fmt: skip
            else:
                body = await asyncio.to_thread(pack_job, job)
                answer = await call(client, "POST", "/api/blobs", content=body,
                                    headers={"Content-Type": "application/octet-stream"})  # fmt: skip
            check(answer, f"uploading {job[0][1].name}" + (" and more" if len(job) > 1 else ""))
            if on_sent is not None:
                on_sent(len(job), sum(s for _, _, s in job))

    tasks = [asyncio.create_task(worker()) for _ in range(min(PARALLEL, len(jobs)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        # One failed (or the caller went away): the others stop too, not upload on.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def pack_job(job: list[Upload]) -> bytes:
    """The body of ``POST /api/blobs`` for the files of ``job``."""
    return pack([(sha, path.read_bytes()) for sha, path, _ in job])


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """The bytes of ``path`` in CHUNK pieces, read off the event loop."""
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk
    finally:
        f.close()


@dataclass(frozen=True, kw_only=True)
class Pushed:
    """What one :func:`push_dataset` did: the agent's data set id, its file count, and
    how many files (and bytes) went up (the rest the agent had)."""

    dataset: str
    files: int
    uploaded: int
    uploaded_bytes: int


async def push_dataset(
    client: httpx.AsyncClient,
    folder: Path,
    *,
    check: Check = expect,
    on_file: Callable[[int], None] | None = None,
    on_sent: Callable[[int, int], None] | None = None,
) -> Pushed:
    """Hash ``folder``, send its manifest and then the files the agent lacks."""
    manifest = await hash_folder(folder, on_file=on_file)
    answer = check(await call(client, "POST", "/api/datasets", json=manifest.to_dict()),
                   "sending the data set's manifest")  # fmt: skip
    missing = [str(s) for s in answer.get("missing", [])]
    sizes = manifest.blobs()
    unknown = [s for s in missing if s not in sizes]
    if unknown:
        raise RemoteError(f"the agent asked for a file not in the manifest ({unknown[0][:12]}…)",
                          remote_code="protocol")  # fmt: skip
    paths = {e.sha256: folder / e.path for e in manifest.files}
    uploads = [(sha, paths[sha], sizes[sha]) for sha in missing]
    await upload(client, uploads, check=check, on_sent=on_sent)
    return Pushed(
        dataset=str(answer["dataset"]),
        files=len(manifest.files),
        uploaded=len(uploads),
        uploaded_bytes=sum(s for _, _, s in uploads),
    )
