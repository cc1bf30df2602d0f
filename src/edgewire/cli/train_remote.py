"""``edgewire train run --on HOST:PORT`` and ``edgewire train attach``: train a workspace's
split on a remote agent (the training server) and bring the run folder home.

The data set goes up by content: the manifest first, then only the files the agent
lacks, a few at a time on keep-alive connections, so that an interrupted upload goes
on where it stopped. Progress comes back as server-sent events; a dropped stream is
picked up again after the last event seen. The result files are checked against the
agent's sha256 and land in ``WS/runs/RUN-ID/`` in one rename.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import secrets
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from edgewire.cli.agent_http import auth_headers, check
from edgewire.cli.common import console, err_console, run
from edgewire.cli.progress import TrainDisplay
from edgewire.client import remote_train
from edgewire.client.native import tls_from_env
from edgewire.data.manifest import Manifest
from edgewire.errors import (
    ConfigError,
    ConnectError,
    ProtocolError,
    RemoteError,
    TrainError,
)
from edgewire.fsutil import atomic_write_bytes, disk_errors, fsync_dir, sha256_file
from edgewire.ports import DEFAULT_HTTP_PORT, parse_address
from edgewire.project.workspace import DATASET, LATEST, RUNS
from edgewire.train.folder import RESULT_FILES, FolderOptions
from edgewire.wire import sse

#: Tries to pick a dropped event stream up again, with backoff doubling from 0.5 s.
RECONNECTS = 5
#: Largest event (and line) of the agent's event stream the client takes in.
MAX_EVENT_BYTES = 1 << 20
_CHUNK = remote_train.CHUNK


@dataclass
class _Where:
    on: str
    base: str
    headers: dict[str, str]
    run_id: str = ""
    started: bool = False  # the run was accepted: Ctrl-C leaves it going

    def client(self, *, read: float = 30.0) -> httpx.AsyncClient:
        context = tls_from_env()
        return httpx.AsyncClient(
            base_url=self.base,
            headers=self.headers,
            verify=context if context is not None else True,
            timeout=httpx.Timeout(30.0, read=read),
            limits=httpx.Limits(max_connections=remote_train.PARALLEL + 1),
        )


def _where(on: str, token: str | None) -> _Where:
    host, port = parse_address(on, default_port=DEFAULT_HTTP_PORT)
    scheme = "https" if tls_from_env() is not None else "http"
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return _Where(on=on, base=f"{scheme}://{shown}", headers=auth_headers(token))


def remote_run(
    on: str,
    workspace: Path,
    options: FolderOptions,
    *,
    init: Path | None,
    run_id: str,
    token: str | None,
    as_json: bool,
) -> dict[str, Any]:
    """Upload ``workspace/dataset`` to the agent at ``on`` (its HTTP port), train it there,
    follow it, and download the run into ``workspace/runs/run_id``; the run's summary."""
    where = _where(on, token)
    where.run_id = run_id
    target = workspace / RUNS / run_id
    if target.exists():
        raise ConfigError(f"run {run_id!r} exists already ({target}); pick another --run-id")
    return _interruptible(where, workspace, _remote(where, workspace, options, init, as_json))


def attach(
    on: str, workspace: Path, run_id: str, *, token: str | None, as_json: bool
) -> dict[str, Any]:
    """Follow run ``run_id`` on the agent at ``on`` and download it into the workspace."""
    where = _where(on, token)
    where.run_id, where.started = run_id, True
    if (workspace / RUNS / run_id).exists():
        raise ConfigError(f"run {run_id!r} is in {workspace / RUNS} already: nothing to attach")
    return _interruptible(where, workspace, _attach(where, workspace, as_json))


