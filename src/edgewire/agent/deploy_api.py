"""The dashboard's work across agents: push a workspace's split to another agent for
training there, and deploy a run's model to several agents behind a gate.

    POST /api/agents/{name}/datasets   {"workspace": WS}
         -> {"agent", "dataset", "files", "uploaded"}
    POST /api/deploy   {"workspace": WS, "run": {"agent": null|NAME, "run_id": ID},
                        "model": NAME, "targets": [null|NAME, ...],
                        "min_accuracy": A|null, "no_worse_than": PTS|null}
         -> {"results": [{"agent", "ok", "version", "gate", "error"}]}

A null agent is this one. The run's ``model.onnx`` comes from this agent's remote runs
or is downloaded from the other agent (size-capped, its sha256 checked); the gate's
samples are the workspace's test split (``project/gate_data.py``). Each target then
takes the model as an upload with a gate would: this agent through
:func:`~edgewire.agent.management.add_and_serve`, another through its
``PUT /api/gate-data`` and ``PUT /api/models/{name}`` with its token. One target's
failure (a refused gate included) is its own result; the others go on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgewire.agent.context import PortContext
from edgewire.agent.gate import GATE_DIR, gate_from_query, gate_query
from edgewire.agent.http_common import Endpoint, guarded, not_found, read_body
from edgewire.agent.management import UPLOADS, add_and_serve
from edgewire.agent.peer_registry import Peer, Peers, unknown_agent
from edgewire.agent.remote_runs import RemoteRuns
from edgewire.agent.workspaces_api import workspace_locks, workspace_path
from edgewire.client import remote_train
from edgewire.errors import (
    AuthError,
    BusyError,
    ChecksumMismatch,
    ConfigError,
    ConnectError,
    DataError,
    EdgewireError,
    FrameTooLarge,
    GateRefused,
    RemoteError,
    one_line,
)
from edgewire.fsutil import atomic_write_bytes, disk_errors, sha256_file
from edgewire.jsonsafe import loads_strict
from edgewire.project.gate_data import pack_gate_data
from edgewire.project.stamp import stamp_model
from edgewire.serve.store import DEFAULT_ALIAS, check_name

log = logging.getLogger(__name__)

MODEL_FILE, REPORT_FILE = "model.onnx", "report.json"
MAX_REPORT_BYTES = 1 << 20
DATASET = "dataset"
#: Targets of one deploy, and data set pushes at once.
MAX_TARGETS = 16
MAX_PUSHES = 2
#: Seconds another agent may take to store, score and load a model it was sent.
UPLOAD_READ_S = 300.0
MAX_ERROR_BYTES = 64 * 1024
_BODY_CAP = 64 * 1024


def deploy_routes(ctx: PortContext, peers: Peers) -> list[tuple[str, Endpoint, list[str]]]:
    cfg = ctx.config
    pushing: set[int] = set()
    deploying = asyncio.Lock()

    async def push(request: Request) -> Response:
        name = str(request.path_params["name"])
        body = await _json(request, cfg.body_timeout)
        _only(body, {"workspace"})
        peer = peers.get(name)
        if peer is None:
            return unknown_agent(name)
        root = workspace_path(cfg, _string(body.get("workspace"), "workspace"))
        if not await asyncio.to_thread(root.is_dir):
            return _no_workspace(root.name)
        folder = root / DATASET
        if not await asyncio.to_thread((folder / "train").is_dir):
            raise ConfigError(f"workspace {root.name!r} has no split yet; split it first")
        if len(pushing) >= MAX_PUSHES:
            raise BusyError(f"{MAX_PUSHES} data sets are being sent already; try again later")
        token = id(request)
        pushing.add(token)
        try:
            # Held while it is hashed and sent: a split meanwhile would change the files.
            async with workspace_locks(ctx).hold(root.name):
                with peers.slot(), disk_errors("read the data set", default=DataError):
                    pushed = await remote_train.push_dataset(
                        peers.client(peer), folder, check=_checker(peer)
                    )
        finally:
            pushing.discard(token)
        log.info("data set of workspace %r sent to agent %r: %d of %d files uploaded",
                 root.name, name, pushed.uploaded, pushed.files)  # fmt: skip
        return JSONResponse({"agent": name, "dataset": pushed.dataset, "files": pushed.files,
                             "uploaded": pushed.uploaded})  # fmt: skip

    async def deploy(request: Request) -> Response:
        order = _DeployOrder.parse(await _json(request, cfg.body_timeout))
        root = workspace_path(cfg, order.workspace)
        if not await asyncio.to_thread(root.is_dir):
            return _no_workspace(root.name)
        if not await asyncio.to_thread((root / DATASET / "test").is_dir):
            raise ConfigError(f"workspace {root.name!r} has no test split for the gate; "
                              "split it first")  # fmt: skip
        if order.run_agent is not None and peers.get(order.run_agent) is None:
            return unknown_agent(order.run_agent)
        if deploying.locked():
            raise BusyError("a deploy is under way; try again once it is done")
        async with deploying:
            private = cfg.data_dir / UPLOADS / f"{os.getpid()}-{secrets.token_hex(8)}"
            with disk_errors("prepare the deploy"):
                await asyncio.to_thread(private.mkdir, parents=True)
            try:
                model = await _fetch_model(ctx, peers, order, private)
                async with workspace_locks(ctx).hold(root.name):
                    with disk_errors("read the test split", default=DataError):
                        npz, samples = await asyncio.to_thread(pack_gate_data, root, model)
                gate = _Gate(npz=npz, samples=samples, min_accuracy=order.min_accuracy,
                             no_worse_than=order.no_worse_than)  # fmt: skip
                results = [await _deploy_to(ctx, peers, t, order.model, model, gate)
                           for t in order.targets]  # fmt: skip
            finally:
                await asyncio.to_thread(shutil.rmtree, private, True)
                ctx.disk.changed()
        return JSONResponse({"results": results})

    return [
        ("/api/agents/{name}/datasets", guarded(cfg, push), ["POST"]),
        ("/api/deploy", guarded(cfg, deploy), ["POST"]),
    ]


# --- the request ------------------------------------------------------------------------


async def _json(request: Request, timeout: float) -> dict[str, Any]:
    raw = await read_body(request, cap=_BODY_CAP, timeout=timeout)
    body = loads_strict(raw, what="the body")
    if not isinstance(body, dict):
        raise ConfigError("the body must be a JSON object")
    return body


def _only(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown[:5]}; send {', '.join(sorted(known))}")


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a name (a string)")
    return value


def _number(value: object, what: str, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise ConfigError(f"{what} must be a number in 0..{high:g} or null, got {value!r}")
    return float(value)


def _no_workspace(name: str) -> Response:
    return not_found(f"no workspace {name!r} on this agent", "workspace_not_found")


class _DeployOrder:
    """A checked ``POST /api/deploy`` body."""

    def __init__(
        self,
        *,
        workspace: str,
        run_agent: str | None,
        run_id: str,
        model: str,
        targets: list[str | None],
        min_accuracy: float | None,
        no_worse_than: float | None,
    ) -> None:
        self.workspace, self.run_agent, self.run_id = workspace, run_agent, run_id
        self.model, self.targets = model, targets
        self.min_accuracy, self.no_worse_than = min_accuracy, no_worse_than

    @classmethod
    def parse(cls, body: dict[str, Any]) -> _DeployOrder:
        fields = {"workspace", "run", "model", "targets", "min_accuracy", "no_worse_than"}
        _only(body, fields)
        workspace = check_name(_string(body.get("workspace"), "workspace"), what="workspace name")
        run = body.get("run")
        if not isinstance(run, dict):
            raise ConfigError('run must be {"agent": null or a name, "run_id": ID}')
        _only(run, {"agent", "run_id"})
        agent = run.get("agent")
        if agent is not None:
            agent = check_name(_string(agent, "run.agent"), what="agent name")
        run_id = check_name(_string(run.get("run_id"), "run.run_id"), what="run id")
        model = check_name(_string(body.get("model"), "model"))
        targets = body.get("targets")
        if not isinstance(targets, list) or not 1 <= len(targets) <= MAX_TARGETS:
            raise ConfigError(f"targets must be a list of 1..{MAX_TARGETS} agents "
                              "(null for this one)")  # fmt: skip
        checked: list[str | None] = []
        for target in targets:
            if target is not None:
                target = check_name(_string(target, "a target"), what="agent name")
            if target in checked:
                raise ConfigError(f"target {target!r} is named twice")
            checked.append(target)
        return cls(
            workspace=workspace, run_agent=agent, run_id=run_id, model=model, targets=checked,
            min_accuracy=_number(body.get("min_accuracy"), "min_accuracy", 1.0),
            no_worse_than=_number(body.get("no_worse_than"), "no_worse_than", 100.0),
        )  # fmt: skip


# --- the model --------------------------------------------------------------------------


async def _fetch_model(ctx: PortContext, peers: Peers, order: _DeployOrder, folder: Path) -> Path:
    """The run's model, stamped with its classes for serving (``project/stamp.py``), in
    ``folder``; each file the run has is checked against its sha256."""
    raw, report = folder / "run.onnx", folder / REPORT_FILE
    if order.run_agent is None:
        runs = RemoteRuns.of(ctx)
        run = None if runs is None else runs.get(order.run_id)
        if run is None:
            raise ConfigError(f"this agent has no run {order.run_id!r}")
        if not run.done or MODEL_FILE not in run.files or REPORT_FILE not in run.files:
            raise ConfigError(f"run {order.run_id!r} is {run.state} and has no {MODEL_FILE} "
                              "yet; deploy it once it has finished")  # fmt: skip
        for name, dest in ((MODEL_FILE, raw), (REPORT_FILE, report)):
            with disk_errors("copy the run's files"):
                await asyncio.to_thread(shutil.copyfile, run.out / name, dest)
            if await asyncio.to_thread(sha256_file, dest) != run.files[name]["sha256"]:
                raise ChecksumMismatch(f"run {order.run_id!r}'s {name} changed on disk")
    else:
        peer = peers.get(order.run_agent)
        if peer is None:
            raise ConfigError(f"no agent named {order.run_agent!r}")
        files = f"/api/train/{order.run_id}/files"
        cap = ctx.config.max_upload_bytes
        await _download(ctx, peers, peer, f"{files}/{MODEL_FILE}", raw, cap=cap)
        await _download(ctx, peers, peer, f"{files}/{REPORT_FILE}", report, cap=MAX_REPORT_BYTES)
    labels = await asyncio.to_thread(_classes, report)
    model = folder / MODEL_FILE
    await asyncio.to_thread(stamp_model, raw, model, labels=labels)
    return model


def _classes(report: Path) -> list[str]:
    """The class names of a run's report, in the order of the model's outputs."""
    try:
        classes = loads_strict(report.read_bytes(), what="the run's report")["classes"]
    except (KeyError, TypeError):
        classes = None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ConfigError("the run's report names no classes; train it again")
    return [str(c) for c in classes]


async def _download(
    ctx: PortContext, peers: Peers, peer: Peer, path: str, dest: Path, *, cap: int
) -> None:
    client = peers.client(peer)
    what = f"agent {peer.name!r}: downloading the run's {dest.name}"
    digest = hashlib.sha256()
    with peers.slot():
        try:
            async with client.stream("GET", path) as response:
                if response.status_code >= 400:
                    failed = await _read_error(response)
                    _checker(peer)(failed, f"downloading the run's {path.rpartition('/')[2]}")
                expected = response.headers.get("x-edgewire-sha256", "").lower()
                if len(expected) != 64:
                    raise RemoteError(f"{what}: the answer has no X-Edgewire-Sha256",
                                      remote_code="protocol")  # fmt: skip
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise FrameTooLarge(f"{what}: {declared} bytes, over the limit of {cap}")
                await asyncio.to_thread(ctx.disk.check, int(declared or 0), "the model")
                size = 0
                with disk_errors("receive the model"), dest.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > cap:
                            raise FrameTooLarge(f"{what}: over the limit of {cap} bytes")
                        digest.update(chunk)
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise ConnectError(f"{what} failed: {one_line(exc)}") from None
    if digest.hexdigest() != expected:
        raise ChecksumMismatch(f"{what}: it arrived with sha256 {digest.hexdigest()[:12]}…, "
                               f"not the {expected[:12]}… it was sent with")  # fmt: skip


async def _read_error(response: httpx.Response) -> httpx.Response:
    """The error answer ``response`` streams, with at most MAX_ERROR_BYTES of its body."""
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_ERROR_BYTES:
            break
    return httpx.Response(
        response.status_code,
        headers={"content-type": response.headers.get("content-type", "")},
        content=body[:MAX_ERROR_BYTES],
    )


def _checker(peer: Peer) -> remote_train.Check:
    """An answer of ``peer`` as its JSON body, or a RemoteError (502) naming the agent: a
    refused token there is that agent's, not the dashboard user's, 401."""

    def check(response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            return remote_train.expect(response, f"agent {peer.name!r}: {what}")
        except AuthError as exc:
            raise RemoteError(f"{exc.message} (HTTP {response.status_code}; check its token)",
                              remote_code="auth") from None  # fmt: skip

    return check


# --- the targets ------------------------------------------------------------------------


class _Gate:
    def __init__(
        self, *, npz: bytes, samples: int, min_accuracy: float | None, no_worse_than: float | None
    ) -> None:
        self.npz, self.samples = npz, samples
        self.min_accuracy, self.no_worse_than = min_accuracy, no_worse_than
        self.sha256 = hashlib.sha256(npz).hexdigest()

    def params(self) -> dict[str, str]:
        """The upload's query parameters that name the gate and its thresholds."""
        return gate_query(
            self.sha256, min_accuracy=self.min_accuracy, no_worse_than=self.no_worse_than
        )

    def numbers(
        self, *, passed: bool | None, scores: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The thresholds sent, and the scores the target gave (accuracy of the new
        version and of the one it served, on the same samples)."""
        found = scores or {}
        return {"samples": found.get("samples", self.samples),
                "min_accuracy": self.min_accuracy, "no_worse_than": self.no_worse_than,
                "accuracy": found.get("accuracy"),
                "current_accuracy": found.get("current_accuracy"),
                "passed": passed}  # fmt: skip


async def _deploy_to(
    ctx: PortContext, peers: Peers, target: str | None, name: str, model: Path, gate: _Gate
) -> dict[str, Any]:
    """One target's result; its failure is an answer, not an exception."""
    result: dict[str, Any] = {"agent": target, "ok": False, "version": None, "gate": None,
                              "error": None}  # fmt: skip
    try:
        if target is None:
            version, scores = await _deploy_here(ctx, name, model, gate)
        else:
            peer = peers.get(target)
            if peer is None:
                raise ConfigError(f"no agent named {target!r}; add it with POST /api/agents")
            version, scores = await _deploy_there(peers, peer, name, model, gate)
    except EdgewireError as exc:
        refused = isinstance(exc, GateRefused) or (
            isinstance(exc, RemoteError) and exc.remote_code == GateRefused.code
        )
        result["error"] = " ".join(exc.message.split())
        result["gate"] = gate.numbers(passed=False, scores=exc.details) if refused else None
        log.info("deploy of %s to %s failed: %s", name, target or "this agent", result["error"])
        return result
    result.update(ok=True, version=version, gate=gate.numbers(passed=True, scores=scores))
    return result


async def _deploy_here(
    ctx: PortContext, name: str, model: Path, gate: _Gate
) -> tuple[int, dict[str, Any]]:
    cfg = ctx.config
    size = (await asyncio.to_thread(model.stat)).st_size
    await asyncio.to_thread(ctx.disk.check, 2 * size + len(gate.npz), "the deploy")
    folder = cfg.data_dir / GATE_DIR
    gate_file = folder / f"{gate.sha256}.npz"
    # The store looks for companions beside the file: a private folder of its own.
    private = cfg.data_dir / UPLOADS / f"{os.getpid()}-{secrets.token_hex(8)}"
    try:
        with disk_errors("prepare the deploy"):
            await asyncio.to_thread(folder.mkdir, exist_ok=True)
            await asyncio.to_thread(private.mkdir, parents=True)
            await asyncio.to_thread(shutil.copyfile, model, private / MODEL_FILE)
        await asyncio.to_thread(atomic_write_bytes, gate_file, gate.npz, what="keep the gate data")
        checked = gate_from_query(cfg.data_dir, gate.params())
        digest = await asyncio.to_thread(sha256_file, private / MODEL_FILE)
        scores: dict[str, Any] = {}
        version = await add_and_serve(ctx, name, private / MODEL_FILE, alias=DEFAULT_ALIAS,
                                      sha256=digest, file_name=MODEL_FILE, gate=checked,
                                      gate_report=scores)  # fmt: skip
    finally:
        await asyncio.to_thread(gate_file.unlink, True)
        await asyncio.to_thread(shutil.rmtree, private, True)
        ctx.disk.changed()
    return version.version, scores


async def _deploy_there(
    peers: Peers, peer: Peer, name: str, model: Path, gate: _Gate
) -> tuple[int, dict[str, Any]]:
    check = _checker(peer)
    client = peers.client(peer)
    size = (await asyncio.to_thread(model.stat)).st_size
    digest = await asyncio.to_thread(sha256_file, model)
    octets = {"Content-Type": "application/octet-stream"}
    with peers.slot():
        sent = await remote_train.call(client, "PUT", "/api/gate-data",
                                       params={"sha256": gate.sha256}, content=gate.npz,
                                       headers=octets)  # fmt: skip
        check(sent, "sending the gate data")
        params = {"sha256": digest, "alias": DEFAULT_ALIAS, "filename": MODEL_FILE,
                  **gate.params()}  # fmt: skip
        answer = await remote_train.call(
            client, "PUT", f"/api/models/{name}", params=params,
            content=remote_train.file_chunks(model),
            headers={**octets, "Content-Length": str(size)},
            timeout=httpx.Timeout(UPLOAD_READ_S, connect=5.0),
        )  # fmt: skip
        body = check(answer, "uploading the model")
    version = body.get("version")
    if not isinstance(version, int):
        raise RemoteError(f"agent {peer.name!r} answered the upload without a version",
                          remote_code="protocol")  # fmt: skip
    scores = body.get("gate")
    return version, scores if isinstance(scores, dict) else {}