def _interruptible(where: _Where, workspace: Path, coro: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = run(coro)
    except KeyboardInterrupt:
        if where.started:
            err_console.print(
                f"stopped following; run {where.run_id!r} goes on on the agent. Reattach with: "
                f"edgewire train attach --on {where.on} {where.run_id} -w {workspace}",
                markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip
        else:
            err_console.print(
                "interrupted; run the same command again to go on with the upload",
                markup=False, highlight=False,
            )  # fmt: skip
        raise typer.Exit(130) from None
    return result


# --- the steps --------------------------------------------------------------------------


async def _remote(
    where: _Where, workspace: Path, options: FolderOptions, init: Path | None, as_json: bool
) -> dict[str, Any]:
    folder = workspace / DATASET
    if not folder.is_dir():
        raise ConfigError(f"workspace {str(workspace)!r} has no {DATASET}/ folder; "
                          "run `edgewire project split` first")  # fmt: skip
    manifest = await _hash(folder, as_json=as_json)
    async with where.client() as client:
        sent = await remote_train.call(client, "POST", "/api/datasets", json=manifest.to_dict())
        answer = check(sent, "sending the data set's manifest")
        missing = [str(s) for s in answer["missing"]]
        have = sum(1 for e in manifest.files if e.sha256 not in set(missing))
        if have and not as_json:
            console.print(f"{have} of {len(manifest.files)} files already on the agent",
                          highlight=False)  # fmt: skip
        paths = {e.sha256: folder / e.path for e in manifest.files}
        uploads = [(sha, paths[sha], manifest.blobs()[sha]) for sha in missing]
        init_sha = None
        if init is not None:
            init_sha = await asyncio.to_thread(sha256_file, init)
            uploads.append((init_sha, init, await asyncio.to_thread(os.path.getsize, init)))
        await _upload(client, uploads, as_json=as_json)
        body = {"dataset": answer["dataset"], "options": options.to_dict(), "init": init_sha,
                "run_id": where.run_id}  # fmt: skip
        check(await remote_train.call(client, "POST", "/api/train", json=body), "starting the run")
        where.started = True
        summary, files = await _follow(where, client, epochs=options.epochs, as_json=as_json)
        return await _finish(where, client, workspace, summary, files, as_json=as_json)


async def _attach(where: _Where, workspace: Path, as_json: bool) -> dict[str, Any]:
    async with where.client() as client:
        status = check(await remote_train.call(client, "GET", f"/api/train/{where.run_id}"),
                       f"looking up run {where.run_id!r}")  # fmt: skip
        epochs = int(status.get("options", {}).get("epochs", 1))
        summary, files = await _follow(where, client, epochs=epochs, as_json=as_json)
        return await _finish(where, client, workspace, summary, files, as_json=as_json)


def _bar(as_json: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), DownloadColumn(),
        TransferSpeedColumn(), TextColumn("{task.fields[files]}"), TimeRemainingColumn(),
        console=console, disable=as_json, transient=True,
    )  # fmt: skip


async def _hash(folder: Path, *, as_json: bool) -> Manifest:
    total = await asyncio.to_thread(remote_train.tree_size, folder)
    with _bar(as_json) as bar:
        task = bar.add_task("hashing", total=total, files="0 files")
        done = [0]

        def on_file(size: int) -> None:
            done[0] += 1
            bar.update(task, advance=size, files=f"{done[0]:,} files")

        return await remote_train.hash_folder(folder, on_file=on_file)


async def _upload(
    client: httpx.AsyncClient, uploads: list[tuple[str, Path, int]], *, as_json: bool
) -> None:
    """Small files go in packs (one request for many), big ones alone, a few at once."""
    if not uploads:
        return
    with _bar(as_json) as bar:
        task = bar.add_task("uploading", total=sum(s for _, _, s in uploads),
                            files=f"0/{len(uploads):,} files")  # fmt: skip
        sent = [0]

        def on_sent(files: int, size: int) -> None:
            sent[0] += files
            bar.update(task, advance=size, files=f"{sent[0]:,}/{len(uploads):,} files")

        await remote_train.upload(client, uploads, check=check, on_sent=on_sent)


# --- following the run -------------------------------------------------------------------


@dataclass
class _Events:
    """Feeds a TrainDisplay, made once the batch size is known (it sizes the bar)."""

    epochs: int
    as_json: bool
    display: TrainDisplay | None = None
    train_files: int = 1
    ready: dict[str, Any] = field(default_factory=dict)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "ready":
            self.ready = data
            self.train_files = int(data.get("train_files", 1))
        if kind == "batch_size" and self.display is None:
            per_epoch = math.ceil(self.train_files / max(int(data["batch_size"]), 1))
            self.display = TrainDisplay(console=console, total=self.epochs * per_epoch,
                                        epochs=self.epochs, as_json=self.as_json).__enter__()  # fmt: skip
            if not self.as_json:
                console.print(f"batch size {data['batch_size']}: {data['reason']}",
                              highlight=False)  # fmt: skip
        if self.display is not None:
            self.display(kind, data)
        elif self.as_json:
            sys.stdout.write(json.dumps({"event": kind, **data}) + "\n")
            sys.stdout.flush()

    def close(self) -> None:
        if self.display is not None:
            self.display.__exit__(None, None, None)


async def _follow(
    where: _Where, client: httpx.AsyncClient, *, epochs: int, as_json: bool
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Show the run's events until its summary; reconnect after the last one seen."""
    events = _Events(epochs=epochs, as_json=as_json)
    after, tries = 0, 0
    path = f"/api/train/{where.run_id}/events"
    try:
        while True:
            try:
                async with where.client(read=30.0) as stream_client:
                    async for seq, kind, data in _sse(stream_client, path, after):
                        tries = 0
                        if seq is not None:
                            after = seq
                        if kind == "summary":
                            return data["summary"], data["files"]
                        if kind == "error":
                            raise TrainError(f"run {where.run_id!r} failed on the agent: "
                                             f"{data.get('error')}")  # fmt: skip
                        if kind == "agent_stopping":
                            raise ConnectError(f"the agent stopped, and run {where.run_id!r} "
                                               "with it; start it again")  # fmt: skip
                        if kind != "gap":
                            events(kind, data)
            except httpx.TransportError as exc:
                problem: Exception = exc
            else:
                problem = ConnectError("the event stream ended before the run did")
            tries += 1
            if tries > RECONNECTS:
                raise ConnectError(f"lost the agent's event stream ({problem}); reattach with: "
                                   f"edgewire train attach --on {where.on} {where.run_id}") from None  # fmt: skip
            await asyncio.sleep(0.5 * 2 ** (tries - 1))
    finally:
        events.close()


async def _sse(
    client: httpx.AsyncClient, path: str, after: int
) -> AsyncIterator[tuple[int | None, str, dict[str, Any]]]:
    """(id, event, data) of a server-sent event stream."""
    async with client.stream("GET", path, params={"after": after}) as response:
        if response.status_code >= 400:
            await response.aread()
            check(response, "following the run")
        decoder = sse.Decoder(max_bytes=MAX_EVENT_BYTES)
        async for chunk in response.aiter_bytes():
            for event in decoder.feed(chunk):
                yield event.seq, event.kind, event.data


async def _finish(
    where: _Where,
    client: httpx.AsyncClient,
    workspace: Path,
    summary: dict[str, Any],
    files: dict[str, dict[str, Any]],
    *,
    as_json: bool,
) -> dict[str, Any]:
    """Download the run's files into ``WS/runs/RUN-ID`` (one rename), point LATEST at it,
    print the report; the summary with the files' local paths."""
    from edgewire.cli.train_report import print_files, print_report

    runs = workspace / RUNS
    target = runs / where.run_id
    named = {str(n) for n in (*files, *summary.get("files", {}).values())}
    odd = sorted(named - set(RESULT_FILES))
    if odd:  # the names become local file names
        shown = ", ".join(repr(n[:80]) for n in odd[:3])
        raise ProtocolError(f"the agent named result file(s) {shown}, not among "
                            f"{', '.join(RESULT_FILES)}; nothing was downloaded")  # fmt: skip
    partial = runs / f".{where.run_id}.partial-{secrets.token_hex(4)}"
    partial.mkdir(parents=True)
    try:
        for name, meta in files.items():
            await _download(client, f"/api/train/{where.run_id}/files/{name}", partial / name,
                            sha256=str(meta["sha256"]))  # fmt: skip
        if target.exists():  # another attach got there first
            raise ConfigError(f"run {where.run_id!r} is in {runs} already; nothing to do")
        with disk_errors("store the run", default=ConfigError):
            os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    fsync_dir(runs)
    atomic_write_bytes(runs / LATEST, f"{where.run_id}\n".encode())
    summary = {**summary, "files": {k: str(target / n) for k, n in summary["files"].items()}}
    if as_json:
        done = {"event": "done", "run_id": where.run_id, "run_dir": str(target), **summary}
        sys.stdout.write(json.dumps(done) + "\n")
        return summary
    print_report(summary["report"], console)
    print_files(summary["files"], console)
    console.print(f"run {where.run_id} (WS/{RUNS}/{LATEST} names it), trained on {where.on}",
                  markup=False, highlight=False)  # fmt: skip
    return summary


async def _download(client: httpx.AsyncClient, path: str, dest: Path, *, sha256: str) -> None:
    digest = hashlib.sha256()
    try:
        async with client.stream("GET", path) as response:
            if response.status_code >= 400:
                await response.aread()
                check(response, f"downloading {dest.name}")
            out = await asyncio.to_thread(dest.open, "wb")
            try:
                async for chunk in response.aiter_bytes(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            finally:
                out.close()
    except httpx.HTTPError as exc:
        raise ConnectError(f"downloading {dest.name} failed: {exc}") from exc
    if digest.hexdigest() != sha256:
        await asyncio.to_thread(dest.unlink, True)
        raise RemoteError(f"{dest.name} arrived with sha256 {digest.hexdigest()}, not the "
                          f"agent's {sha256}; run attach again", remote_code="checksum")  # fmt: skip
